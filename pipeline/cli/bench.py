"""``bench``: the benchmarks shipped in the package (:mod:`pipeline.bench`)."""

from __future__ import annotations

import click

from .errors import handle_errors
from .params import command


@command(context_settings={"ignore_unknown_options": True, "help_option_names": []})
@click.argument("what", required=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@handle_errors
def bench(what, args):
    """Measure extraction speed: (a) naive reference, (b) forward-only ceiling, (c) extract.

    Runs the benchmark WHAT (extract: pipeline/bench/extract.py) with ARGS (see
    `python cli.py bench extract -h`); it prints images/s, c/a, c/b and peak memory,
    then (d) the whole `extract` process on a first run (empty cache) and a cached one,
    and (e) thingsvision's on the same images (`--cold-warm`: only (d) and (e)).

    Example: python cli.py bench extract --data ../shared/datasets/flower_photos --limit 512
    """
    from ..bench import BENCHMARKS, load_benchmark

    ctx = click.get_current_context()
    if what in (None, "-h", "--help"):
        click.echo(ctx.get_help())
        return
    if what not in BENCHMARKS:
        raise click.BadParameter(f"{what!r} is not a benchmark; valid: {', '.join(BENCHMARKS)}",
                                 ctx=ctx, param_hint="WHAT")
    load_benchmark(what).main(list(args))
