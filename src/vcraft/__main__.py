from vcraft.app.cli import main

main()
