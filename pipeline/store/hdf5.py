"""The HDF5 feature store: schema, cache key, read views and the atomic writer.

One store file holds the pooled tap vectors of one image folder under one
configuration (backbone, weights, preprocessing, pooling, test-time
augmentation, storage dtype, runtime precision).  Layout (all datasets
row-aligned, rows in manifest order; see docs/formats.md, "HDF5 layout")::

    /paths (N,) str       relative to the data root (absolute for a table's outside files)
    /labels (N,) int64    index into /classes
    /split (N,) int8      0 train, 1 val, 2 test: the stored (default) split
    /folds (N, R) int8    cross-validation fold per repeat (-1: in no fold)
    /given_split (N,) int8  the split the data's layout gives (-1: none); optional
    /groups (N,) str      a label table's group column; optional
    /classes (K,) str
    /sha256, /size, /mtime_ns (N,)   each file's identity when extracted
    /taps/<tap> (N, C)    float32 or float16
    /skipped/paths, /skipped/reasons, /skipped/sha256 (M,)
    attrs: config (JSON), config_key, fingerprint, versions, created, ...

The split is not part of the cache key: labels, groups and the split come from
the data and a seed, and :meth:`FeatureStore.use_split` computes another split
or group rule's partition from the index alone (no forward pass).

A finished file is never edited in place: :func:`write_store` assembles it
into a temporary file and renames it over the old one.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import platform
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..errors import CorruptStoreError, StoreError, WorkbenchError, opt, program
from ..files import atomic_path

log = logging.getLogger(__name__)


FORMAT_VERSION = 1


STR = h5py.string_dtype("utf-8")


#: Datasets every finished store holds (besides one ``taps/<tap>`` per tap).
REQUIRED_DATASETS = ("paths", "labels", "split", "classes", "sha256", "size", "mtime_ns",
                     "skipped/paths", "skipped/sha256", "skipped/reasons")

def replace_hint() -> str:
    """How to get rid of a store that cannot be read."""
    return (f"run `{program()} extract` for its data folder again with --overwrite: it moves "
            "this file aside (<name>.corrupt-<time>) and writes a new store")


@contextmanager
def reading(path):
    """Errors reading the store at ``path`` (damaged, truncated, datasets or attributes
    missing) become :class:`CorruptStoreError` naming the file and how to replace it."""
    try:
        yield
    except WorkbenchError:
        raise
    except (OSError, KeyError, ValueError, TypeError, IndexError) as exc:
        detail = str(exc).strip("'\"") or type(exc).__name__
        raise CorruptStoreError(
            f"feature store {path} is corrupt or incomplete ({detail}); {replace_hint()}",
            param="features") from None


#: Rows per HDF5 chunk of a tap dataset (measured: see benchmarks/store_layout.py).
CHUNK_ROWS = 256


def config_key(config: dict) -> str:
    """SHA-256 of the canonical JSON of everything that shapes the vectors."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def store_tta(config: dict) -> str:
    """The test-time augmentation of a store's ``config`` (its cache key): ``flip``, or
    ``none`` for a plain store and one written before the key could hold it."""
    return config.get("tta", "none")


def library_versions() -> dict:
    import importlib.metadata as md

    versions = {"python": platform.python_version()}
    for pkg in ("torch", "torchvision", "timm", "numpy", "h5py", "scikit-learn", "pillow"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return versions


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class StoreIndex:
    """The per-row identity columns of a store, read without the vectors."""

    paths: list
    labels: np.ndarray
    split: np.ndarray
    sha256: list
    size: np.ndarray
    mtime_ns: np.ndarray
    skipped: dict          # path -> (sha256, reason)


class FeatureStore:
    """Read view of a finished store file.

    ``X(tap, split)`` returns ``(n, C)`` float32; ``y(split)`` the labels;
    ``split`` is ``"train"``, ``"val"``, ``"test"``, a tuple of them, or None
    for every row.
    """

    SPLITS = ("train", "val", "test")

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_file():
            raise StoreError(
                f"feature store {str(self.path)!r} does not exist; run "
                f"`{program()} extract` first or pass {opt('features', 'FILE')}",
                param="features"
            )
        if self.path.suffix.lower() not in STORE_SUFFIXES and not _is_hdf5(self.path):
            raise StoreError(
                f"{self.path} is not an HDF5 feature store (the .h5 file `{program()} "
                f"extract` writes under features/); pass {opt('features', 'FILE')} a store, "
                "or a folder of stores", param="features")
        with reading(self.path):
            with h5py.File(self.path, "r") as f:
                if f.attrs.get("format") != "transfer-workbench-features":
                    raise CorruptStoreError(
                        f"{self.path} is not a feature store written by this tool (no "
                        f"'format' attribute); {replace_hint()}", param="features")
                missing = [d for d in REQUIRED_DATASETS if d not in f]
                self.attrs = {k: _attr(v) for k, v in f.attrs.items()}
                self.taps = list(json.loads(self.attrs["taps"]))
                missing += [f"taps/{t}" for t in self.taps if f"taps/{t}" not in f]
                if missing:
                    raise KeyError(f"dataset {', '.join(missing)} missing")
                self.classes = [s.decode() if isinstance(s, bytes) else s
                                for s in f["classes"][()]]
                self.paths = [s.decode() for s in f["paths"][()]]
                self.labels = f["labels"][()].astype(np.int64)
                self.split_codes = f["split"][()].astype(np.int8)
                self.tap_channels = {t: f[f"taps/{t}"].shape[1] for t in self.taps}
                short = [d for d in ("labels", "split", "sha256", "size", "mtime_ns",
                                     *(f"taps/{t}" for t in self.taps))
                         if f[d].shape[0] != len(self.paths)]
                if short:
                    raise ValueError(f"{', '.join(short)} not row-aligned with "
                                     f"{len(self.paths)} paths")
                self._folds = f["folds"][()].astype(np.int8) if "folds" in f else None
                self.has_stored_folds = self._folds is not None
                self.given_split = (f["given_split"][()].astype(np.int8)
                                    if "given_split" in f else None)
                self.groups = ([g.decode() for g in f["groups"][()]] if "groups" in f
                               else None)
                self.skipped = list(zip(
                    (s.decode() for s in f["skipped/paths"][()]),
                    (s.decode() for s in f["skipped/reasons"][()])))
            self.config = json.loads(self.attrs["config"])
        self.split_info = self._stored_info()

    def __len__(self):
        return len(self.paths)

    @property
    def stored_spec(self):
        """The :class:`~pipeline.data.partition.SplitSpec` of the split stored in the file."""
        from ..data.partition import SplitSpec
        from ..data.split import DEFAULT_FRACTIONS

        fractions = self.attrs.get("split_fractions") or DEFAULT_FRACTIONS
        if isinstance(fractions, str):
            fractions = json.loads(fractions)
        return SplitSpec(seed=int(self.attrs.get("split_seed", 0) or 0),
                         groups=str(self.attrs.get("group_rule") or "none"),
                         fractions=tuple(float(f) for f in fractions))

    def _stored_info(self) -> dict:
        """``split_info`` of the stored split (stores of older versions: seeded, no groups)."""
        info = self.attrs.get("partition")
        info = json.loads(info) if isinstance(info, str) else None
        if not isinstance(info, dict):
            info = {"source": f"stratified split (seed {self.stored_spec.seed})",
                    "test_given": False, "n_groups": None, "notes": []}
        return {**info, **self.stored_spec.to_dict(), "stored": True,
                "sizes": self.split_sizes()}

    def use_split(self, seed=None, groups=None) -> "FeatureStore":
        """Switch this view to the split and folds of ``seed`` and group rule ``groups``
        (None: the stored ones); returns ``self``.

        The stored split is used as it is when both match it; otherwise the partition
        is computed from the paths, labels, given split and groups
        (:func:`pipeline.data.partition.partition`): no vector is read.
        """
        from ..data.partition import SplitSpec, group_ids, partition

        stored = self.stored_spec
        spec = SplitSpec(seed=stored.seed if seed is None else int(seed),
                         groups=stored.groups if groups in (None, "auto") else groups,
                         fractions=stored.fractions)
        if spec == stored:
            return self
        part = partition(self.paths, self.labels, spec, given=self.given_split,
                         groups=group_ids(spec.groups, self.paths, self.groups),
                         n_repeats=self.folds.shape[1])
        if part.source == "given" and spec.seed != stored.seed:
            part.notes.append("the data gives its train, val and test split: another split "
                              "seed changes only the cross-validation folds")
        self.split_codes, self._folds = part.split, part.folds
        self.split_info = {**part.describe(), **spec.to_dict(), "stored": False}
        for note in part.notes:
            log.warning("%s", note)
        return self

    @property
    def row_groups(self) -> list | None:
        """The group of each row under the split in use (None: no groups)."""
        from ..data.partition import group_ids

        rule = self.split_info.get("groups") or "none"
        if getattr(self, "_row_groups", (None,))[0] != rule:
            self._row_groups = (rule, group_ids(rule, self.paths, self.groups))
        return self._row_groups[1]

    def split_class_counts(self) -> dict:
        """``{class: [train, val, test]}`` images of the split in use."""
        return {c: [int(((self.labels == k) & (self.split_codes == code)).sum())
                    for code in range(3)] for k, c in enumerate(self.classes)}

    def index(self) -> StoreIndex:
        """The identity columns of the stored rows (read once, then kept)."""
        if getattr(self, "_index", None) is None:
            with reading(self.path), h5py.File(self.path, "r") as f:
                self._index = StoreIndex(
                    paths=self.paths, labels=self.labels, split=self.split_codes,
                    sha256=[s.decode() for s in f["sha256"][()]], size=f["size"][()],
                    mtime_ns=f["mtime_ns"][()],
                    skipped={p.decode(): (s.decode(), r.decode()) for p, s, r in zip(
                        f["skipped/paths"][()], f["skipped/sha256"][()],
                        f["skipped/reasons"][()])})
        return self._index

    def stored_folds(self) -> dict:
        """``{path: fold ids}`` of the folds stored in the file ({} when it stores none)."""
        if not self.has_stored_folds:
            return {}
        return {p: tuple(int(v) for v in row) for p, row in zip(self.paths, self.folds)}

    def read_rows(self, taps, rows) -> dict:
        """``{tap: (len(rows), C)}`` for increasing row indices ``rows``."""
        return read_vectors(self.path, taps, rows)

    def class_counts(self) -> dict:
        """``{class: images}`` in class order."""
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, counts)}
    @property
    def fingerprint(self) -> str:
        return self.attrs["fingerprint"]

    @property
    def data_root(self) -> Path:
        return Path(self.attrs["data_root"])

    @property
    def tta(self) -> str:
        """The test-time augmentation the vectors were made with (``none``, ``flip``)."""
        return store_tta(self.config)

    def mask(self, split=None) -> np.ndarray:
        if split is None:
            return np.ones(len(self), dtype=bool)
        names = (split,) if isinstance(split, str) else tuple(split)
        codes = []
        for name in names:
            if name not in self.SPLITS:
                raise StoreError(f"unknown split {name!r}; valid: {', '.join(self.SPLITS)}")
            codes.append(self.SPLITS.index(name))
        return np.isin(self.split_codes, codes)

    def X(self, tap: str, split=None) -> np.ndarray:
        if tap not in self.taps:
            from ..errors import UsageError

            raise UsageError(
                f"tap {tap!r} is not in {self.path.name}; it holds {', '.join(self.taps)} "
                f"(run `{program()} extract --layer {tap}` to add it)", param="layer"
            )
        idx = np.flatnonzero(self.mask(split))
        with reading(self.path), h5py.File(self.path, "r") as f:
            return f[f"taps/{tap}"][()][idx].astype(np.float32)

    def iter_rows(self, tap: str, split=None, block: int = 4096):
        """Yield ``(X_block, y_block)`` in order, ``block`` rows at a time (bounded memory)."""
        mask = self.mask(split)
        with reading(self.path), h5py.File(self.path, "r") as f:
            dset = f[f"taps/{tap}"]
            for start in range(0, len(self), block):
                stop = min(start + block, len(self))
                m = mask[start:stop]
                if m.any():
                    yield dset[start:stop][m].astype(np.float32), self.labels[start:stop][m]

    def iter_blocks(self, tap: str, starts, block: int = CHUNK_ROWS):
        """Yield ``(start, X)`` with rows ``[start, start + block)`` as ``(b, C)`` float32,
        for each of ``starts`` in the order given (e.g. shuffled, for streaming heads).

        Only one block is read at a time; blocks aligned to ``CHUNK_ROWS`` read
        whole HDF5 chunks.
        """
        with reading(self.path), h5py.File(self.path, "r") as f:
            dset = f[f"taps/{tap}"]
            for start in starts:
                start = int(start)
                yield start, dset[start:start + block].astype(np.float32)

    @property
    def folds(self) -> np.ndarray:
        """Cross-validation fold ids ``(n_images, n_repeats)`` int8, fixed at extraction.

        A store written before folds were stored gets them computed the same
        way from its paths, labels and split seed (re-running ``extract``
        stores them).
        """
        if self._folds is None:
            from ..data.split import assign_folds

            log.info("%s has no stored cross-validation folds (written by an older version); "
                     "computing them from its paths (re-run extract to store them)", self.path)
            self._folds = assign_folds(self.paths, self.labels,
                                       seed=int(self.attrs.get("split_seed", 0) or 0))
        return self._folds

    def cv_splits(self):
        """``[(repeat, fold, train rows, test rows)]`` of the stored repeated K-fold, rows
        as index arrays into the store."""
        folds = self.folds
        out = []
        for r in range(folds.shape[1]):
            for k in range(int(folds[:, r].max()) + 1):
                test = np.flatnonzero(folds[:, r] == k)
                if len(test):  # rows in no fold (-1: a given test split) never train
                    out.append((r, k, np.flatnonzero((folds[:, r] != k) & (folds[:, r] >= 0)),
                                test))
        return out

    def xy(self, tap: str, split=None) -> tuple[np.ndarray, np.ndarray]:
        """``(X (n, C) float32, y (n,) int64)`` of ``tap`` on ``split`` (None: every row)."""
        return self.X(tap, split), self.y(split)

    def y(self, split=None) -> np.ndarray:
        return self.labels[self.mask(split)]

    def rel_paths(self, split=None) -> list:
        return [p for p, m in zip(self.paths, self.mask(split)) if m]

    def split_sizes(self) -> dict:
        return {name: int((self.split_codes == i).sum()) for i, name in enumerate(self.SPLITS)}


class RowReader:
    """Tap vectors of several store files by ``(file k, row)``, one cached block per file.

    Rows of each file must be asked for in increasing order (a merge in manifest
    order does), so memory is one block per file, not N rows.  A context manager:
    the files are open inside ``with``.
    """

    def __init__(self, paths, taps, block: int = 2 * CHUNK_ROWS):
        self.paths, self.taps, self.block = [Path(p) for p in paths], list(taps), block
        self.start = [None] * len(self.paths)
        self.data = [None] * len(self.paths)
        self.files = []

    def __enter__(self):
        from contextlib import ExitStack

        self._stack = ExitStack()
        self.files = [self._stack.enter_context(h5py.File(p, "r")) for p in self.paths]
        return self

    def __exit__(self, *exc):
        self._stack.close()
        self.files = []

    def dtype(self, k: int) -> str:
        """The storage dtype of file ``k``'s vectors."""
        return str(self.files[k][f"taps/{self.taps[0]}"].dtype)

    def get(self, k: int, row: int) -> dict:
        start = row - row % self.block
        if self.start[k] != start:
            f = self.files[k]
            self.data[k] = {t: f[f"taps/{t}"][start:start + self.block] for t in self.taps}
            self.start[k] = start
        return {t: self.data[k][t][row - start] for t in self.taps}


def open_store(path, split_seed=None, groups=None) -> FeatureStore:
    """The store at ``path`` seen with the split of ``split_seed`` and group rule ``groups``
    (None: the stored ones; :meth:`FeatureStore.use_split`)."""
    return FeatureStore(path).use_split(split_seed, groups)


#: File suffixes of a store; a damaged file with one is "corrupt" (extract --overwrite moves
#: it aside), any other file that is not HDF5 is "not a feature store" (never moved).
STORE_SUFFIXES = (".h5", ".hdf5")


def _is_hdf5(path: Path) -> bool:
    """Whether ``path`` starts with the HDF5 signature (an unreadable file: True, so that
    opening it reports the real error)."""
    try:
        return bool(h5py.is_hdf5(path))
    except OSError:
        return True


def _attr(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


@dataclass
class StoreContents:
    """What :func:`write_store` writes into a store.

    ``rows`` is a list of dicts (path, label, split, sha256, size, mtime_ns,
    vectors; optionally folds, given, group) in final order, where ``vectors`` is
    a callable returning ``{tap: (C,) array}``; ``taps`` maps tap name -> channels;
    ``skipped`` is a list of (path, sha256, reason); ``config`` is the cache key's
    configuration, ``attrs`` the descriptive attributes (provenance).
    """

    config: dict
    attrs: dict
    classes: list
    rows: list
    skipped: list
    taps: dict
    dtype: str = "float32"


def write_store(path: Path, contents: StoreContents, compression: str | None = None) -> str:
    """Write a finished store of ``contents`` atomically; returns its fingerprint.

    Vectors are written in blocks so memory stays bounded by the block, not by N.
    """
    config, rows, skipped = contents.config, contents.rows, contents.skipped
    fingerprint = store_fingerprint(config, rows)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["format"] = "transfer-workbench-features"
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["config"] = json.dumps(config, sort_keys=True)
        f.attrs["config_key"] = config_key(config)
        f.attrs["fingerprint"] = fingerprint
        f.attrs["taps"] = json.dumps(list(contents.taps))
        f.attrs["n_images"] = len(rows)
        f.attrs["n_skipped"] = len(skipped)
        for k, v in contents.attrs.items():
            f.attrs[k] = v if isinstance(v, (str, int, float)) else json.dumps(v)
        _write_index(f, contents.classes, rows, skipped)
        _write_taps(f, rows, contents.taps, contents.dtype, compression)
    return fingerprint


def store_fingerprint(config: dict, rows) -> str:
    """SHA-256 of the configuration and every row's identity and label (not its split:
    a run record keeps the identity of the split it used, ``split_fingerprint``)."""
    digest = hashlib.sha256(config_key(config).encode())
    for r in rows:
        digest.update(f"{r['path']}\0{r['sha256']}\0{r['label']}\n".encode())
    return digest.hexdigest()


def _strings(values):
    return np.asarray(list(values), dtype=object)


def _write_index(f, classes, rows, skipped):
    """The row-aligned identity columns and the list of skipped files."""
    f.create_dataset("classes", data=_strings(classes), dtype=STR)
    f.create_dataset("paths", data=_strings(r["path"] for r in rows), dtype=STR)
    f.create_dataset("labels", data=np.asarray([r["label"] for r in rows], dtype=np.int64))
    split = f.create_dataset("split", data=np.asarray([r["split"] for r in rows], dtype=np.int8))
    split.attrs["codes"] = json.dumps({"0": "train", "1": "val", "2": "test"})
    f.create_dataset("sha256", data=_strings(r["sha256"] for r in rows), dtype=STR)
    f.create_dataset("size", data=np.asarray([r["size"] for r in rows], dtype=np.int64))
    f.create_dataset("mtime_ns", data=np.asarray([r["mtime_ns"] for r in rows], dtype=np.int64))
    if rows and "given" in rows[0]:
        given = f.create_dataset("given_split",
                                 data=np.asarray([r["given"] for r in rows], dtype=np.int8))
        given.attrs["codes"] = json.dumps({"-1": "none", "0": "train", "1": "val", "2": "test"})
    if rows and "group" in rows[0]:
        f.create_dataset("groups", data=_strings(r["group"] for r in rows), dtype=STR)
    if rows and "folds" in rows[0]:
        folds = f.create_dataset("folds", data=np.stack([np.asarray(r["folds"], dtype=np.int8)
                                                         for r in rows]))
        folds.attrs["n_folds"] = int(folds[()].max()) + 1
    g = f.create_group("skipped")
    for k, name in enumerate(("paths", "sha256", "reasons")):
        g.create_dataset(name, data=_strings(s[k] for s in skipped), dtype=STR)


def _write_taps(f, rows, taps: dict, dtype: str, compression, block: int = 1024):
    """One ``(N, C)`` dataset per tap, filled ``block`` rows at a time."""
    n = len(rows)
    tg = f.create_group("taps")
    dsets = {tap: tg.create_dataset(tap, shape=(n, channels), dtype=dtype,
                                    chunks=(max(1, min(CHUNK_ROWS, n)), channels) if n else None,
                                    compression=compression)
             for tap, channels in taps.items()}
    for start in range(0, n, block):
        part = rows[start:start + block]
        vecs = [r["vectors"]() for r in part]
        for tap, dset in dsets.items():
            dset[start:start + len(part)] = np.stack([v[tap] for v in vecs]).astype(dtype)


def read_vectors(path: Path, tap_names, rows: np.ndarray) -> dict:
    """``{tap: (len(rows), C)}`` for increasing row indices of an existing store."""
    with reading(path), h5py.File(path, "r") as f:
        return {t: f[f"taps/{t}"][()][rows] for t in tap_names}


def write_arrays(path: Path, arrays: dict):
    """A plain HDF5 file of named arrays (``{name: array}``), not a feature store: what
    the naive extraction of ``bench extract`` writes, as a course notebook would."""
    with h5py.File(path, "w") as f:
        for name, array in arrays.items():
            f.create_dataset(name, data=array)
