from vcraft.cli import main

main()
