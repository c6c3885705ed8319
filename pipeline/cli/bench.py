"""``bench``: the extraction benchmark of a checkout (``benchmarks/bench_extract.py``)."""

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

    Runs benchmarks/bench_extract.py with ARGS (see `python cli.py bench extract -h`);
    it prints images/s, c/a, c/b and peak memory.

    Example: python cli.py bench extract --data ../shared/datasets/flower_photos --limit 512
    """
    import importlib.util
    from pathlib import Path

    ctx = click.get_current_context()
    if what in (None, "-h", "--help"):
        click.echo(ctx.get_help())
        return
    if what != "extract":
        raise click.BadParameter(f"{what!r} is not a benchmark; valid: extract", ctx=ctx,
                                 param_hint="WHAT")

    script = Path(__file__).resolve().parents[2] / "benchmarks" / f"bench_{what}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{what}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(list(args))
