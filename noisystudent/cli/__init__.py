"""The ``noisystudent`` command line: a thin Typer layer over the library."""

from noisystudent.cli.commands import app, main

__all__ = ["app", "main"]
