"""``backbones``: the registered backbones, or timm models matching a pattern."""

from __future__ import annotations

import click

from .errors import handle_errors
from .params import command


@command()
@click.option("--search", "pattern", default=None, metavar="PATTERN",
              help="List timm models with pretrained weights matching PATTERN (fnmatch, e.g. "
                   "'convnext*' or a bare word) with their taps, read from metadata (nothing "
                   "is downloaded); use them as --backbone timm/<name>.")
@click.option("--limit", type=click.IntRange(min=1), default=10, show_default=True,
              help="With --search: compute the taps of at most this many models.")
@handle_errors
def backbones(pattern, limit):
    """List registered backbones: taps (channels, stride), preprocessing and poolings
    (``auto`` = the backbone's own).

    Example: python cli.py backbones

    Example: python cli.py backbones --search dinov2
    """
    if pattern is not None:
        _search(pattern, limit)
        return
    from ..backbones import get_backbone, list_backbones

    for name in list_backbones():
        spec = get_backbone(name)
        state = "" if spec.available() else "  [not installed: pip install " \
            + " ".join(m.replace("_", "-") for m in spec.requires) + "]"
        pre = spec.preprocessing
        click.echo(f"{name}{state}\n  {spec.description}")
        click.echo(f"  preprocessing: {pre.input_size}px, crop_pct {pre.crop_pct:.3f}, "
                   f"{pre.interpolation}, mean {pre.mean}, std {pre.std}")
        click.echo(f"  pool: {' | '.join(spec.poolings)}; auto = {spec.default_pooling} "
                   f"({spec.default_pooling_why})")
        for tap in spec.taps:
            click.echo(f"  {tap.name:<7} stage {tap.stage:<10} channels {tap.channels:>5}  "
                       f"stride {tap.stride}")


def _search(pattern: str, limit: int):
    """Print the timm models matching ``pattern``, with the taps of the first ``limit``."""
    from ..backbones.timm_models import search

    found, total = search(pattern, limit)
    if not total:
        click.echo(f"no timm model with pretrained weights matches {pattern!r}")
        return
    for model, info in found:
        click.echo(f"timm/{model}")
        if isinstance(info, str):
            click.echo(f"  {info}")
            continue
        click.echo("  taps: " + ", ".join(f"{t.name} {t.channels}ch/{t.stride}"
                                          for t in info["taps"])
                   + f"; pool: {' | '.join(info['poolings'])} (auto = {info['pooling'][0]})")
    if total > len(found):
        click.echo(f"... and {total - len(found)} more matches (taps shown for the first "
                   f"{len(found)}; raise --limit or narrow PATTERN)")
