"""The report's few-shot section: the curves the analysis workflow computed, drawn and tabled.

:func:`pipeline.workflows.fewshot.fewshot_curves` fits the heads; this module
only turns the JSON the analysis record keeps of its result
(:meth:`pipeline.workflows.fewshot.FewShotResult.to_dict`) into what
``templates/report.html`` shows under ``fewshot``: the figure, one table row per
curve and the wording of how the points were computed.
"""

from __future__ import annotations

from ..options import TAP_ORDER
from . import plots

#: Keys the template reads, for the empty states (no store, unreadable store).
_EMPTY = {"curves": {}, "shots": [], "draws": 0, "seed": 0, "grid": [], "default_C": None,
          "max_folds": 0, "pixel_size": 0, "n_images": 0, "n_classes": 0, "smallest_class": 0,
          "backbone": None, "store": "", "budget": 0, "seconds": 0.0, "skipped": [],
          "note": None}


def _colour(name: str, curve: dict) -> str:
    """Pixels black; a tap the matplotlib cycle colour of its depth, so a tap keeps its
    colour whichever other taps the store holds."""
    if curve.get("kind") == "pixels":
        return "black"
    return f"C{TAP_ORDER.index(name) if name in TAP_ORDER else len(TAP_ORDER)}"


def fewshot_section(fewshot: dict) -> dict:
    """The section of ``fewshot`` (the JSON of a :func:`fewshot_curves` result, or a note
    dict), as the analysis record keeps it.

    Adds ``figure`` (SVG data URI, None without curves), ``columns`` (the k
    with a point), ``table`` (``[{name, kind, dim, cells}]``, one cell per
    column: ``{mean, half, low, high}`` or None past where the curve
    stopped) and ``grid_text`` (the C grid as written in the text).
    """
    out = {**_EMPTY, **fewshot}
    curves = out["curves"] or {}
    columns = sorted({p["k"] for c in curves.values() for p in c["points"]})
    table = []
    for name, curve in curves.items():
        by_k = {p["k"]: p for p in curve["points"]}
        table.append({"name": name, "kind": curve.get("kind"), "dim": curve.get("dim"),
                      "cells": [None if k not in by_k else
                                {"mean": by_k[k]["mean"], "low": by_k[k]["low"],
                                 "high": by_k[k]["high"],
                                 "half": (by_k[k]["high"] - by_k[k]["low"]) / 2}
                                for k in columns]})
    figure = None
    if curves:
        figure = plots.fewshot_plot(
            {name: [(p["k"], p["mean"], p["low"], p["high"]) for p in c["points"]]
             for name, c in curves.items()},
            {name: _colour(name, c) for name, c in curves.items()})
    return {**out, "figure": figure, "columns": columns, "table": table,
            "grid_text": ", ".join(f"{c:g}" for c in out["grid"])}
