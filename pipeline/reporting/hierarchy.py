"""The feature-hierarchy section: the newest ``hierarchy`` record, shown as it is.

The record (:mod:`pipeline.workflows.hierarchy`) already holds the pictures as
data URIs; this module only orders and describes them.  Nothing is run here.
"""

from __future__ import annotations

from ..errors import program
from ..options import TAP_ORDER


def hierarchy_section(record: dict | None) -> dict:
    """The section's context: ``{"note"}`` without a record, else its taps shallow to deep."""
    if not record or not record.get("taps"):
        return {"note": f"No feature-hierarchy record yet: `{program()} hierarchy --limit 300` "
                "shows which patches of your images drive each tap."}
    taps = sorted(record["taps"], key=lambda t: TAP_ORDER.index(t["tap"])
                  if t["tap"] in TAP_ORDER else len(TAP_ORDER))
    return {"note": None, "record": record, "taps": taps, "filters": record.get("filters") or {}}
