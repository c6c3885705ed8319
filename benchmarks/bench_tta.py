#!/usr/bin/env python
"""Flip test-time augmentation of frozen features, measured: accuracy and extraction time.

Extracts ``--data`` twice into ``--work`` with the same backbone, taps and runtime:
plain (``--tta none``) and flip-averaged (``--tta flip``: each vector the mean of the
image's and its horizontal mirror's), timing each (a store already there is reused,
and its line says so: delete it to time it again).  Both stores hold the same images
under the same seed, so they share the split.  On each tap a holdout logistic
regression is fitted on each store; printed: validation and test accuracy, the test
images only one of the two gets right, and the exact McNemar p-value of those paired
test predictions (:func:`pipeline.runs.stats.mcnemar_exact`).

Example::

    python benchmarks/bench_tta.py --data ../shared/datasets/flower_photos --work /work/bench_tta
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from pipeline.api import extract, fit
from pipeline.runs.stats import mcnemar_exact


def extract_timed(args, tta: str):
    """The store of ``--data`` with ``tta`` in ``--work`` and its timing line."""
    t0 = time.perf_counter()
    store = extract(str(args.data), backbone=args.backbone, layers=list(args.taps),
                    out=str(args.work), tta=tta, progress=False)
    sm = store.summary
    line = (f"extract --tta {tta}: {time.perf_counter() - t0:.1f} s wall, "
            f"{sm.n_extracted} images extracted ({sm.images_per_second:.1f} img/s in the "
            f"forward loop, runtime {sm.runtime}:{sm.precision}), {sm.n_reused} reused"
            + (" (up to date: no forward pass)" if sm.up_to_date else "")
            + f" -> {store.path.name}")
    return store, line, (sm.images_per_second if sm.n_extracted else None)


def correct_by_path(record) -> dict:
    pred = record.predictions
    return {p: t == y for p, t, y in zip(pred["paths"], pred["y_true"], pred["y_pred"])}


def compare(plain_store, flip_store, tap: str, runs: Path) -> dict:
    """Holdout logreg on ``tap`` of both stores: accuracies and McNemar on the test split."""
    plain = fit(plain_store.path, tap, "logreg", runs_dir=runs, protocol="holdout").record
    flip = fit(flip_store.path, tap, "logreg", runs_dir=runs, protocol="holdout").record
    a, b = correct_by_path(plain), correct_by_path(flip)
    if set(a) != set(b):
        raise SystemExit(f"{tap}: the two stores' test splits differ; nothing to pair")
    paths = sorted(a)
    test = mcnemar_exact([a[p] for p in paths], [b[p] for p in paths])
    return {"tap": tap, "n_test": len(paths),
            "val": [plain.metrics["val"]["accuracy"], flip.metrics["val"]["accuracy"]],
            "test": [plain.metrics["test"]["accuracy"], flip.metrics["test"]["accuracy"]],
            "only_plain": test["a_only"], "only_flip": test["b_only"], "p": test["p_value"],
            "C": [plain.hyperparameters.get("C"), flip.hyperparameters.get("C")]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--taps", nargs="+", default=["layer3", "layer4"])
    ap.add_argument("--json", type=Path, default=None, help="Also write the figures here.")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    args.work.mkdir(parents=True, exist_ok=True)
    plain, plain_line, plain_speed = extract_timed(args, "none")
    print(plain_line, flush=True)
    flip, flip_line, flip_speed = extract_timed(args, "flip")
    print(flip_line, flush=True)
    if plain_speed and flip_speed:
        print(f"extraction time ratio flip / plain: {plain_speed / flip_speed:.2f}x "
              "(forward loop, same runtime; machine shared with other jobs)")
    rows = []
    for tap in args.taps:
        r = compare(plain, flip, tap, args.work / "runs")
        rows.append(r)
        print(f"{tap}: val {r['val'][0]:.4f} -> {r['val'][1]:.4f}, test {r['test'][0]:.4f} -> "
              f"{r['test'][1]:.4f} (n_test {r['n_test']}; right only plain {r['only_plain']}, "
              f"only flip {r['only_flip']}; McNemar exact p = {r['p']:.3g}); "
              f"C {r['C'][0]} / {r['C'][1]}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"extract": [plain_line, flip_line], "taps": rows},
                                        indent=2, default=float))


if __name__ == "__main__":
    main()
