"""How a command fails: library errors as one line in the command's own flags, the
exit codes, and what survived Ctrl-C or SIGTERM.

Library errors (:class:`pipeline.errors.WorkbenchError`) become a one-line
message, with each parameter the library names written as this command's flag,
and exit code 2 (usage) or 1 (everything else); no traceback.  A write the file
system refuses names the option that chose the folder.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading

import click

from ..errors import WorkbenchError


def command_flags(ctx) -> dict:
    """Python parameter name -> this command's flag (``layers`` -> ``--layer``)."""
    flags = {}
    for param in ctx.command.params if ctx is not None else ():
        longs = [o for o in getattr(param, "opts", []) if o.startswith("--")]
        if longs:
            flags[param.name] = longs[0]
    return flags


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so the same clean-up as Ctrl-C runs."""


def raise_terminated(signum, frame):
    raise Terminated()


def interrupted_message(ctx) -> str:
    """What survived an interruption of this command, and what to run next."""
    name = ctx.info_name if ctx is not None else ""
    params = ctx.params if ctx is not None else {}
    if name in ("extract", "demo"):
        return ("completed batches are kept in the store's journal; run the same command "
                "again to resume from them.")
    if name == "explore":
        return ("the grid's finished cells are saved in its record under RUNS/explore/ and the "
                "trunk caches on disk; run the same command again to resume at the next cell.")
    if name == "ladder":
        return ("rungs that finished are saved as run records; a re-run trains every rung "
                "again and the report counts each seed once (the latest).")
    if name == "finetune":
        if params.get("checkpoint_dir"):
            return ("runs that finished are saved and the unfinished one keeps its last epoch "
                    "checkpoint; run the same command again with --resume to continue.")
        return ("runs that finished are saved; the unfinished one kept no checkpoint (pass "
                "--checkpoint-dir DIR to make runs resumable) and must start again.")
    return ("runs and files that finished are saved; the unfinished one wrote nothing. "
            "Run the same command again.")


#: Options that name where a command writes, most specific first.
OUTPUT_OPTIONS = ("out_csv", "checkpoint_dir", "cache_dir", "runs_dir", "out_dir", "out")


def disk_error(exc: OSError, ctx):
    """The message for a write refused by the file system (full, read-only, not
    permitted), naming the option that chose the folder; None for other errors."""
    from pathlib import Path

    from ..files import output_error

    target = Path(os.fsdecode(exc.filename)).absolute() if exc.filename else Path.cwd()
    param = None
    for name in OUTPUT_OPTIONS:
        value = (ctx.params if ctx is not None else {}).get(name)
        if value and (target == Path(value).absolute() or
                      Path(value).absolute() in target.parents):
            param = name
            break
    return output_error(exc, target.parent if exc.filename else target, param)


def handle_errors(fn):
    """Turn library errors into a clean message (in this command's flags) and its exit code;
    Ctrl-C (exit 130) and SIGTERM (exit 143) say what was kept and how to go on."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        ctx = click.get_current_context(True)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, raise_terminated)
        try:
            return fn(*args, **kwargs)
        except WorkbenchError as exc:
            click.echo(f"Error: {exc.render(command_flags(ctx))}", err=True)
            sys.exit(exc.exit_code)
        except OSError as exc:  # a folder refused a write the command did not foresee
            err = disk_error(exc, ctx)
            if err is None:
                raise
            click.echo(f"Error: {err.render(command_flags(ctx))}", err=True)
            sys.exit(err.exit_code)
        except KeyboardInterrupt:
            click.echo(f"Interrupted: {interrupted_message(ctx)}", err=True)
            sys.exit(130)
        except Terminated:
            click.echo(f"Terminated (SIGTERM): {interrupted_message(ctx)}", err=True)
            sys.exit(143)

    return wrapper
