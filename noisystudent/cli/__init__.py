"""The ``noisystudent`` command line: a thin Typer layer over the library."""

from noisystudent.cli.main import app, main

__all__ = ["app", "main"]
