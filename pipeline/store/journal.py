"""The journal of an unfinished extraction: one ``.npz`` per completed batch.

Each extracted batch is journalled under ``<store>.partial/`` (written to a
temporary name, then renamed) before the store is assembled, so a killed run
leaves either the old store or the new one, plus a journal that the next run
with the same configuration resumes from.  A journal of another configuration
that holds no batch is discarded (nothing was extracted under it); a batch file
that cannot be read back whole is moved aside with a warning and its images are
extracted again, the other batches kept.
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from pathlib import Path

import numpy as np

from ..errors import StoreError, opt
from ..files import atomic_write

log = logging.getLogger(__name__)

#: Suffix of a batch file moved aside because it could not be read back whole.
DAMAGED = ".damaged"
#: The arrays every batch file holds (besides one ``tap_<name>`` per tap).
BATCH_ARRAYS = ("stamps", "paths", "sha256", "failed_paths", "failed_sha256",
                "failed_reasons")


class DamagedBatch(ValueError):
    """A batch file that is not the complete ``.npz`` :meth:`Journal.write` writes."""


class Journal:
    """Completed batches of an unfinished extraction, one ``.npz`` each.

    The journal directory holds ``config.json`` (the config key it belongs
    to) and ``batch-<seq>.npz`` files with ``paths``, ``sha256``, one array
    per tap, and the failed files of that batch.  A batch file exists only
    once it is complete (written under a temporary name, fsynced, renamed).
    """

    def __init__(self, store_path: Path, key: str, widths: dict | None = None):
        self.dir = Path(str(store_path) + ".partial")
        self.key = key
        self.widths = widths  # tap -> channels of every batch's vectors, when known

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
            try:
                z = read_batch(file, self.widths)
            except DamagedBatch as exc:
                self._set_aside(file, exc)
                continue
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

    def _set_aside(self, file: Path, why: DamagedBatch):
        """Move the damaged batch ``file`` out of the journal's batches (its images are
        extracted again); it goes with the journal once the store is written."""
        aside = file.with_name(file.name + DAMAGED)
        os.replace(file, aside)
        log.warning("%s cannot be read back (%s): moved aside to %s; its images are "
                    "extracted again, the other batches of the journal are kept", file, why,
                    aside.name)

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


def read_batch(file: Path, widths: dict | None = None) -> dict:
    """The arrays of the batch ``file`` (name -> array), checked to be a complete batch as
    :meth:`Journal.write` writes it: every array there, one stamp per row, one vector per
    path in each tap (``widths``: tap -> channels, when known).  :class:`DamagedBatch`
    says what is wrong otherwise (a truncated file, other bytes, an array of Python
    objects: never unpickled)."""
    try:
        with np.load(file, allow_pickle=False) as npz:
            z = {k: npz[k] for k in npz.files}  # each npz[k] access re-reads the array
    except (zipfile.BadZipFile, ValueError, EOFError, KeyError) as exc:
        raise DamagedBatch(f"{type(exc).__name__}: {exc}") from None
    missing = [k for k in BATCH_ARRAYS if k not in z]
    if missing:
        raise DamagedBatch(f"no {', '.join(missing)} array")
    n_ok = len(z["paths"]) if z["paths"].ndim == 1 else -1
    n_failed = len(z["failed_paths"]) if z["failed_paths"].ndim == 1 else -1
    taps = {k[4:]: v for k, v in z.items() if k.startswith("tap_")}
    rows_ok = (min(n_ok, n_failed) >= 0 and z["stamps"].dtype.kind in "iu"
               and z["stamps"].shape == (n_ok + n_failed, 2)
               and all(z[k].shape == (n_failed,) for k in ("failed_sha256", "failed_reasons"))
               and z["sha256"].shape == (n_ok,))
    if not rows_ok:
        raise DamagedBatch("its arrays do not hold one row per image")
    want = widths if widths is not None else {t: v.shape[-1] if v.ndim else 0
                                              for t, v in taps.items()}
    if n_ok and (set(taps) != set(want) or any(
            v.dtype.kind != "f" or v.shape != (n_ok, want[t]) for t, v in taps.items())):
        raise DamagedBatch(f"its taps are not {n_ok} float vectors of "
                           + ", ".join(f"{t} ({c})" for t, c in want.items()))
    return z
