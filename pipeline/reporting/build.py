"""The HTML comparison report: run records -> one self-contained page.

:func:`render_report` takes run records and the analysis that
:mod:`pipeline.workflows.analysis` computed from their feature store, builds one
context dict with a key per section and renders ``templates/report.html``
with jinja2 autoescaping, so class names, paths and commands always show as
text.  The report fits nothing and never runs a network.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ..balance import METRIC_SHORT
from ..errors import StoreError, UsageError, opt, program
from ..files import atomic_write
from ..runs.groups import (
    current_store_runs,
    group_runs,
    latest_per_seed,
    resolve_report_metric,
)
from .explore import explore_section
from .fewshot import fewshot_section
from .hierarchy import hierarchy_section
from .leakage import leakage_section
from .sections import (
    TRAP_TRAIN_MIN,
    advice_section,
    backbones_section,
    comparison_rows,
    confusion_section,
    curves_section,
    data_section,
    depth_section,
    feature_map_section,
    mistakes_section,
    provenance_section,
    verdict_section,
)
from .trust import audit_section, calibration_section

log = logging.getLogger(__name__)


def render_report(records: list, analysis: dict, out_path, overwrite: bool = False,
                  metric: str = "auto") -> Path:
    """Write the HTML page of ``records`` (run records) and ``analysis`` (from
    :func:`pipeline.workflows.analysis.analyse`) to ``out_path``; returns it.
    ``metric``: the selection metric that ranks and tests the runs (``auto``:
    :func:`pipeline.runs.groups.resolve_report_metric`).

    Refuses a folder as ``out_path``, and to replace an existing file unless
    ``overwrite``; an ``out_path`` that cannot be written is a :class:`StoreError`.
    """
    out_path = check_out_path(out_path, overwrite)
    if not records:
        raise StoreError(f"no run records to report on; run `{program()} fit` or "
                         f"`{program()} baseline` first", param="runs_dir")
    t0 = time.perf_counter()
    html = render(build_context(records, analysis, metric))
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(out_path, "w", encoding="utf-8") as fh:
            fh.write(html)
    except OSError as exc:  # atomic_write has removed its temporary file
        raise StoreError(f"cannot write the report {str(out_path)!r}: "
                         f"{exc.strerror or exc}; pass {opt('out')} a file in a folder you "
                         "can write", param="out") from None
    log.info("report of %d runs written to %s (%.1f s, %.0f kB)", len(records), out_path,
             time.perf_counter() - t0, out_path.stat().st_size / 1e3)
    return out_path


def check_out_path(out_path, overwrite: bool = False) -> Path:
    """``out_path`` as a Path if the report may be written there: not a folder, and not
    an existing file unless ``overwrite``."""
    out_path = Path(out_path)
    if out_path.is_dir():
        raise UsageError(f"{opt('out', str(out_path))} is a folder, and the report is one "
                         f"HTML file: pass a file name such as "
                         f"{opt('out', str(out_path / 'report.html'))}", param="out")
    if out_path.exists() and not overwrite:
        raise StoreError(f"report {str(out_path)!r} already exists; pass "
                         f"{opt('overwrite', 'True')} to replace it or {opt('out')} another file",
                         param="out")
    return out_path


def environment():
    """The jinja2 environment of the report's templates (``templates/``): autoescaping, a
    missing value an error, the ``pct`` and ``num`` filters and ``program`` (how a hint
    spells a command).  ``environment().get_template("partials/advice.html").module``
    holds the advice's macros, for a page or a test."""
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(loader=PackageLoader("pipeline.reporting", "templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = _pct
    env.filters["num"] = _num
    env.globals["program"] = program()
    return env


def render(context: dict) -> str:
    """The page for ``context``; every ``{{ value }}`` is HTML-escaped."""
    return environment().get_template("report.html").render(**context)


def build_context(records: list, analysis: dict, metric: str = "auto") -> dict:
    """One dict per section, from ``records`` and the workflow's ``analysis`` of their store.

    A seed run twice is shown once, as its latest run (:func:`latest_per_seed`); the
    runs of an earlier store at a recorded store path are left out and listed in the
    provenance (:func:`current_store_runs`, with ``analysis["stale_runs"]``, those the
    workflow left out already).  Every section ranks and tests in one selection metric
    (``metric``, ``auto`` resolved from the records and said in the verdict).
    """
    records, stale = current_store_runs(latest_per_seed(records)[0])
    stale = list(analysis.get("stale_runs") or []) + stale
    metric, reason = resolve_report_metric(records, metric)
    log.info("report metric: %s", reason)
    groups = group_runs(records, metric)
    best = groups[0]
    verdict = verdict_section(groups, reason)
    return {
        "title": f"Transfer-learning report: {best['dataset'] or 'dataset'}",
        "generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "n_runs": len(records),
        "verdict": verdict,
        "table": comparison_rows(groups),
        "depth": depth_section(groups),
        "backbones": backbones_section(groups),
        "fewshot": fewshot_section(analysis["fewshot"]),
        "curves": curves_section(records, metric, groups),
        "trap_train_min": TRAP_TRAIN_MIN,
        "metric_short": METRIC_SHORT,
        "explore": explore_section(analysis.get("explore")),
        "confusion": confusion_section(best),
        "mistakes": mistakes_section(best, analysis.get("mistake_maps")),
        "audit": audit_section(groups),
        "calibration": calibration_section(groups),
        "leakage": leakage_section(analysis.get("leakage"), best),
        "feature_map": feature_map_section(analysis["feature_map"]),
        "hierarchy": hierarchy_section(analysis.get("hierarchy")),
        "advice": advice_section(groups),
        "provenance": provenance_section(records, groups, stale),
        "data": data_section(records, groups),
    }


def _pct(value, digits: int = 1) -> str:
    return "—" if value is None else f"{value * 100:.{digits}f}%"


def _num(value, fmt: str = ",.0f") -> str:
    return "—" if value is None else format(value, fmt)
