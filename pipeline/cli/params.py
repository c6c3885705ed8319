"""Options defined once: click options made from the config dataclasses' fields, the few
options no config holds, and the command class that names the program in ``--help``.

:func:`config_options` turns every field of a config (:mod:`pipeline.configs`)
into a click option: the field's default, its ``help``, its ``choices`` (a
``click.Choice``), a ``min``/``max`` range, ``multiple``, and its ``flag``
(default ``--field-name``).  A command's Python parameters are then the config's
field names, so ``FitConfig(**fields)`` is the whole translation, and a library
error about ``layers`` is shown as ``--layer`` (:func:`.errors.command_flags`).
"""

from __future__ import annotations

import functools
import math
import types
import typing
from dataclasses import MISSING, fields

import click

from ..configs import DEFAULT_RUNS_DIR
from ..errors import WorkbenchError, flag_of, program
from .errors import command_flags


class ProgramHelp:
    """``--help`` that names the program as it was started: the docstrings' examples say
    ``python cli.py``, shown as ``workbench`` under the console script
    (:func:`pipeline.errors.program`)."""

    def get_help(self, ctx):
        return super().get_help(ctx).replace("python cli.py", program())


class Command(ProgramHelp, click.Command):
    pass


class Group(ProgramHelp, click.Group):
    command_class = Command


#: ``@command()``: a click command whose help names the program (:class:`ProgramHelp`).
command = functools.partial(click.command, cls=Command)


def _scalar(hint, default):
    """The Python type click parses a field into: the non-None member of a union; for a
    tuple (a repeatable option), the type of its default's items (str if empty)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if hint is tuple or typing.get_origin(hint) is tuple:
        return type(default[0]) if default else str
    return hint if hint in (int, float, str, bool) else str


def _heads() -> list:
    from ..heads import list_heads

    return list_heads()


#: Choice lists a config names by key (``choices_from``) because they live in a registry
#: above the configs' layer: the heads registered when the CLI is built.
CHOICES_FROM = {"heads": _heads}


class FiniteFloat(click.FloatRange):
    """A float option that refuses ``nan`` and ``inf`` (which every range check lets
    through, and which train a network at chance without an error), then checks its
    range when it has one."""

    name = "float"

    def convert(self, value, param, ctx):
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number; give one such as 0.001", param, ctx)
        return super().convert(number, param, ctx)

    def _describe_range(self) -> str:
        return "" if self.min is None and self.max is None else super()._describe_range()


def click_type(meta: dict, base: type):
    """The click parameter type of a field with metadata ``meta`` parsed as ``base``
    (every float: :class:`FiniteFloat`)."""
    if meta.get("choices_from"):
        return click.Choice(list(CHOICES_FROM[meta["choices_from"]]()))
    if meta.get("choices"):
        return click.Choice(list(meta["choices"]))
    if meta.get("path"):
        return click.Path()
    bounds = {"min": meta.get("min"), "max": meta.get("max")}
    if base is float:
        return FiniteFloat(**bounds, min_open=meta.get("min_open", False))
    if "min" in meta or "max" in meta:
        return click.IntRange(**bounds)
    return base


def field_option(f, hint, **custom):
    """The click option of dataclass field ``f`` (type hint ``hint``); ``custom`` click
    keywords (a callback, a longer help) are added on top."""
    meta = f.metadata
    flags = meta.get("flag") or flag_of(f.name)
    flags = (flags,) if isinstance(flags, str) else tuple(flags)
    default = meta.get("cli_default", f.default)
    base = _scalar(hint, default)
    kw = {"default": default, "help": meta.get("help") or None,
          "show_default": not (default is None or default is False or default == ())}
    if base is bool:   # a flag; an on/off pair ("--a/--no-a") is one to click already
        kw["is_flag"] = "/" not in flags[0] or None
    else:
        kw["type"] = click_type(meta, base)
    if meta.get("multiple"):
        kw["multiple"] = True
    if meta.get("metavar"):
        kw["metavar"] = meta["metavar"]
    return click.option(*flags, f.name, **{**kw, **custom})


def config_options(cls, only=None, **custom):
    """Decorator: one click option per field of config dataclass ``cls`` that a command
    offers (metadata ``cli`` not False), in the fields' order; ``only``: these fields.
    ``custom[name]``: click keywords added to that field's option."""
    hints = typing.get_type_hints(cls)
    chosen = [f for f in fields(cls) if f.metadata.get("cli", True) and f.default is not MISSING
              and (only is None or f.name in only)]

    def decorate(fn):
        for f in reversed(chosen):   # click lists options in the order they are applied, reversed
            fn = field_option(f, hints[f.name], **custom.get(f.name, {}))(fn)
        return fn

    return decorate


# ------------------------------------------------------------ options no config holds


def check_backbone(ctx, param, value):
    """``--backbone``: a registered name or ``timm/<model>``, checked by the registry."""
    if value is None:
        return value
    from ..backbones import get_backbone

    try:
        get_backbone(value)
    except WorkbenchError as exc:
        raise click.BadParameter(exc.render(command_flags(ctx))) from None
    return value


def backbone_choice() -> dict:
    """``--backbone`` of extract and hierarchy: checked on parsing, the registered names in
    its help."""
    from ..backbones import list_backbones
    from ..configs import BACKBONE_HELP

    names = ", ".join(list_backbones())
    return {"callback": check_backbone,
            "help": BACKBONE_HELP.replace("(see `backbones`)", f"({names})")}


def runs_option(fn):
    return click.option("--runs", "runs_dir", type=click.Path(), default=str(DEFAULT_RUNS_DIR),
                        show_default=True, help="Folder of run records.")(fn)


def cache_dir_option(help: str):
    return click.option("--cache-dir", type=click.Path(), default=None, help=help)


def device_option(fn):
    return click.option("--device", default="auto", show_default=True,
                        help="auto | cpu | cuda | cuda:N (cuda without CUDA is an error).")(fn)


def model_option(fn):
    return click.option(
        "--model", "model_ref", required=True,
        help="Run id (or prefix), run record JSON, or saved model (.skops head, .pt network; "
             "predict also takes an exported .onnx).")(fn)


def overwrite_option(what: str):
    return click.option("--overwrite", is_flag=True, help=f"Replace an existing {what}.")
