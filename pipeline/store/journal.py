"""The journal of an unfinished extraction: one ``.npz`` per completed batch.

Each extracted batch is journalled under ``<store>.partial/`` (written to a
temporary name, then renamed) before the store is assembled, so a killed run
leaves either the old store or the new one, plus a journal that the next run
with the same configuration resumes from.  A journal of another configuration
that holds no batch is discarded (nothing was extracted under it).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ..errors import StoreError, opt
from ..files import atomic_write

log = logging.getLogger(__name__)


class Journal:
    """Completed batches of an unfinished extraction, one ``.npz`` each.

    The journal directory holds ``config.json`` (the config key it belongs
    to) and ``batch-<seq>.npz`` files with ``paths``, ``sha256``, one array
    per tap, and the failed files of that batch.  A batch file exists only
    once it is complete (written under a temporary name, fsynced, renamed).
    """

    def __init__(self, store_path: Path, key: str):
        self.dir = Path(str(store_path) + ".partial")
        self.key = key

    def open(self, overwrite: bool = False):
        cfg = self.dir / "config.json"
        if self.dir.exists():
            found = json.loads(cfg.read_text()).get("config_key") if cfg.exists() else None
            if found != self.key:
                if not self.batches():  # e.g. a run refused before its first batch
                    log.info("discarding %s: it holds no extracted batch", self.dir)
                elif not overwrite:
                    raise StoreError(
                        f"{self.dir} holds an interrupted extraction with a different "
                        "configuration; rerun that configuration to finish it, or pass "
                        f"{opt('overwrite', 'True')} to discard it", param="overwrite"
                    )
                self.discard()
        self.dir.mkdir(parents=True, exist_ok=True)
        if not cfg.exists():
            with atomic_write(cfg) as fh:
                fh.write(json.dumps({"config_key": self.key}).encode())
        return self

    def batches(self):
        return sorted(self.dir.glob("batch-*.npz"))

    def done(self, stamps: dict):
        """Completed work whose file is unchanged since: ``(rows, failed)``.

        ``rows`` maps path -> (sha256, {tap: (C,) vector}); ``failed`` maps
        path -> (sha256, reason).  ``stamps`` maps path -> (size, mtime_ns)
        now; an entry whose file has changed since it was journalled is dropped.
        """
        rows, failed = {}, {}
        for file in self.batches():
            with np.load(file, allow_pickle=False) as npz:
                z = {k: npz[k] for k in npz.files}  # each npz[k] access re-reads the array
                taps = [k[4:] for k in z if k.startswith("tap_")]
                n_ok = len(z["paths"])
                stamp = z["stamps"]
                for i, p in enumerate(z["paths"]):
                    if stamps.get(str(p)) == tuple(int(v) for v in stamp[i]):
                        rows[str(p)] = (str(z["sha256"][i]), {t: z["tap_" + t][i] for t in taps})
                for k, (p, s, r) in enumerate(zip(z["failed_paths"], z["failed_sha256"],
                                                  z["failed_reasons"])):
                    if stamps.get(str(p)) == tuple(int(v) for v in stamp[n_ok + k]):
                        failed[str(p)] = (str(s), str(r))
        return rows, failed

    def write(self, seq: int, paths, shas, features: dict, failures, stamps):
        """Journal one batch: rows ``paths`` then ``failures``, with ``stamps``
        (size, mtime_ns) of each."""
        arrays = {
            "stamps": np.asarray(stamps, dtype=np.int64).reshape(-1, 2),
            "paths": np.asarray(paths, dtype=str),
            "sha256": np.asarray(shas, dtype=str),
            "failed_paths": np.asarray([f[0] for f in failures], dtype=str),
            "failed_sha256": np.asarray([f[1] for f in failures], dtype=str),
            "failed_reasons": np.asarray([f[2] for f in failures], dtype=str),
        }
        for tap, arr in features.items():
            arrays["tap_" + tap] = arr
        with atomic_write(self.dir / f"batch-{seq:08d}.npz") as fh:
            np.savez(fh, **arrays)

    def next_seq(self) -> int:
        batches = self.batches()
        return int(batches[-1].stem.split("-")[1]) + 1 if batches else 0

    def discard(self):
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)
