"""``python -m noisystudent`` (and ``torchrun -m noisystudent``) runs the command line."""

from noisystudent.cli.commands import main

main()
