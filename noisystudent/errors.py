"""Errors a user can cause and fix.

The CLI prints ``str(error)`` as one sentence and exits with status 2; it never
shows a traceback for these. Library code raises them with a message that names
the offending file or value.
"""

import errno


class UserError(Exception):
    """Base class: something about the input or the settings is wrong.

    Every error a user can cause and fix derives from it, so one ``except
    UserError`` catches them all. The command line prints ``str(error)`` and
    exits with status 2, without a traceback.

    Args:
        message (str): One sentence that names the offending file or value
            and, where possible, what to do about it.

    Example:
        >>> import noisystudent as ns
        >>> issubclass(ns.ConfigError, ns.UserError), issubclass(ns.DataError, ns.UserError)
        (True, True)
        >>> try:
        ...     ns.make_config(preset="fast")
        ... except ns.UserError as error:
        ...     print(error)
        Unknown preset 'fast'; choose one of cnmc-study, noisy-student, demo, smoke.
    """


class DataError(UserError):
    """A data set, image, CSV or label cannot be used.

    Raised, for example, for a missing data path, an image that does not
    decode, a CSV without a ``path`` column or a label a run does not know.

    Args:
        message (str): One sentence naming the file, line or label at fault.

    Example:
        >>> import noisystudent as ns
        >>> try:
        ...     ns.resolve_inputs([])
        ... except ns.DataError as error:
        ...     print(error)
        No input was given: name image files, folders or CSV manifests.
    """


class ConfigError(UserError):
    """A setting is invalid, or does not match the run folder it is used with.

    Raised before anything is written: an unknown preset or architecture, a
    value out of range, a device that does not exist, an unknown voting rule.

    Args:
        message (str): One sentence naming the setting, its allowed values and
            the value given.

    Example:
        >>> import noisystudent as ns
        >>> try:
        ...     ns.make_config(folds=1)
        ... except ns.ConfigError as error:
        ...     print(error)
        folds must be a whole number >= 2; got 1.
    """


class CheckpointError(UserError):
    """A checkpoint or model file is missing, truncated, corrupt or incompatible."""


class RunFolderError(UserError):
    """The run folder is in a state that forbids the requested action."""


class DiskFullError(UserError):
    """The disk (or the user's quota) is full; the file being written was left as it was."""


class OutputError(UserError):
    """An output path is not a regular file, is an input, lies inside DATA or RUN, or cannot be written."""


def os_error_sentence(error: OSError) -> str | None:
    """One sentence for an OSError a user can fix (full disk, permissions, a folder where a file goes); else None."""
    name = error.filename
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" while writing {name}" if name else ""
        return f"No space left on device{where}; free some space and continue with --resume."
    if error.errno in (errno.EMFILE, errno.ENFILE):
        where = f" (opening {name})" if name else ""
        return (f"Too many open files{where}: the limit is {_limit('RLIMIT_NOFILE')}; raise it (ulimit -n) "
                "or lower --workers, then continue with --resume.")
    if error.errno in (errno.ENOMEM, errno.EAGAIN) and name is None:  # fork or mmap refused
        return resource_error_sentence(MemoryError(error.strerror or str(error)))
    if name is None:
        return None
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"Permission denied for {name} ({error.strerror}); fix its permissions or choose another path."
    if error.errno == errno.EISDIR:
        return f"{name} is a folder where a file is needed; choose a file path."
    if error.errno == errno.ENOTDIR:
        return f"{name} lies below something that is not a folder; choose another path."
    return None


def resource_error_sentence(error: BaseException) -> str | None:
    """One sentence for memory or a thread the system refused (MemoryError, torch's allocator, thread start); else None.

    Ordinary RuntimeErrors (bugs) give None and keep their traceback.
    """
    text = str(error)
    if isinstance(error, RuntimeError) and "can't start new thread" in text:
        return (f"The system refused to start another thread (address-space limit {_limit('RLIMIT_AS')}, "
                f"process limit {_limit('RLIMIT_NPROC')}); raise the limits (ulimit -v, ulimit -u) or lower --workers, "
                "then continue with --resume.")
    if isinstance(error, MemoryError) or (isinstance(error, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)):
        detail = text.split("DefaultCPUAllocator: ")[-1].split(". ")[0].strip()[:160] or "MemoryError"
        return (f"Out of memory ({detail}; address-space limit {_limit('RLIMIT_AS')}); lower --batch-size, "
                "--eval-batch-size or --workers, or raise the limit (ulimit -v), then continue with --resume.")
    return None


def _limit(name: str) -> str:
    """The soft resource limit ``name`` in words ("unlimited", "4096", "3.8 GiB"), or "unknown"."""
    try:
        import resource  # POSIX only
    except ImportError:
        return "unknown"
    soft = resource.getrlimit(getattr(resource, name))[0]
    if soft == resource.RLIM_INFINITY:
        return "unlimited"
    return f"{soft / 2**30:.1f} GiB" if name == "RLIMIT_AS" else str(soft)
