"""``audit``: which given labels look wrong, ranked, as a CSV to check and fix."""

from __future__ import annotations

import click

from ..configs import AuditConfig
from .errors import handle_errors
from .params import command, config_options, runs_option

#: Suspects printed (the CSV holds them all).
SHOWN = 10


@command()
@config_options(AuditConfig)
@runs_option
@handle_errors
def audit(runs_dir, **fields):
    """Rank the images whose given label is likely wrong (confident learning, cleanlab)
    from the out-of-fold probabilities of a frozen head, and write them as CSV.

    The head (by default the best frozen run of the store in --runs; else logreg on
    the deepest tap) is cross-validated on the store's folds, so each image is scored
    by a head that never saw it.  Check the suspects, fix the labels (move the file,
    or edit the label table), then run extract again (only the index is rewritten) and
    fit again.

    Example: python cli.py audit --features features/flowers.h5 --out suspects.csv

    Example: python cli.py audit --top 50 --out check_these.csv --overwrite
    """
    from ..workflows.audit import run_audit

    res = run_audit(AuditConfig(**fields), runs_dir)
    click.echo(f"audited {res.n_images} images with {res.head} ({res.why}); out-of-fold "
               f"accuracy {res.oof_accuracy:.4f}; {res.n_flagged} flagged as likely label "
               f"errors ({res.seconds:.1f} s)")
    click.echo("estimated share of each class's labels that is wrong: " + ", ".join(
        f"{c} {r:.1%}" for c, r in res.noise_rate.items()))
    for row in res.rows[:SHOWN]:
        click.echo(f"{row['rank']:>4}  {row['score']:.4f}  given {row['given_label']!r}, "
                   f"suggested {row['suggested_label']!r} ({row['suggested_probability']:.2f})"
                   f"  {row['path']}")
    if len(res.rows) > SHOWN:
        click.echo(f"... and {len(res.rows) - SHOWN} more")
    if res.out is not None:
        click.echo(f"wrote {len(res.rows)} suspects to {res.out}")
