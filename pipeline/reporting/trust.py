"""Can the labels and the probabilities be trusted?  The label audit and calibration sections.

Both render what run records hold: the label audit runs confident learning
(:func:`pipeline.runs.audit.label_issues`, a statistic of the recorded
probabilities, no model) on the best frozen run's out-of-fold probabilities
(its test split's under holdout); the calibration section draws each recorded
``calibration`` block (:mod:`pipeline.calibration`) of the best frozen and
the best fine-tuned run.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from . import plots
from .sections import thumbnail

log = logging.getLogger(__name__)

#: Suspects shown with thumbnails (``audit`` writes them all).
MAX_SUSPECTS = 12
#: An ECE at or below this: "probabilities can be read as probabilities" (5 points).
ECE_READABLE = 0.05


def best_of(groups: list, kinds: tuple) -> dict | None:
    """The best-ranked group whose runs are of one of ``kinds``."""
    return next((g for g in groups if g["kind"] in kinds), None)


def audit_section(groups: list) -> dict:
    """``{"group", "where", "cards", "noise", "n", "n_flagged", "accuracy", "note"}``: the
    best frozen run's label suspects, and the accuracy of the probabilities they come from
    (``note`` says why there are none)."""
    from ..runs.audit import label_issues

    best = best_of(groups, ("frozen",))
    out = {"group": best, "cards": [], "noise": [], "n": 0, "n_flagged": 0, "note": None,
           "where": "", "accuracy": None}
    if best is None:
        out["note"] = "No frozen-head run to audit with: run `fit` first."
        return out
    rep = best["rep"]
    pred = rep.predictions
    proba, y = pred.get("proba"), pred.get("y_true") or []
    out["where"] = ("out-of-fold probabilities of every image (repeat 0)"
                    if rep.protocol.cross_validated else "the test split's probabilities")
    if proba is None:
        out["note"] = f"Run {rep.run_id} recorded no probabilities."
        return out
    try:
        found = label_issues(y, proba)
    except Exception as exc:  # noqa: BLE001 - a record cleanlab cannot audit must not stop the page
        log.warning("no label audit of run %s: %s", rep.run_id, exc)
        out["note"] = f"No audit: {exc}."
        return out
    classes = rep.class_names()
    root = Path(rep.data_root or ".")
    paths = pred.get("paths") or []
    for i in found["order"][:MAX_SUSPECTS]:
        out["cards"].append({"path": paths[i], "given": classes[y[i]],
                             "suggested": classes[int(found["suggested"][i])],
                             "score": float(found["score"][i]),
                             "flagged": bool(found["flagged"][i]),
                             "thumb": thumbnail(root / paths[i])})
    counts = np.bincount(np.asarray(y), minlength=len(classes))
    out["noise"] = [{"name": c, "rate": float(r), "n": int(n)}
                    for c, r, n in zip(classes, found["noise_rate"], counts)]
    out.update(n=len(y), n_flagged=int(found["flagged"].sum()),
               accuracy=float(np.mean(np.asarray(proba).argmax(1) == np.asarray(y))))
    return out


def calibration_section(groups: list) -> dict:
    """``{"rows": [...], "readable": bool | None}``: for the best frozen and the best
    fine-tuned run with a ``calibration`` block, its temperature, ECE and NLL before and
    after scaling and the reliability diagram."""
    rows = []
    for kinds, what in ((("frozen",), "best frozen head"), (("finetune",), "best fine-tuned")):
        group = best_of(groups, kinds)
        if group is None:
            continue
        raw = group["rep"].calibration
        if not raw:
            rows.append({"group": group, "what": what, "block": None, "figure": None})
            continue
        # every key the template reads, present (a record may hold only some of them)
        block = {k: raw.get(k) for k in ("temperature", "fitted_on", "ece", "ece_scaled",
                                         "nll", "nll_scaled")}
        block["fitted_on"] = block["fitted_on"] or "(not recorded)"
        rel = raw.get("reliability") or {}
        rows.append({"group": group, "what": what, "block": block,
                     "readable": block["ece_scaled"] is not None
                     and block["ece_scaled"] <= ECE_READABLE,
                     "figure": plots.reliability_plot(rel.get("before") or [],
                                                      rel.get("after") or [],
                                                      block["temperature"])})
    return {"rows": rows, "threshold": ECE_READABLE}
