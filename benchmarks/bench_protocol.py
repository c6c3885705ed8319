"""Benchmark of the evaluation protocols: holdout against repeated-K-fold cv.

Prints, for one feature store (default: all five lite0 taps of the 3,670
flowers, extracted first if missing):

1. the whole-process time of ``fit --layer all --clf logreg`` under holdout
   and under cv (5 folds x 3 repeats, nested selection), and their ratio;
2. per tap, the holdout test accuracy with its 95% Wilson interval and the
   cv mean with its corrected 95% interval, and whether they overlap;

and with ``--subsets``, for three subsets of 20 images per class (subset
seeds 0, 1, 2; symlinks into the flowers folder): the cv mean and interval
of every frozen logreg tap and of the pixel baseline, and whether the best
frozen head's interval lies above the pixel mean.

    python benchmarks/bench_protocol.py [--store STORE.h5] [--subsets]
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

ROOT = Path(__file__).resolve().parent.parent
FLOWERS = ROOT.parent / "shared" / "datasets" / "flower_photos"
CLI = [sys.executable, str(ROOT / "cli.py"), "-q"]


def run(args, cwd=None) -> float:
    """Seconds a whole ``cli.py`` process takes (it must succeed)."""
    t0 = time.perf_counter()
    subprocess.run(CLI + args, check=True, cwd=cwd, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def records(folder: Path) -> list:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def ensure_store(store: Path) -> Path:
    if not store.is_file():
        print(f"# extracting {store} (all five taps of {FLOWERS})", flush=True)
        run(["extract", "--data", str(FLOWERS), "--layer", "all", "--runtime", "auto",
             "--no-progress", "--out", str(store)])
    return store


def compare_protocols(store: Path, work: Path):
    from pipeline.runs.groups import score

    times = {}
    for protocol in ("holdout", "cv"):
        times[protocol] = run(["fit", "--features", str(store), "--layer", "all", "--clf",
                               "logreg", "--protocol", protocol, "--runs",
                               str(work / protocol)])
    print(f"fit --layer all --clf logreg, whole process: holdout {times['holdout']:.1f} s, "
          f"cv {times['cv']:.1f} s, ratio {times['cv'] / times['holdout']:.2f}")
    by_tap = {p: {r["layer"]: r for r in records(work / p)} for p in times}
    print(f"{'tap':<8} {'holdout test acc [95% Wilson]':>32} {'cv mean [95% corrected]':>30} "
          f"{'agree':>6}")
    for tap, h in by_tap["holdout"].items():
        sh, sc = score(h), score(by_tap["cv"][tap])
        agree = sh["low"] <= sc["high"] and sc["low"] <= sh["high"]
        print(f"{tap:<8} {sh['value']:>10.4f} [{sh['low']:.4f}, {sh['high']:.4f}]"
              f"{'':>6}{sc['value']:>10.4f} [{sc['low']:.4f}, {sc['high']:.4f}]"
              f"{'yes' if agree else 'NO':>8}")


def subset_folder(seed: int, per_class: int, root: Path) -> Path:
    import numpy as np

    rng = np.random.default_rng(seed)
    out = root / f"flowers_{per_class}x_seed{seed}"
    for cls in sorted(p for p in FLOWERS.iterdir() if p.is_dir()):
        files = sorted(f for f in cls.iterdir() if f.suffix.lower() == ".jpg")
        (out / cls.name).mkdir(parents=True, exist_ok=True)
        for f in rng.choice(files, per_class, replace=False):
            os.symlink(f, out / cls.name / f.name)
    return out


def small_subsets(work: Path, per_class: int = 20):
    from pipeline.runs.groups import score

    print(f"\n# subsets of {per_class} images per class, protocol cv (auto picks it there)")
    for seed in (0, 1, 2):
        folder = subset_folder(seed, per_class, work)
        feats, runs = work / f"features{seed}", work / f"runs{seed}"
        t0 = time.perf_counter()
        run(["extract", "--data", str(folder), "--layer", "all", "--runtime", "auto",
             "--no-progress", "--out", str(feats)])
        store = next(feats.glob("*.h5"))
        run(["fit", "--features", str(store), "--layer", "all", "--clf", "logreg", "--runs",
             str(runs)])
        run(["baseline", "--kind", "pixels", "--features", str(store), "--runs", str(runs)])
        recs = records(runs)
        frozen = [r for r in recs if r["kind"] == "frozen"]
        pixels = next(r for r in recs if r["method"] == "pixels")
        best = max(frozen, key=lambda r: score(r)["select"])
        sb, sp = score(best), score(pixels)
        print(f"seed {seed}: {len(pixels['predictions']['y_true'])} images, protocol "
              f"{best['protocol']}; best frozen {best['layer']} {sb['value']:.3f} "
              f"[{sb['low']:.3f}, {sb['high']:.3f}]; pixels {sp['value']:.3f} "
              f"[{sp['low']:.3f}, {sp['high']:.3f}]; best interval above pixel mean: "
              f"{'yes' if sb['low'] > sp['value'] else 'NO'}  ({time.perf_counter() - t0:.0f} s)")
        for r in sorted(frozen, key=lambda r: r["layer"]):
            s = score(r)
            print(f"    {r['layer']:<7} {s['value']:.3f} [{s['low']:.3f}, {s['high']:.3f}]")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, default=Path(tempfile.gettempdir())
                        / "bench_protocol" / "flower_photos_efficientnet_lite0_avg.h5")
    parser.add_argument("--subsets", action="store_true",
                        help="also the 20-images-per-class subsets (three subset seeds)")
    parser.add_argument("--skip-full", action="store_true", help="only the subsets")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    load = os.getloadavg()
    print(f"# bench_protocol: {os.cpu_count()} CPUs; load average at start "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if not args.skip_full:
            compare_protocols(ensure_store(args.store), work)
        if args.subsets:
            small_subsets(work)
    load = os.getloadavg()
    print(f"# load average at end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
