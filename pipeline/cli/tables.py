"""What the commands print besides one line per run: the demo's and ladder's table and
the note saying what chose a run."""

from __future__ import annotations

import click


def selection_note(record) -> str:
    """``selection metric: ...; class weights: ...`` of a record (what the run was chosen by)."""
    return (f"selection metric: {record.selection_metric_reason or 'accuracy'}\n"
            f"class weights: {record.class_weight_reason or 'none'}")


def print_rows(rows, metric: str, imbalanced: bool, protocol, first: str = "method",
               width: int = 44, ladder: bool = False):
    """The demo's and ladder's table: the selection metric (validation, then test or cv,
    and its 95% interval; ``protocol``'s words), the other metrics when classes are
    imbalanced or another metric selects, seconds (``ladder``: trainable parameters
    first, the seeds' s.d. after); ``COLLAPSED`` beside a run that answers one class;
    the majority-class reference last."""
    from ..balance import METRIC_LABELS, METRIC_SHORT, METRICS

    short = METRIC_SHORT
    others = [m for m in METRICS if m != metric] if (imbalanced or metric != "accuracy") else []
    name = short[metric]
    # under cv the selecting figure is the scored one: one column says it
    cv = protocol.cross_validated
    head = (f"{first:<{width}}" + (f" {'trainable':>10}" if ladder else "")
            + f" {'' if cv else protocol.select_short + ' ' + name:>12}"
            f" {protocol.short + ' ' + name:>13}"
            f" {'95% CI':>13}" + (f" {'sd':>6}" if ladder else "")
            + "".join(f" {short[m]:>9}" for m in others) + f" {'s':>7}")
    click.echo("\n" + head)
    for r in rows:
        select = "" if cv or r["select"] is None else f"{r['select']:.3f}"
        ci = f"{r['low']:.3f}-{r['high']:.3f}"
        line = (f"{r['label'][:width]:<{width}}"
                + (f" {r.get('trainable_params') or 0:>10,}" if ladder else "")
                + f" {select:>12} {r['value']:>13.3f} {ci:>13}"
                + (f" {r.get('score_std') or 0:>6.3f}" if ladder else "")
                + "".join(f" {r[m]:>9.3f}" for m in others) + f" {r['seconds']:>7.1f}")
        if r.get("collapsed"):
            line += f"  COLLAPSED: {r['collapsed']}"
        click.echo(line)
    click.echo(f"(ranked by {protocol.selects_on} {METRIC_LABELS[metric]}; the last "
               "row answers the largest class for every image: a method must beat it)")
