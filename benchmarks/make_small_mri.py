#!/usr/bin/env python
"""A small off-domain set for the ladder: a seeded draw of brain MRI scans, two classes,
imbalanced like issue 25's 254-image medical set (98 / 156).

Source: the figshare brain tumour dataset (Cheng et al. 2017; 512 x 512 grey JPEGs in
``glioma/``, ``meningioma/``, ``pituitary/``).  This release carries no patient ids, so
the draw cannot keep a patient's slices together: several slices of one patient may
fall on both sides of a fold, which flatters every rung alike (the ladder compares
rungs on the same folds; its absolute figures are optimistic).

The files are copied (not linked) into ``--out/<class>/`` under their own names; the
draw is ``numpy.random.default_rng(--seed).choice`` over each class's sorted file list,
so the same arguments give the same set.  Data stays out of the repository.

Example::

    python benchmarks/make_small_mri.py --src /work/data/brain_mri --out /work/data/mri250
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np

#: Images per class: 98 + 152 = 250, the issue's 98 / 156 imbalance (39% minority).
DEFAULT_COUNTS = {"meningioma": 98, "glioma": 152}


def draw(src: Path, counts: dict, seed: int) -> dict:
    """``{class: [file paths]}``: ``counts[class]`` files drawn without replacement."""
    rng = np.random.default_rng(seed)
    out = {}
    for cls, n in counts.items():
        files = sorted(p for p in (src / cls).iterdir() if p.suffix.lower() in (".jpg", ".jpeg",
                                                                                ".png"))
        if n > len(files):
            raise SystemExit(f"{src / cls} holds {len(files)} images; asked for {n}")
        out[cls] = [files[i] for i in sorted(rng.choice(len(files), n, replace=False))]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", type=Path, default=Path("/work/data/brain_mri"))
    ap.add_argument("--out", type=Path, default=Path("/work/data/mri250"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--count", action="append", metavar="CLASS=N",
                    help="images of a class (repeat); default: meningioma=98 glioma=152")
    args = ap.parse_args(argv)
    counts = (dict((c.split("=")[0], int(c.split("=")[1])) for c in args.count)
              if args.count else DEFAULT_COUNTS)
    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"{args.out} exists and is not empty; remove it or pass another --out")
    for cls, files in draw(args.src, counts, args.seed).items():
        (args.out / cls).mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copy2(f, args.out / cls / f.name)
        print(f"{cls}: {len(files)} images -> {args.out / cls}")


if __name__ == "__main__":
    main()
