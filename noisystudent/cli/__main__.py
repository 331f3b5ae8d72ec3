"""``python -m noisystudent.cli`` runs the command line."""

from noisystudent.cli.main import main

main()
