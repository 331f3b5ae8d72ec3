"""``python -m noisystudent.cli`` runs the command line."""

from noisystudent.cli.commands import main

main()
