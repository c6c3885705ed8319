#!/usr/bin/env python
"""The leakage check on planted copies: which kinds of copy it finds, and what else it flags.

Into a work folder that links the class folders of ``--data``, plant one copy
each of ``6 x --per-kind`` different random photos (seeded), ``--per-kind`` of
each kind, in a class folder ``planted/``:

- ``q75``: saved again as JPEG quality 75;
- ``r80`` / ``r50``: resized to 80% / 50% of its sides (bicubic), JPEG quality 80;
- ``b10``: 10% brighter, JPEG quality 90;
- ``c02`` / ``c05``: cropped by 2% / 5% on every side, JPEG quality 90.

Then extract efficientnet_lite0 ``layer4`` (ImageNet weights) and run
:func:`pipeline.store.leakage.find_duplicates` and, for comparison, the rule
it replaced (cosine >= 0.95 of the L2-normalised vectors).  Prints, per kind,
how many copies were paired with their original, the near pairs without a
planted file (the folder's own), and the share of all pairs flagged.

Example::

    python benchmarks/bench_leakage.py --data ../shared/datasets/flower_photos
    python benchmarks/bench_leakage.py --data ../shared/datasets/brain_mri_figshare
"""

from __future__ import annotations

import argparse
import logging
import random
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from pipeline.extraction.job import ExtractConfig, run_extract
from pipeline.store.hdf5 import FeatureStore
from pipeline.store.leakage import find_duplicates, normalised, store_sha256, summary_line

log = logging.getLogger("bench_leakage")

KINDS = ("q75", "r80", "r50", "b10", "c02", "c05")

#: The rule the adaptive one replaced: one cosine for every store.
OLD_THRESHOLD = 0.95


def plant(data: Path, work: Path, per_kind: int, seed: int) -> dict:
    """Link ``data``'s class folders into ``work`` and write the copies into
    ``work/planted``; returns ``{copy path: (original path, kind)}`` (relative)."""
    work.mkdir(parents=True, exist_ok=True)
    for cls in sorted(p for p in data.iterdir() if p.is_dir() and not p.name.startswith(".")):
        link = work / cls.name
        if not link.exists():
            link.symlink_to(cls.resolve(), target_is_directory=True)
    photos = sorted(p for p in data.glob("*/*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    picked = random.Random(seed).sample(photos, per_kind * len(KINDS))
    out = work / "planted"
    out.mkdir(exist_ok=True)
    planted = {}
    for k, src in enumerate(picked):
        kind = KINDS[k % len(KINDS)]
        name = f"{k:04d}_{kind}.jpg"
        with Image.open(src) as im:
            im = im.convert("RGB")
            w, h = im.size
            if kind == "q75":
                im.save(out / name, quality=75)
            elif kind in ("r80", "r50"):
                f = int(kind[1:]) / 100
                im.resize((round(w * f), round(h * f)), Image.BICUBIC).save(out / name,
                                                                             quality=80)
            elif kind == "b10":
                ImageEnhance.Brightness(im).enhance(1.1).save(out / name, quality=90)
            else:
                c = int(kind[1:]) / 100
                im.crop((round(w * c), round(h * c), round(w * (1 - c)), round(h * (1 - c)))
                        ).save(out / name, quality=90)
        planted[f"planted/{name}"] = (str(src.relative_to(data)), kind)
    return planted


def old_rule_pairs(store) -> set:
    """Path pairs of different files with cosine >= OLD_THRESHOLD at layer4, blockwise."""
    Z = normalised(store, "layer4")
    sha = store_sha256(store)
    out = set()
    for start in range(0, len(Z), 512):
        rows, cols = np.nonzero(Z[start:start + 512] @ Z.T >= OLD_THRESHOLD)
        for r, c in zip(rows + start, cols):
            if c > r and sha[r] != sha[c]:
                out.add((store.paths[r], store.paths[c]))
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, type=Path, help="image folder, one sub-folder "
                        "per class")
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a "
                        "new temporary folder)")
    parser.add_argument("--per-kind", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_leakage_"))
    planted = plant(args.data, work / "data", args.per_kind, args.seed)
    summary = run_extract(ExtractConfig(data=str(work / "data"), layers=("layer4",),
                                        out=str(work / "features"), progress=False))
    store = FeatureStore(summary.path)
    t = time.perf_counter()
    found = find_duplicates(store)
    seconds = time.perf_counter() - t
    new = {tuple(sorted((p["a"]["path"], p["b"]["path"]))) for p in found["pairs"]
           if p["kind"] == "near"}
    old = old_rule_pairs(store)
    n = len(store)
    all_pairs = n * (n - 1) // 2
    print(f"{n} images ({len(planted)} planted copies), {all_pairs:,} pairs; "
          f"the check took {seconds:.1f} s; work folder {work}")
    print(summary_line(found))
    print(f"{'kind':<6}{'adaptive rule':>16}{'cosine >= 0.95':>16}")
    for kind in KINDS:
        copies = [(c, o) for c, (o, k) in planted.items() if k == kind]
        hit = [sum(tuple(sorted(pair)) in rule for pair in copies) for rule in (new, old)]
        print(f"{kind:<6}{hit[0]:>13}/{len(copies)}{hit[1]:>13}/{len(copies)}")
    involved = set(planted) | {o for o, _ in planted.values()}
    for name, rule in (("adaptive rule", new), ("cosine >= 0.95", old)):
        own = sum(1 for a, b in rule if a not in involved and b not in involved)
        print(f"{name}: {len(rule):,} near pairs = {len(rule) / all_pairs:.4%} of all pairs; "
              f"{own:,} between images neither planted nor an original of a copy")


if __name__ == "__main__":
    main()
