"""The leakage section: duplicate pairs of the store with thumbnails, and the best run's
accuracy on the scored images that have no duplicate where the model was trained.

The pairs and counts come from the analysis record
(:func:`pipeline.workflows.analysis.leakage`); the accuracies from the best
run's recorded predictions.  Nothing is fitted or run here.
"""

from __future__ import annotations

from pathlib import Path

from .sections import thumbnail

#: Pairs shown with thumbnails (the section says how many there are in all).
MAX_PAIRS_SHOWN = 24


#: Side of a pair's thumbnails, px (2 x 24 of them stay well under 1 MB).
PAIR_THUMB = 96


def leakage_section(found: dict | None, best: dict) -> dict:
    """The section's context from ``found`` (the analysis' leakage dict) and ``best``
    (the best group, whose representative run's predictions are re-scored)."""
    if not found or found.get("note"):
        return {"note": (found or {}).get("note") or "No leakage check in this analysis "
                "record (written by an older version).", "pairs": []}
    root = Path(found.get("data_root") or ".")
    shown = []
    for p in found["pairs"][:MAX_PAIRS_SHOWN]:
        shown.append({**p, "thumb_a": thumbnail(root / p["a"]["path"], PAIR_THUMB),
                      "thumb_b": thumbnail(root / p["b"]["path"], PAIR_THUMB)})
    protocol = best["rep"].protocol
    # Holdout: train + val, since a frozen head is refitted on both (a fine-tuning run
    # selects its epoch on val); cv: the other folds of repeat 0, whose predictions it is.
    leaked = set(found[protocol.pick(holdout="test_with_trainval_duplicate",
                                     cv="oof_with_train_duplicate")])
    return {"note": None, "found": found, "shown": shown, "cv": protocol.cross_validated,
            "n_pairs": found["exact"]["total"] + found["near"]["total"],
            "n_test": (found.get("split_sizes") or {}).get("test"),
            "n_test_leaked": len(found["test_with_train_duplicate"]),
            "n_test_leaked_trainval": len(found["test_with_trainval_duplicate"]),
            "n_oof_leaked": len(found["oof_with_train_duplicate"]),
            "clean": clean_accuracy(best["rep"], leaked), "group": best}


def clean_accuracy(record, leaked: set) -> dict:
    """``{"n", "accuracy", "n_leaked", "leaked_accuracy"}`` of ``record``'s scored
    predictions split by whether the image's path is in ``leaked``."""
    pred = record.predictions
    rows = list(zip(pred.get("paths", []), pred.get("y_true", []), pred.get("y_pred", [])))
    clean = [t == p for path, t, p in rows if path not in leaked]
    dirty = [t == p for path, t, p in rows if path in leaked]
    return {"n": len(clean), "accuracy": sum(clean) / len(clean) if clean else None,
            "n_leaked": len(dirty), "leaked_accuracy": sum(dirty) / len(dirty) if dirty else None,
            "overall": sum(clean + dirty) / len(rows) if rows else None}
