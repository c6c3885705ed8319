"""Exceptions raised by the library.

Every error the user can cause derives from :class:`WorkbenchError`; the
subclasses also inherit the matching built-in (``ValueError``, ``OSError``,
``LookupError``) so callers that know nothing of this package still catch
them.  The CLI maps them to clean exits with the message and no traceback:
exit code 2 for usage errors (bad names, bad options), 1 for everything else.
"""


class WorkbenchError(Exception):
    """Root of every error this package raises on purpose."""

    exit_code = 1


class UsageError(WorkbenchError, ValueError):
    """A name or option the user gave is not one of the allowed values."""

    exit_code = 2


class DataError(WorkbenchError, ValueError):
    """The image folder cannot be used as given (missing, too few classes, ...)."""


class StoreError(WorkbenchError, OSError):
    """A feature store or run record is missing, locked, stale or in the way."""


class WeightsError(WorkbenchError, OSError):
    """Pretrained weights cannot be found, downloaded or loaded."""


class DeviceError(WorkbenchError, RuntimeError):
    """The requested device or runtime is not available on this machine."""
