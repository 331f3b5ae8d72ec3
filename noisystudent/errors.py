"""Errors a user can cause and fix.

The CLI prints ``str(error)`` as one sentence and exits with status 2; it never
shows a traceback for these. Library code raises them with a message that names
the offending file or value.
"""


class UserError(Exception):
    """Base class: something about the input or the settings is wrong."""


class DataError(UserError):
    """A data set, image, CSV or label cannot be used."""


class ConfigError(UserError):
    """A setting is invalid, or does not match the run folder it is used with."""


class CheckpointError(UserError):
    """A checkpoint or model file is missing, truncated, corrupt or incompatible."""


class RunFolderError(UserError):
    """The run folder is in a state that forbids the requested action."""


class DiskFullError(UserError):
    """The disk (or the user's quota) is full; the file being written was left as it was."""
