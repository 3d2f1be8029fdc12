"""Front ends over the Python API: the command line, the web app, Ray, prompt files, writing videos."""
