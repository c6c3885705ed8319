"""Exceptions raised by the library, and how they name the parameter at fault.

Every error the user can cause derives from :class:`WorkbenchError`; the
subclasses also inherit the matching built-in (``ValueError``, ``OSError``,
``LookupError``) so callers that know nothing of this package still catch
them.  The CLI maps them to clean exits with the message and no traceback:
exit code 2 for usage errors (bad names, bad options), 1 for everything else.

A message names parameters through :func:`opt`: ``opt("overwrite")`` or
``opt("weights", "PATH")``.  ``str(error)`` (what a Python caller sees)
writes them as the keyword argument followed by the command-line flag,
``overwrite=True (--overwrite)``; the CLI renders the same message with its
own flags only (:meth:`WorkbenchError.render`), e.g. ``--overwrite``.
``error.param`` is the parameter the error is about, when there is one.
A message that tells the user to run a command names the program through
:func:`program` (``python cli.py`` or ``workbench``), never a fixed spelling.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

_MARK = re.compile("\u2039([A-Za-z_][A-Za-z0-9_]*)(?:=([^\u203a]*))?\u203a")


def opt(name: str, value: str | None = None) -> str:
    """A parameter reference inside an error message (see the module docstring)."""
    return f"\u2039{name}={value}\u203a" if value is not None else f"\u2039{name}\u203a"


def flag_of(name: str) -> str:
    """The default command-line flag of a Python parameter: ``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def program() -> str:
    """How to start the command line, for messages (``run `{program()} fit```).

    ``workbench`` when this process is the console script; ``python cli.py`` when it
    is the repository's script; ``python -m pipeline.cli`` for that.  Elsewhere (a
    notebook, the tests) the repository's script when this is a checkout of it,
    else the console script an installed package has.
    """
    started = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    if started == "cli.py":
        return "python cli.py"
    if started == "__main__.py" and Path(sys.argv[0]).parent.name == "cli":
        return "python -m pipeline.cli"
    if started.removesuffix(".exe") == "workbench":
        return "workbench"
    checkout = Path(__file__).resolve().parent.parent / "cli.py"
    return "python cli.py" if checkout.is_file() else "workbench"


class WorkbenchError(Exception):
    """Root of every error this package raises on purpose."""

    exit_code = 1

    def __init__(self, message: str = "", *, param: str | None = None):
        super().__init__(message)
        self.template = message
        self.param = param

    def render(self, flags: dict | None = None) -> str:
        """The message with each parameter written as its command-line flag.

        ``flags`` maps a Python parameter name to the flag a command gives it
        (e.g. ``{"layers": "--layer"}``); others get :func:`flag_of`.
        """
        flags = flags or {}

        def cli(m):
            flag = flags.get(m.group(1)) or flag_of(m.group(1))
            return flag if m.group(2) in (None, "True") else f"{flag} {m.group(2)}"

        return _MARK.sub(cli, self.template)

    def __str__(self):
        def python(m):
            name, value = m.group(1), m.group(2)
            if value is None:
                return f"{name} ({flag_of(name)})"
            shown = f"{flag_of(name)}" if value == "True" else f"{flag_of(name)} {value}"
            return f"{name}={value} ({shown})"

        return _MARK.sub(python, self.template)


class UsageError(WorkbenchError, ValueError):
    """A name or option the user gave is not one of the allowed values."""

    exit_code = 2


class DataError(WorkbenchError, ValueError):
    """The image folder cannot be used as given (missing, too few classes, ...)."""


class StoreError(WorkbenchError, OSError):
    """A feature store or run record is missing, locked, stale or in the way."""


class CorruptStoreError(StoreError):
    """A file where a feature store should be cannot be read as a complete one
    (truncated, damaged, a dataset missing, or not written by this tool)."""


class WeightsError(WorkbenchError, OSError):
    """Pretrained weights cannot be found, downloaded or loaded."""


class DeviceError(WorkbenchError, RuntimeError):
    """The requested device or runtime is not available on this machine."""


def unsafe_load_reason(exc: BaseException) -> str:
    """Why ``torch.load(..., weights_only=True)`` refused a file, in our words.

    A file that holds Python objects beyond tensors and plain data is refused
    because loading it could run code; torch's own message then advises loading
    it with ``weights_only=False``, which is exactly what must not be done with a
    file of unknown origin, so that advice is never passed on.  Other failures
    (a damaged or truncated file) keep the first line of their message.
    """
    text = str(exc)
    if type(exc).__name__ == "UnpicklingError" or "weights_only" in text:
        return ("it holds Python objects beyond tensors and plain data, which are never "
                "unpickled: that could run code")
    first = text.splitlines()[0][:200] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
