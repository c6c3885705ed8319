#!/usr/bin/env python
"""Trust in labels and probabilities, measured: the label audit on planted label errors,
and the calibration error before and after temperature scaling.

**Audit.**  For each ``--seeds`` seed, a label table of ``--data`` (a class-folder
dataset) in which ``--flip`` of the images (seeded) carry another class's label
(uniformly among the others) is extracted into one store in ``--work`` (the first
seed's run is a full forward pass; later seeds change labels only, so extract
rewrites the index and computes nothing: its line is printed), holdout logreg runs
are fitted on each tap, and :func:`pipeline.api.audit` ranks the images: the share
of the flipped ones in its top ``--flip`` list (as many rows as were flipped) is
the recall.  Printed for the heads ``audit`` picks by default (the best frozen run
by validation score, with the ensemble of four heads; ``--one-head``: that head
alone) and for every tap asked with ``--taps``.

**Calibration.**  With ``--calibration``, the holdout logreg runs of the store's taps
fitted on the true labels: temperature, ECE and NLL on the test split before and
after scaling by the temperature fitted on the validation split, and with
``--finetune`` a head-only fine-tune (cached trunk) of the same store.

Example::

    python benchmarks/bench_trust.py --data ../shared/datasets/flower_photos --work /tmp/bt
    python benchmarks/bench_trust.py --data /data/brain_mri --work /tmp/bt_mri --seeds 0 \\
        --calibration --finetune
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import time
from pathlib import Path

import numpy as np

from pipeline.api import audit, extract, finetune, fit

log = logging.getLogger("bench_trust")

IMAGES = (".jpg", ".jpeg", ".png")


def labelled(data: Path) -> list[tuple[str, str]]:
    """``[(path relative to data, class)]`` of a class-folder dataset, sorted."""
    return sorted((str(p.relative_to(data)), p.parent.name) for p in data.glob("*/*")
                  if p.suffix.lower() in IMAGES and not p.name.startswith("."))


def write_table(rows, flip: float, seed: int, out: Path) -> dict:
    """A label table of ``rows`` with ``flip`` of them given another class; returns
    ``{path: (given, true)}`` of the flipped ones."""
    classes = sorted({c for _, c in rows})
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(rows), int(round(flip * len(rows))), replace=False)
    flipped = {}
    table = [list(r) for r in rows]
    for i in picked:
        true = table[i][1]
        given = rng.choice([c for c in classes if c != true])
        table[i][1] = str(given)
        flipped[table[i][0]] = (str(given), true)
    with open(out, "w", newline="") as fh:
        csv.writer(fh).writerows([["path", "label"], *table])
    return flipped


def n_flip(table: Path) -> int:
    """Rows of a label table whose label is not its folder's."""
    with open(table, newline="") as fh:
        return sum(r["label"] != r["path"].split("/")[0] for r in csv.DictReader(fh))


def audit_seed(args, rows, seed: int, taps: list) -> dict:
    work = args.work
    table = work / f"labels_{seed}.csv"
    flipped = write_table(rows, args.flip, seed, table)
    t0 = time.perf_counter()
    store = extract(str(table), image_root=str(args.data), layers=list(args.extract_taps),
                    out=str(work / "store.h5"), progress=False)
    sm = store.summary
    print(f"seed {seed}: {n_flip(table)} labels flipped; extract {time.perf_counter() - t0:.1f} s "
          f"(extracted {sm.n_extracted}, reused {sm.n_reused}, up to date: {sm.up_to_date})")
    runs = work / f"runs_{seed}"
    for tap in args.extract_taps:
        fit(store.path, tap, "logreg", runs_dir=runs, protocol="holdout", seed=seed)
    n = len(flipped)
    out = {}
    for tap in [None, *taps]:
        t0 = time.perf_counter()
        res = audit(store.path, layer=tap, clf="logreg" if tap else None, out=None, top=n,
                    runs_dir=runs, seed=seed, ensemble=not args.one_head)
        found = sum(Path(r["path"]).relative_to(args.data).as_posix() in flipped
                    for r in res.rows)
        flagged = audit(store.path, layer=tap, clf="logreg" if tap else None, out=None,
                        runs_dir=runs, seed=seed, ensemble=not args.one_head) \
            if args.flagged else None
        hit = (sum(Path(r["path"]).relative_to(args.data).as_posix() in flipped
                   for r in flagged.rows) if flagged else None)
        name = f"{res.head} ({'default: ' + res.why if tap is None else 'asked'})"
        out[tap or "default"] = {"head": name, "recall_top": found / n, "n_flipped": n,
                                 "flagged": flagged.n_flagged if flagged else None,
                                 "flagged_recall": hit / n if flagged else None,
                                 "seconds": time.perf_counter() - t0}
        print(f"  {name}: {found}/{n} flipped in the top {n} ({found / n:.1%})"
              + (f"; flagged {flagged.n_flagged}, holding {hit}/{n}" if flagged else "")
              + f" [{time.perf_counter() - t0:.1f} s]")
    return out


def calibration(args) -> list[dict]:
    """Holdout logreg per tap on the true labels, and optionally a head-only fine-tune:
    their records' calibration blocks."""
    work = args.work / "calibration"
    store = extract(str(args.data), layers=list(args.extract_taps),
                    out=str(work / "store.h5"), progress=False)
    out = []
    for tap in args.extract_taps:
        run = fit(store.path, tap, "logreg", runs_dir=work / "runs", protocol="holdout")
        out.append(_row(run.record, f"{tap} + logreg"))
    if args.finetune:
        run = finetune(store.path, runs_dir=work / "runs", protocol="holdout", unfreeze="none",
                       epochs=args.finetune_epochs)
        out.append(_row(run.record, f"fine-tune head only, {args.finetune_epochs} epochs"))
    return out


def _row(record, name: str) -> dict:
    c = record.calibration
    row = {"run": name, "test_accuracy": record.metrics["test"]["accuracy"],
           "temperature": c["temperature"], "ece": c["ece"], "ece_scaled": c["ece_scaled"],
           "nll": c["nll"], "nll_scaled": c["nll_scaled"], "seconds": record.fit_seconds}
    print(f"  {name}: test accuracy {row['test_accuracy']:.4f}; T {row['temperature']:.3f}; "
          f"ECE {row['ece']:.4f} -> {row['ece_scaled']:.4f}; NLL {row['nll']:.4f} -> "
          f"{row['nll_scaled']:.4f}")
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--flip", type=float, default=0.02)
    p.add_argument("--taps", nargs="*", default=["layer4", "head"])
    p.add_argument("--extract-taps", nargs="+", default=["layer4", "head"])
    p.add_argument("--one-head", action="store_true",
                   help="audit with the one head, not the default ensemble of four")
    p.add_argument("--flagged", action="store_true",
                   help="also count the flipped images among those cleanlab flags")
    p.add_argument("--no-audit", action="store_true")
    p.add_argument("--calibration", action="store_true")
    p.add_argument("--finetune", action="store_true")
    p.add_argument("--finetune-epochs", type=int, default=5)
    args = p.parse_args(argv)
    args.data = args.data.resolve()
    logging.basicConfig(level=logging.WARNING)
    args.work.mkdir(parents=True, exist_ok=True)
    results = {}
    if not args.no_audit:
        rows = labelled(args.data)
        per_seed = {s: audit_seed(args, rows, s, args.taps) for s in args.seeds}
        results["audit"] = per_seed
        print("\nrecall of the flipped images in the top list, mean over seeds "
              f"{args.seeds}:")
        for key in per_seed[args.seeds[0]]:
            vals = [per_seed[s][key]["recall_top"] for s in args.seeds]
            print(f"  {per_seed[args.seeds[0]][key]['head']}: {np.mean(vals):.1%} "
                  f"(per seed: {', '.join(f'{v:.1%}' for v in vals)})")
    if args.calibration:
        print("\ncalibration (holdout: temperature fitted on validation, scored on test):")
        results["calibration"] = calibration(args)
    (args.work / "results.json").write_text(json.dumps(results, indent=1, default=str))
    print(f"\nwrote {args.work / 'results.json'}")


if __name__ == "__main__":
    main()
