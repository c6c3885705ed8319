"""``report``: run records -> the analyses of their store -> one HTML page.

The report package renders and fits nothing; this workflow joins the stages:
it loads the run records of a folder, computes (or reuses) the analyses the
page shows from the best frozen run's feature store (few-shot curves,
feature map: :mod:`.analysis`), adds the newest feature-hierarchy record
(:mod:`.hierarchy`) and transfer-explorer record (:mod:`.explore`), draws the
class-activation maps of the images the mistakes gallery shows (:mod:`.explain`:
the best frozen and best fine-tuned runs' saved models), then renders the page.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import StoreError, opt, program
from ..reporting.build import check_out_path, render_report
from ..reporting.sections import THUMB_SIZE, mistake_files
from ..runs.groups import (
    current_store_runs,
    group_runs,
    latest_per_seed,
    resolve_report_metric,
)
from ..runs.records import load_records
from .analysis import EFFICIENCY_BUDGET, load_or_analyse
from .explain import gallery_maps
from .explore import latest_explore
from .hierarchy import latest_hierarchy


def build_report(runs_dir, out_path, overwrite: bool = False,
                 efficiency_budget: float = EFFICIENCY_BUDGET, metric: str = "auto") -> Path:
    """Write the HTML report of every run record in ``runs_dir`` to ``out_path``.

    Refuses a folder as ``out_path``, and to replace an existing file unless ``overwrite``.  Returns
    the path written.  ``efficiency_budget`` caps the seconds spent refitting
    heads for the few-shot curves.  ``metric`` ranks and tests the runs (``auto``: the
    one they were selected by, or resolved from the data when they disagree).
    """
    out_path = check_out_path(out_path, overwrite)  # before the analysis, which takes time
    resolve_report_metric([], metric)                 # an unknown metric, before it too
    # A seed run twice counts once, and the runs of a store re-extracted since are left
    # out (named in the log and the page), here for the analysis and the page alike.
    records, _superseded = latest_per_seed(load_records(runs_dir))
    records, stale = current_store_runs(records)
    if not records:
        raise StoreError(f"no run records in {str(runs_dir)!r}; run `{program()} fit` or "
                         f"`{program()} baseline` first, or pass {opt('runs_dir', 'DIR')}",
                         param="runs_dir")
    analysis = {**load_or_analyse(records, runs_dir, efficiency_budget),
                "hierarchy": latest_hierarchy(runs_dir), "explore": latest_explore(runs_dir),
                "stale_runs": stale, "mistake_maps": _mistake_maps(records, metric)}
    return render_report(records, analysis, out_path, overwrite=overwrite, metric=metric)


def _mistake_maps(records: list, metric: str) -> dict:
    """The class-activation thumbnails of the images the mistakes gallery shows (those of
    the best group's representative run, :func:`mistake_files`)."""
    groups = group_runs(records, resolve_report_metric(records, metric)[0])
    return gallery_maps(groups, mistake_files(groups[0]["rep"]), THUMB_SIZE)
