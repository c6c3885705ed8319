#!/usr/bin/env python
"""Chunking and compression of the tap datasets, measured on real features.

Reads the taps of a finished store (e.g. lite0 over the 3,670 flowers) and
rewrites them the way ``pipeline.store.hdf5.write_store`` does (blocks of 1,024
rows) under each layout: no compression, lzf, gzip level 1 and 4; chunks of
64, 256 or 1,024 rows or contiguous; float32 and float16.  For each it
reports the file size, the write time (including fsync) and three reads:
every row of every tap (what the heads do), the blocks of ``iter_rows``, and
200 single rows at random (what a merge or a lookup does).  Best of 3.

Example::

    python cli.py extract --data ../shared/datasets/flower_photos --runtime auto
    python benchmarks/store_layout.py features/flower_photos_efficientnet_lite0_avg.h5
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

LAYOUTS = [(comp, chunk) for comp in (None, "lzf", "gzip-1", "gzip-4")
           for chunk in (64, 256, 1024, None)]


def _compression(name):
    if name is None:
        return {}
    if name.startswith("gzip"):
        return {"compression": "gzip", "compression_opts": int(name.split("-")[1])}
    return {"compression": name}


def write(path, taps: dict, dtype, comp, chunk_rows):
    with h5py.File(path, "w") as f:
        g = f.create_group("taps")
        for tap, arr in taps.items():
            n, c = arr.shape
            kwargs = _compression(comp)
            chunks = (min(chunk_rows, n), c) if chunk_rows else None
            if kwargs and chunks is None:  # compression needs chunks
                return False
            dset = g.create_dataset(tap, shape=(n, c), dtype=dtype, chunks=chunks, **kwargs)
            for start in range(0, n, 1024):
                dset[start:start + 1024] = arr[start:start + 1024].astype(dtype)
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())
    return True


def read_all(path, taps):
    with h5py.File(path, "r") as f:
        for tap in taps:
            f[f"taps/{tap}"][()].astype(np.float32)


def read_blocks(path, taps, block=4096):
    with h5py.File(path, "r") as f:
        for tap in taps:
            d = f[f"taps/{tap}"]
            for start in range(0, d.shape[0], block):
                d[start:start + block].astype(np.float32)


def read_random(path, taps, rows):
    with h5py.File(path, "r") as f:
        dsets = [f[f"taps/{tap}"] for tap in taps]
        for r in rows:
            for d in dsets:
                d[r]


def best_of(fn, repeat=3):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("store", help="A finished feature store (.h5) to take real features from.")
    args = p.parse_args(argv)
    with h5py.File(args.store, "r") as f:
        taps = {t: f[f"taps/{t}"][()].astype(np.float32) for t in f["taps"]}
    n = next(iter(taps.values())).shape[0]
    rows = np.random.default_rng(0).choice(n, size=min(200, n), replace=False)
    print(f"# {args.store}: {n} rows, taps " +
          ", ".join(f"{t} ({a.shape[1]})" for t, a in taps.items()))
    print("| dtype | compression | chunk rows | size MiB | write ms | read all ms | "
          "read blocks ms | 200 random rows ms |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "layout.h5"
        for dtype in ("float32", "float16"):
            for comp, chunk in LAYOUTS:
                if comp and chunk is None:
                    continue
                w = best_of(lambda dtype=dtype, comp=comp, chunk=chunk:
                            write(path, taps, dtype, comp, chunk))
                size = path.stat().st_size / 2**20
                ra = best_of(lambda: read_all(path, taps))
                rb = best_of(lambda: read_blocks(path, taps))
                rr = best_of(lambda: read_random(path, taps, rows))
                print(f"| {dtype} | {comp or 'none'} | {chunk or 'contiguous'} | {size:.1f} | "
                      f"{w * 1e3:.0f} | {ra * 1e3:.0f} | {rb * 1e3:.0f} | {rr * 1e3:.0f} |")


if __name__ == "__main__":
    main()
