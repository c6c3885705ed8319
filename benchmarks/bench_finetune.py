#!/usr/bin/env python
"""Fine-tuning against frozen features, measured: the recommended preset and the best
frozen head on one store, several seeds, with the paired test the report uses.

**Frozen.**  Logistic regression (and ``--svm``: the RBF SVM) on every tap of the
store; the best frozen head is the one with the best selecting score (validation
accuracy under holdout, the cross-validated mean under cv), never test.  Heads are
deterministic given the split: one run each.

**Fine-tuned.**  ``finetune --preset recommended`` (or ``--preset`` another; extra
``--set key=value`` fields on top) for ``--seeds`` seeds, sharing one trunk cache
(the first seed's time includes filling it: both times are printed).

Printed: each run's test score, the fine-tuned mean and s.d., and each seed's paired
test against the best frozen head (exact McNemar on the test images under holdout,
the corrected resampled t-test under cv: :func:`pipeline.runs.groups.compare`),
Holm-adjusted over the seeds; ``--markdown`` prints the README's table rows.

Example::

    python benchmarks/bench_finetune.py --features /work/stores/flowers_full.h5 \\
        --runs /tmp/bf/runs --seeds 3 --protocol holdout --markdown flowers
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from pipeline.api import finetune, fit
from pipeline.runs.groups import compare, record_metric, score
from pipeline.runs.stats import holm
from pipeline.train.trunk_cache import TrunkCache

log = logging.getLogger("bench_finetune")


def best_frozen(store: str, runs: Path, protocol: str, svm: bool):
    """``(best record, [(label, select, test)])`` of the frozen heads on every tap."""
    records = []
    for clf in ("logreg", "svm") if svm else ("logreg",):
        t0 = time.perf_counter()
        out = fit(store, "all", clf, runs_dir=runs, protocol=protocol)
        log.info("frozen %s on every tap: %.0f s", clf, time.perf_counter() - t0)
        records += [r.record for r in out]
    rows = [(r.label, score(r)["select"], score(r)["value"]) for r in records]
    return max(records, key=lambda r: score(r)["select"]), rows


def tta_gain(record, runs: Path, features: str) -> dict:
    """Test accuracy of a holdout fine-tuned run's saved network on the store's test images,
    without and with flip TTA (the same weights; TTA only at prediction), and McNemar's
    exact test between the two."""
    from pipeline.models.registry import load_model
    from pipeline.runs.stats import mcnemar_exact
    from pipeline.store.hdf5 import open_store

    store = open_store(features)
    files = [Path(store.data_root) / p for p in store.rel_paths("test")]
    y = store.y("test")
    model = load_model(record.run_id, runs)
    correct = {}
    for tta in ("none", "flip"):
        model.bundle["config"]["tta"] = tta
        proba, errors = model.predict_proba(files)
        if errors:
            raise SystemExit(f"test images no longer decode: {errors}")
        correct[tta] = proba.argmax(1) == y
    plain, flipped = correct["none"], correct["flip"]
    return {"plain": float(plain.mean()), "flip": float(flipped.mean()),
            "p_value": mcnemar_exact(flipped, plain)["p_value"]}


def write_rows(readme: Path, name: str, rows: list):
    """Replace the lines between ``<!-- bench_finetune NAME -->`` and its closing marker."""
    start, end = f"<!-- bench_finetune {name} -->", f"<!-- /bench_finetune {name} -->"
    lines = readme.read_text(encoding="utf-8").splitlines()
    if start not in lines or end not in lines:
        raise SystemExit(f"{readme} has no '{start}' ... '{end}' block; add one where the rows "
                         "go")
    i, j = lines.index(start), lines.index(end)
    readme.write_text("\n".join(lines[:i + 1] + rows + lines[j:]) + "\n", encoding="utf-8")
    print(f"wrote {len(rows)} rows into {readme}")


def parse_sets(items) -> dict:
    """``["key=value", ...]`` -> fields (values read as JSON when they parse)."""
    out = {}
    for item in items or ():
        key, _, value = item.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--features", required=True, help="feature store (.h5)")
    ap.add_argument("--runs", required=True, type=Path, help="runs folder (new or reused)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--protocol", default="holdout", choices=("holdout", "cv"))
    ap.add_argument("--preset", default="recommended")
    ap.add_argument("--set", action="append", help="extra finetune field key=value")
    ap.add_argument("--svm", action="store_true", help="also RBF-SVM heads in the frozen pool")
    ap.add_argument("--markdown", metavar="NAME", help="print README table rows for NAME")
    ap.add_argument("--readme", type=Path, help="with --markdown: write the rows into this "
                    "file between the lines '<!-- bench_finetune NAME -->' and "
                    "'<!-- /bench_finetune NAME -->'")
    ap.add_argument("--tta", action="store_true",
                    help="holdout: each fine-tuned network's test accuracy with and without "
                         "flip TTA at prediction")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    frozen, rows = best_frozen(args.features, args.runs, args.protocol, args.svm)
    for label, select, test in rows:
        print(f"frozen {label:40s} select {select:.4f} test {test:.4f}")
    metric = record_metric(frozen)
    print(f"best frozen (by {frozen.protocol.select_short}): {frozen.label} "
          f"test {metric} {score(frozen)['value']:.4f}, fit {frozen.fit_seconds:.1f} s")
    cache, tuned, walls = TrunkCache(), [], []
    extra = parse_sets(args.set)
    for seed in range(args.seeds):
        t0 = time.perf_counter()
        run = finetune(args.features, runs_dir=args.runs, cache_dir=cache,
                       protocol=args.protocol, preset=args.preset, seed=seed, **extra)
        walls.append(time.perf_counter() - t0)
        rec = run.record
        tuned.append(rec)
        wise = rec["finetune"].get("wise")
        print(f"seed {seed}: {rec.label} test {metric} {score(rec, metric)['value']:.4f} "
              f"(accuracy {score(rec, 'accuracy')['value']:.4f}), wall {walls[-1]:.0f} s"
              + (f", WiSE alpha {wise['alpha']}" if wise else ""))
    tests = [compare(rec, frozen, metric) for rec in tuned]
    adjusted = holm([t["p_value"] for t in tests])
    values = [score(r, metric)["value"] for r in tuned]
    accs = [score(r, "accuracy")["value"] for r in tuned]
    for seed, (t, p) in enumerate(zip(tests, adjusted)):
        print(f"seed {seed} vs best frozen: {t.get('test')} p {t['p_value']:.4g}, "
              f"Holm {p:.4g}")
    mean, sd = float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0
    frozen_value = score(frozen, metric)["value"]
    print(f"fine-tuned mean {metric} {mean:.4f} +- {sd:.4f} (accuracy {np.mean(accs):.4f}); "
          f"best frozen {frozen_value:.4f}; gain {100 * (mean - frozen_value):+.2f} points; "
          f"largest Holm-adjusted p {max(adjusted):.4g}; wall per seed "
          f"{', '.join(f'{w:.0f}' for w in walls)} s")
    if args.tta and args.protocol == "holdout":
        for seed, rec in enumerate(tuned):
            g = tta_gain(rec, args.runs, args.features)
            print(f"seed {seed} flip TTA: test accuracy {g['plain']:.4f} -> {g['flip']:.4f} "
                  f"(McNemar p {g['p_value']:.3g})")
    if args.markdown:
        rows = [f"| {args.markdown} | {frozen.label} | 1 | {frozen_value:.3f} | - "
                f"| {frozen.fit_seconds:.0f} s | - |",
                f"| {args.markdown} | {tuned[0].label} | {len(tuned)} | {mean:.3f} +- {sd:.3f} "
                f"| {', '.join(f'{v:.3f}' for v in values)} | "
                f"{', '.join(f'{w:.0f}' for w in walls)} s | {max(adjusted):.2g} |"]
        print("\n".join(rows))
        if args.readme:
            write_rows(args.readme, args.markdown, rows)


if __name__ == "__main__":
    main()
