#!/usr/bin/env python
"""The whole ladder under cross-validation on a small off-domain set: per-rung figures
and the total wall time (issue 25: at most 10 minutes on 2 cores, no rung one-class).

Extracts ``--data`` (efficientnet_lite0, its ImageNet weights, every tap) into
``--work/store.h5`` (reused when up to date), then runs :func:`run_ladder` with
``protocol="cv"`` into ``--work/runs-<time>`` and prints, per rung: cross-validated
balanced accuracy and accuracy (out-of-fold), whether a run of it answers one class
(``collapsed``, :func:`pipeline.runs.groups.collapse_of`), its ``fit_seconds``, and for
fine-tuning rungs the seconds spent filling the trunk cache (0 when another rung filled
it).  Then the ladder's wall time, the process's CPU time, and the load average before
and after (the machine may be shared: a load above the core count means the seconds
are not this job's alone), and ``OMP_WAIT_POLICY``: on a shared machine OpenMP's
default busy-waiting threads made a training step 7x slower here (run it with
``OMP_WAIT_POLICY=PASSIVE``, as the figures in docs/performance.md were).
``--json`` writes the figures.

Make the set first with ``benchmarks/make_small_mri.py``.

Example::

    python benchmarks/bench_ladder_small.py --data /work/data/mri250 --work /tmp/bls
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

# the checkout this file is in, not an installed copy: the figures are of this code
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.api import extract  # noqa: E402
from pipeline.configs import LadderConfig  # noqa: E402
from pipeline.runs.records import find_record  # noqa: E402
from pipeline.workflows.ladder import run_ladder  # noqa: E402


def cache_seconds(row, runs_dir) -> float | None:
    """Seconds the runs of a fine-tuning row spent filling the trunk cache (None for
    other rungs)."""
    total = None
    for run_id in row.run_ids:
        ft = getattr(find_record(run_id, runs_dir), "finetune", None)
        if ft is not None:
            total = (total or 0.0) + float(ft.get("cache_seconds") or 0.0)
    return total


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("/work/data/mri250"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_ladder_small"))
    ap.add_argument("--seeds", type=int, default=1, help="seeds per fine-tuning rung")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    store = extract(str(args.data), backbone="efficientnet_lite0", layers=["all"],
                    out=str(args.work / "store.h5"), progress=False)
    runs = args.work / f"runs-{time.strftime('%Y%m%d-%H%M%S')}"
    load0 = os.getloadavg()
    cpu0, t0 = time.process_time(), time.perf_counter()
    rows = run_ladder(LadderConfig(features=str(store.path), protocol="cv", seeds=args.seeds),
                      runs)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    load1 = os.getloadavg()
    # bal.acc: of the out-of-fold predictions; acc: the mean over folds (as the ladder's rows)
    print(f"{'rung':52s} {'bal.acc':>8s} {'acc':>6s} {'collapsed':>9s} {'seconds':>8s} "
          f"{'cache s':>8s}")
    out = []
    for r in rows:
        cache = None if r.reference else cache_seconds(r, runs)
        print(f"{r.label[:52]:52s} {r.balanced_accuracy:8.3f} {r.accuracy:6.3f} "
              f"{'YES' if r.collapsed else 'no':>9s} {r.fit_seconds:8.1f} "
              f"{'' if cache is None else f'{cache:.1f}':>8s}")
        out.append({**r.to_dict(), "cache_seconds": cache})
    import pipeline

    print(f"\ncode: {Path(pipeline.__file__).parent}; OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY', '(unset: busy-waiting OpenMP threads)')}")
    print(f"ladder wall {wall:.0f} s ({wall / 60:.1f} min), CPU {cpu:.0f} s, "
          f"{os.cpu_count()} cores; load average (1 min) {load0[0]:.1f} before, "
          f"{load1[0]:.1f} after; runs in {runs}")
    if args.json:
        args.json.write_text(json.dumps({"rows": out, "wall_seconds": wall, "cpu_seconds": cpu,
                                         "load_before": load0, "load_after": load1,
                                         "runs": str(runs)}, indent=1))


if __name__ == "__main__":
    main()
