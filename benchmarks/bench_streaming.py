#!/usr/bin/env python
"""Streaming head benchmark: memory flat in N, accuracy of in-memory logistic regression.

From a feature store of the flowers photos (efficientnet_lite0, 3,670 rows)
it builds a store with every row repeated ``--repeat`` times (36,700 rows by
default; each copy keeps its original's split, so the test split holds only
copies of test images), then runs in fresh subprocesses, each measured on
its own (``os.wait4`` gives that child's peak RSS):

(a) ``fit --clf sgd-logreg`` (streaming) on the 1x store,
(b) ``fit --clf sgd-logreg`` on the repeated store,
(c) ``fit --clf logreg`` (in memory) on the 1x store: the accuracy to match,
(d) with ``--in-memory-big``: ``fit --clf logreg`` on the repeated store,
    the memory the streaming head avoids.

``--compare-taps`` adds, for every tap of the 1x store, the test accuracy of
in-memory logreg next to the streaming head's over ``--seeds`` SGD seeds
(the split is fixed, so only the SGD order changes).

It prints a markdown table (peak RSS, test and val accuracy, chosen
hyperparameter, fit seconds) and the machine load (``uptime``).

Examples::

    python benchmarks/bench_streaming.py \
        --features /tmp/flowers_feats/flower_photos_efficientnet_lite0_avg.h5
    python benchmarks/bench_streaming.py --features STORE --tap layer4 --repeat 10 --in-memory-big
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: Run inside each measured child: one run_fit, its record's figures as JSON.
CHILD = """
import json, sys, time
sys.path.insert(0, {root!r})
from pipeline.configs import FitConfig
from pipeline.workflows.fit import run_fit
t0 = time.perf_counter()
(record, path), = run_fit(FitConfig(features={store!r}, layer={tap!r}, clf={clf!r},
                                    protocol="holdout"), {runs!r})
json.dump({{"test_accuracy": record["metrics"]["test"]["accuracy"],
           "val_accuracy": record["metrics"]["val"]["accuracy"],
           "n_test": record["metrics"]["test"]["n"],
           "hyperparameters": record["hyperparameters"], "fit_seconds": record["fit_seconds"],
           "wall_seconds": time.perf_counter() - t0, "record": str(path)}},
          open({result!r}, "w"))
"""


def repeat_store(src: Path, dst: Path, tap: str, repeat: int) -> Path:
    """``dst``: tap ``tap`` of ``src`` with every row repeated ``repeat`` times (copy k's
    paths are prefixed ``copy<k>/``; labels, split and vectors are the original's)."""
    from pipeline.store.hdf5 import FeatureStore, StoreContents, write_store

    store = FeatureStore(src)
    X = store.X(tap)   # the builder may hold 1x in memory; the measured fits never do
    import h5py

    with h5py.File(src, "r") as f:
        sha = [s.decode() for s in f["sha256"][()]]
    rows = []
    for k in range(repeat):
        for i, p in enumerate(store.paths):
            rows.append({"path": f"copy{k}/{p}", "label": int(store.labels[i]),
                         "split": int(store.split_codes[i]), "sha256": sha[i], "size": 0,
                         "mtime_ns": 0, "vectors": (lambda i=i: {tap: X[i]})})
    attrs = {k: v for k, v in store.attrs.items()
             if k not in ("format", "format_version", "config", "config_key", "fingerprint",
                          "taps", "n_images", "n_skipped")}
    attrs["dataset"] = f"{attrs.get('dataset', 'store')} x{repeat}"
    config = dict(store.config, repeated=repeat)
    write_store(dst, StoreContents(config=config, attrs=attrs, classes=store.classes, rows=rows,
                                   skipped=[], taps={tap: X.shape[1]}))
    return dst


def measure(store: Path, tap: str, clf: str, work: Path, name: str) -> dict:
    """Run one fit in a fresh child process; its figures plus its own peak RSS (MiB)."""
    result = work / f"{name}.json"
    code = CHILD.format(root=str(ROOT), store=str(store), tap=tap, clf=clf,
                        runs=str(work / "runs"), result=str(result))
    with open(work / f"{name}.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=log)
        _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed; see {work / (name + '.log')}")
    out = json.loads(result.read_text())
    out["peak_rss_mib"] = usage.ru_maxrss / 1024   # Linux: KiB
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--features", required=True, help="feature store of the flowers photos")
    ap.add_argument("--tap", default="head")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--work", default=None, help="folder for the repeated store and runs")
    ap.add_argument("--in-memory-big", action="store_true",
                    help="also fit in-memory logreg on the repeated store")
    ap.add_argument("--compare-taps", action="store_true",
                    help="accuracy of both heads on every tap of the 1x store")
    ap.add_argument("--seeds", type=int, default=3, help="SGD seeds for --compare-taps")
    args = ap.parse_args(argv)

    from pipeline.store.hdf5 import FeatureStore

    work = Path(args.work or tempfile.mkdtemp(prefix="bench_streaming_"))
    work.mkdir(parents=True, exist_ok=True)
    src = Path(args.features)
    n = len(FeatureStore(src))
    big = work / f"repeated_x{args.repeat}.h5"
    if not big.exists():
        t0 = time.perf_counter()
        repeat_store(src, big, args.tap, args.repeat)
        print(f"built {big} ({n * args.repeat} rows) in {time.perf_counter() - t0:.0f} s",
              file=sys.stderr)
    runs = [("sgd-logreg", src, n, "sgd_1x"), ("sgd-logreg", big, n * args.repeat, "sgd_big"),
            ("logreg", src, n, "logreg_1x")]
    if args.in_memory_big:
        runs.append(("logreg", big, n * args.repeat, "logreg_big"))
    results = []
    for clf, store, rows, name in runs:
        print(f"running {name} ...", file=sys.stderr)
        r = measure(store, args.tap, clf, work, name)
        r.update(clf=clf, rows=rows, name=name)
        results.append(r)
        print(json.dumps(r), file=sys.stderr)

    print(f"\nstore {src} tap {args.tap}; work folder {work}\n")
    print("| fit | rows | peak RSS (MiB) | test acc | val acc | hyperparameter | fit s |")
    print("|---|---:|---:|---:|---:|---|---:|")
    for r in results:
        hp = {k: v for k, v in r["hyperparameters"].items() if k in ("alpha", "C")}
        hp = ", ".join(f"{k}={v:.3g}" for k, v in hp.items())
        print(f"| {r['clf']} | {r['rows']:,} | {r['peak_rss_mib']:.0f} | "
              f"{r['test_accuracy']:.4f} | {r['val_accuracy']:.4f} | {hp} | "
              f"{r['fit_seconds']:.1f} |")
    by = {r["name"]: r for r in results}
    gap = 100 * (by["sgd_1x"]["test_accuracy"] - by["logreg_1x"]["test_accuracy"])
    ratio = by["sgd_big"]["peak_rss_mib"] / by["sgd_1x"]["peak_rss_mib"]
    print(f"\nstreaming - in-memory test accuracy (1x): {gap:+.2f} points "
          f"(n_test = {by['sgd_1x']['n_test']})")
    print(f"streaming peak RSS {args.repeat}x / 1x: {ratio:.2f}")
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"uptime: {load}")
    (work / "summary.json").write_text(json.dumps(results, indent=1))
    if args.compare_taps:
        compare_taps(src, args.seeds)
    return results


def compare_taps(src: Path, seeds: int):
    """Test accuracy of in-memory logreg vs the streaming head on every tap, in this process."""
    from pipeline.heads.selection import select_and_fit
    from pipeline.heads.streaming import stream_select_and_fit
    from pipeline.runs.stats import mcnemar_exact
    from pipeline.store.hdf5 import FeatureStore

    store = FeatureStore(src)
    y_te = store.y("test")
    print(f"\n| tap | logreg test acc (C) | sgd-logreg test acc, seeds 0-{seeds - 1} "
          "(alpha) | mean difference (points) | McNemar p, seed 0 |")
    print("|---|---|---|---:|---:|")
    for tap in store.taps:
        res = select_and_fit("logreg", store.X(tap, "train"), store.y("train"),
                             store.X(tap, "val"), store.y("val"))
        pred_lr = res.model.predict(store.X(tap, "test"))
        acc_lr = float(np.mean(pred_lr == y_te))
        accs, alphas, preds = [], [], []
        for seed in range(seeds):
            r, pred, _ = stream_select_and_fit(store, tap, seed=seed)
            accs.append(float(np.mean(pred == y_te)))
            alphas.append(r.params["alpha"])
            preds.append(pred)
        p = mcnemar_exact(pred_lr == y_te, preds[0] == y_te)["p_value"]
        print(f"| {tap} | {acc_lr:.4f} ({res.params['C']:.3g}) | "
              + ", ".join(f"{a:.4f} ({al:.3g})" for a, al in zip(accs, alphas))
              + f" | {100 * (np.mean(accs) - acc_lr):+.2f} | {p:.2f} |", flush=True)


if __name__ == "__main__":
    main()
