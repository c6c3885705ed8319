"""Run records: one JSON file per fit, baseline or fine-tune run, read and written here.

A run record is the only thing the report reads.  In memory it is a
:class:`RunRecord`, a dataclass with a typed field per key of the JSON file and
its :class:`~pipeline.runs.protocol.Protocol` (``protocol``, ``protocol_reason``);
:meth:`RunRecord.from_dict` reads and validates a parsed record (keys this
version does not know are kept in ``extra`` and written back), and
:meth:`RunRecord.to_dict` writes the JSON layout.  :func:`new_record` and
:func:`new_cv_record` build one from what a fit reports (a :class:`RunInfo`) and the
store (identity, provenance, split, scores, predictions); :func:`save_record` writes
it under ``reports/runs/`` without ever overwriting; :func:`load_records` and
:func:`find_record` read them back.

Schema (``schema: 1``; docs/formats.md, "Run records", documents every field):
``run_id, created, kind (frozen|baseline|finetune), method, label, backbone,
layer, weights, features {path (absolute since this version), fingerprint, tta (flip
stores only)}, data_root, classes,
split_sizes, split_seed, split {seed, groups, fractions, source, test_given, n_groups, sizes,
notes, stored}, split_fingerprint, seed, group, setup, hyperparameters, search,
metrics {val, test} (cv: {oof}), predictions {paths, y_true, y_pred, proba}, cv (cv runs),
fit_seconds, trainable_params, history, model_file, command, versions,
machine, protocol, protocol_reason``, the selection fields and the details of a kind
(``final_model``, ``skipped_images``, ``finetune``, ``augmentation_preview``) and
``calibration`` (:func:`pipeline.calibration.calibration_block`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import secrets
import sys
import time
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from ..configs import DEFAULT_RUNS_DIR
from ..errors import StoreError, opt, program
from ..files import atomic_path, atomic_write
from .protocol import PROTOCOL_TYPES, CrossValidation, Holdout, Protocol, protocol_named
from .values import value_problems

log = logging.getLogger(__name__)

SCHEMA = 1


def split_fingerprint(test_paths) -> str:
    """Identity of a test set: SHA-256 of its sorted relative paths."""
    return hashlib.sha256("\n".join(sorted(test_paths)).encode()).hexdigest()


def machine_info() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor(),
            "cpus": os.cpu_count(), "python": platform.python_version()}


def make_run_id(method: str, layer: str | None = None) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    parts = [stamp, method] + ([layer] if layer else []) + [secrets.token_hex(3)]
    return "-".join(parts)


#: The fields every record has (the rest have defaults); a file without one of them,
#: whatever its schema, is not read (:func:`record_problem`).
REQUIRED_FIELDS = ("run_id", "kind", "metrics", "predictions")
#: The JSON type of each block the code reads into; ``null`` reads as empty.
BLOCK_TYPES = {"features": dict, "split": dict, "split_sizes": dict, "classes": list,
               "hyperparameters": dict, "history": list, "predictions": dict,
               "versions": dict, "machine": dict}
#: The order of the keys in the file (schema 1); keys a record reads that are not here are
#: kept in ``extra`` and written after them.
LAYOUT = ("schema", "run_id", "created", "kind", "method", "label", "backbone", "layer",
          "weights", "features", "data_root", "dataset", "layout", "classes", "split_sizes",
          "split_seed", "split", "seed", "group", "setup", "hyperparameters", "search",
          "fit_seconds", "trainable_params", "history", "model_file", "command", "versions",
          "machine", "protocol", "split_fingerprint", "cv", "metrics", "predictions", "final_model",
          "skipped_images", "finetune", "protocol_reason", "selection_metric",
          "selection_metric_reason", "class_weight", "class_weight_reason", "class_counts",
          "augmentation_preview", "calibration")
#: Keys written only when set (a run of another kind or protocol, or an older version,
#: has none).
OPTIONAL = frozenset({"schema", "setup", "cv", "final_model", "skipped_images", "finetune",
                      "selection_metric", "selection_metric_reason", "class_weight",
                      "class_weight_reason", "class_counts", "augmentation_preview",
                      "calibration"})


@dataclass(kw_only=True, eq=False)
class RunRecord(Mapping):
    """One run: what a fit, baseline or fine-tune measured, with its full configuration
    and provenance.  Read from JSON with :meth:`from_dict` (validated), written with
    :meth:`to_dict` (the same keys, schema 1).

    ``protocol`` is the :class:`~pipeline.runs.protocol.Protocol` the run was judged
    under (its ``why`` is the file's ``protocol_reason``); ``metrics`` maps a block
    (``val``, ``test``; ``oof`` under cv) to its metrics dict; nested blocks
    (``features``, ``split``, ``predictions``, ``cv``, ``hyperparameters``, ...) stay
    dicts as in the file.  ``extra`` keeps keys this version does not know; ``file`` is
    where the record was read from (not written).

    The record reads like the JSON object too (``record["metrics"]``,
    ``record.get("seed")``: :meth:`to_dict`'s keys), for notebooks and scripts written
    against the files; the package itself reads the attributes.
    """

    run_id: str
    kind: str
    metrics: dict
    predictions: dict
    protocol: Protocol = field(default_factory=Holdout)
    schema: int | None = SCHEMA
    created: str = ""
    method: str | None = None
    label: str | None = None
    backbone: str | None = None
    layer: str | None = None
    weights: str | None = None
    features: dict = field(default_factory=dict)
    data_root: str | None = None
    dataset: str | None = None
    layout: str | None = None
    classes: list = field(default_factory=list)
    split_sizes: dict = field(default_factory=dict)
    split_seed: int | None = None
    split: dict = field(default_factory=dict)
    split_fingerprint: str | None = None
    seed: int | None = None
    group: str | None = None
    setup: dict | None = None
    hyperparameters: dict = field(default_factory=dict)
    search: list = field(default_factory=list)
    fit_seconds: float = 0.0
    trainable_params: int | None = None
    history: list = field(default_factory=list)
    model_file: str | None = None
    command: str = ""
    versions: dict = field(default_factory=dict)
    machine: dict = field(default_factory=dict)
    cv: dict | None = None
    final_model: str | None = None
    skipped_images: list | None = None
    finetune: dict | None = None
    selection_metric: str | None = None
    selection_metric_reason: str | None = None
    class_weight: str | None = None
    class_weight_reason: str | None = None
    class_counts: dict | None = None
    augmentation_preview: dict | None = None
    calibration: dict | None = None
    extra: dict = field(default_factory=dict)
    file: str | None = None

    # ---------------------------------------------------------------- reading, writing

    @classmethod
    def from_dict(cls, data: Mapping, file=None) -> RunRecord:
        """The record in ``data`` (a parsed JSON object), validated.

        Raises :class:`StoreError` naming the file (``file``, else ``data["_file"]``,
        else the run id) and every field it lacks, holds in the wrong type or holds a
        value the report cannot use (a score that is nan or outside [0, 1], a label
        beyond the classes: :func:`record_problem`).  Keys this version does not know are kept in
        ``extra``; a ``null`` block reads as an empty one.
        """
        file = file if file is not None else data.get("_file")
        problem = record_problem(data)
        if problem:
            # a file says where it is and of which schema; a record in memory, its id
            note = _schema_note(data.get("schema")) if file is not None else None
            where = str(file) if file is not None else repr(data.get("run_id", "(no run_id)"))
            raise StoreError(f"run record {where}{f' ({note})' if note else ''}: {problem}")
        known, extra = {}, {}
        for key, value in data.items():
            if key in _NOT_FIELDS:
                continue
            if key in _FIELDS:
                known[key] = BLOCK_TYPES[key]() if value is None and key in BLOCK_TYPES \
                    else value
            else:
                extra[key] = value
        known.setdefault("schema", None)     # read as it is: a file without one has none
        protocol = protocol_named(data.get("protocol", Holdout.name), data.get("protocol_reason"))
        return cls(**known, protocol=protocol, extra=extra,
                   file=str(file) if file is not None else None)

    def to_dict(self) -> dict:
        """The record as its JSON object: the keys of :data:`LAYOUT` in order (optional
        ones when set), then ``extra``."""
        out = {}
        for key in LAYOUT:
            if key == "protocol":
                out[key] = self.protocol.name
            elif key == "protocol_reason":
                if self.protocol.why is not None:
                    out[key] = self.protocol.why
            else:
                value = getattr(self, key)
                if value is not None or key not in OPTIONAL:
                    out[key] = value
        out.update(self.extra)
        return out

    def update(self, values: Mapping = (), /, **more) -> None:
        """Set fields by their JSON keys (``record.update(selection.record_fields())``):
        ``protocol`` takes a protocol or its name, ``protocol_reason`` its ``why``; a key
        that is no field goes to ``extra``."""
        for key, value in {**dict(values), **more}.items():
            if key == "protocol":
                self.protocol = value if isinstance(value, Protocol) else \
                    protocol_named(value, self.protocol.why)
            elif key == "protocol_reason":
                self.protocol = protocol_named(self.protocol.name, value)
            elif key == "_file":
                self.file = value
            elif key in _FIELDS:
                setattr(self, key, value)
            else:
                self.extra[key] = value

    # ---------------------------------------------------------------- the JSON view

    def __getitem__(self, key):
        return self.to_dict()[key]

    def __iter__(self):
        return iter(self.to_dict())

    def __len__(self):
        return len(self.to_dict())

    # ---------------------------------------------------------------- what it scored

    @property
    def scored_metrics(self) -> dict:
        """The metrics of the scored predictions: the test split (holdout) or the
        out-of-fold predictions of repeat 0 (cv)."""
        return self.metrics[self.protocol.scored]

    def class_names(self) -> list:
        """The names of the classes, one per row of the scored confusion matrix: ``classes``,
        or for a record without them (written by hand, or by an older version) the names
        its per-class scores give, else the indices as text (``"0"``, ``"1"``, ...)."""
        if self.classes:
            return list(self.classes)
        m = self.scored_metrics
        size = len(m.get("confusion_matrix") or [])
        named = list(m.get("per_class") or {})
        return named if len(named) == size else [str(i) for i in range(size)]

    def scored_labels(self):
        """``(y_true, y_pred)`` ``(n,)`` of the scored predictions (empty without them)."""
        p = self.predictions
        return (np.asarray(p.get("y_true") or [], dtype=np.int64),
                np.asarray(p.get("y_pred") or [], dtype=np.int64))

    @property
    def schema_note(self) -> str | None:
        """None for a record of this schema, else how it differs."""
        return _schema_note(self.schema)

    def __repr__(self):
        return (f"RunRecord({self.run_id!r}, {self.kind}, {self.label!r}, "
                f"protocol={self.protocol.name})")


_FIELDS = frozenset(f.name for f in fields(RunRecord)) - {"extra", "file", "protocol"}
_NOT_FIELDS = frozenset({"protocol", "protocol_reason", "_file"})


def _json_types(name: str, hint) -> tuple:
    """The Python types field ``name`` (annotated ``hint``) may be read from JSON as: those
    of its annotation (``str | None``: a string or null), null too for a block
    (:data:`BLOCK_TYPES`: it reads as empty)."""
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    return tuple(args) + ((type(None),) if name in BLOCK_TYPES else ())


#: The JSON types of every field (from the annotations of :class:`RunRecord`).
FIELD_TYPES = {name: _json_types(name, hint)
               for name, hint in typing.get_type_hints(RunRecord).items() if name in _FIELDS}
_TYPE_WORDS = {str: "string", int: "integer", float: "number", bool: "boolean",
               dict: "object", list: "array"}


def _is_a(value, allowed: tuple) -> bool:
    """Whether the JSON ``value`` is of a type ``allowed``: a boolean is no integer nor
    number, an integer is a number too."""
    if isinstance(value, bool):
        return bool in allowed
    if isinstance(value, (int, np.integer)):      # numpy's too: a record built in memory
        return int in allowed or float in allowed
    if isinstance(value, np.floating):
        return float in allowed
    return isinstance(value, allowed)


def _type_words(allowed: tuple) -> str:
    """``a JSON string``: the JSON types ``allowed`` in words (null left unsaid)."""
    return "a JSON " + " or ".join(_TYPE_WORDS[t] for t in allowed if t is not type(None))


def _schema_note(schema) -> str | None:
    if schema == SCHEMA:
        return None
    return (f"schema {schema}" if schema is not None else "no schema field") \
        + f" (this version writes schema {SCHEMA})"


def record_problem(data: Mapping) -> str | None:
    """What ``data`` (a parsed record) lacks to be a :class:`RunRecord` the report can
    read, or None when it has it all: :data:`REQUIRED_FIELDS`, a string ``run_id``, a
    known protocol with the metrics (and cv) blocks it scores
    (:meth:`~pipeline.runs.protocol.Protocol.missing`), every field of its JSON type
    (:data:`FIELD_TYPES`), and then values in range and of consistent lengths
    (:func:`pipeline.runs.values.value_problems`: scores finite and in [0, 1], counts
    whole and >= 0, per-class arrays as long as the classes, class indices below their
    number)."""
    missing = [k for k in REQUIRED_FIELDS if k not in data]
    if not isinstance(data.get("run_id", ""), str):
        missing.append("run_id (a string)")
    name = data.get("protocol", Holdout.name)
    wrong = []
    if isinstance(name, str) and name in PROTOCOL_TYPES:
        missing += PROTOCOL_TYPES[name]().missing(data)
    else:
        wrong.append(f"protocol ({name!r}; valid: {', '.join(PROTOCOL_TYPES)})")
    wrong += [f"{k} ({_type_words(allowed)}, not {type(data[k]).__name__})"
              for k, allowed in {**FIELD_TYPES, "protocol_reason": (str, type(None))}.items()
              if k in data and k != "run_id" and not _is_a(data[k], allowed)]
    parts = (["fields missing: " + ", ".join(missing)] if missing else []) \
        + (["fields of the wrong type: " + ", ".join(wrong)] if wrong else [])
    if not parts:   # the values, once every field is there and of its type
        parts.append(value_problems(data, PROTOCOL_TYPES[name].scored).summary())
    return "; ".join(p for p in parts if p) or None


def as_record(record) -> RunRecord:
    """``record`` as a :class:`RunRecord`: itself, or a parsed record (a mapping) read by
    :meth:`RunRecord.from_dict`."""
    return record if isinstance(record, RunRecord) else RunRecord.from_dict(record)


def _store_cost(store) -> dict | None:
    """The store's per-tap parameters and GFLOPs (``attrs["cost"]``), None without them."""
    cost = store.attrs.get("cost")
    if isinstance(cost, str):
        try:
            cost = json.loads(cost)
        except ValueError:
            return None
    return cost if isinstance(cost, dict) and cost else None


@dataclass
class RunInfo:
    """What a run was, whatever its protocol: the fields of its record that the fit
    reports (:func:`new_record`, :func:`new_cv_record` add the store's split, the
    scores and the predictions).  ``extra``: more record fields by their JSON keys."""

    kind: str                      # frozen | baseline | finetune
    method: str
    label: str
    hyperparameters: dict = field(default_factory=dict)
    search: list = field(default_factory=list)
    fit_seconds: float = 0.0
    layer: str | None = None
    trainable_params: int | None = None
    history: list = field(default_factory=list)
    seed: int | None = None
    group: str | None = None       # default: the label
    # the options the run was made with, the seed left out: runs of one group with other
    # options are other strategies (pipeline.runs.groups.strategy_key)
    setup: dict | None = None
    extra: dict = field(default_factory=dict)


def _skeleton(run: RunInfo, store) -> dict:
    """The fields every run record has, whatever its protocol."""
    from ..store.hdf5 import library_versions

    pretrained = run.kind != "baseline"
    features = {"path": str(Path(store.path).resolve()), "fingerprint": store.fingerprint,
                "backbone": store.attrs.get("backbone"),
                "images_per_second": store.attrs.get("images_per_second"),
                "cost": _store_cost(store)}
    tta = getattr(store, "tta", "none")
    if tta != "none":  # the store's vectors were averaged with their mirror's
        features["tta"] = tta
    return dict(
        run_id=make_run_id(run.method, run.layer),
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        kind=run.kind, method=run.method, label=run.label,
        backbone=store.attrs.get("backbone") if pretrained else None,
        layer=run.layer,
        weights=store.attrs.get("weights") if pretrained else None,
        # Absolute, so the report finds the store whatever folder it runs in; the
        # fingerprint tells it whether the file there is still this store.
        features=features,
        data_root=str(store.data_root),
        dataset=store.attrs.get("dataset"),
        layout=store.attrs.get("layout", "classes"),
        classes=list(store.classes),
        split_sizes=store.split_sizes(),
        split_seed=store.split_info.get("seed"),
        # how the split was made: seed, group rule and groups, given by the data or drawn
        split={**store.split_info, "class_sizes": store.split_class_counts()},
        seed=run.seed,
        group=run.group or run.label,
        setup=run.setup,
        hyperparameters=run.hyperparameters or {},
        search=run.search or [],
        fit_seconds=float(run.fit_seconds),
        trainable_params=run.trainable_params,
        history=run.history or [],
        model_file=None,
        command=" ".join(["python", *sys.argv]) if sys.argv else "",
        versions=library_versions(),
        machine=machine_info(),
    )


def new_record(run: RunInfo, store, val_pred, test_pred, test_proba=None,
               protocol: Holdout | None = None, val_proba=None) -> RunRecord:
    """A complete holdout run record of ``run`` for its predictions on ``store``'s val and
    test splits (the classes are the store's).

    ``val_pred`` / ``test_pred`` are ``(n_val,)`` / ``(n_test,)`` predicted
    labels in store order; ``test_proba`` is ``(n_test, n_classes)`` or None.
    ``protocol``: the resolved :class:`~pipeline.runs.protocol.Holdout` (its ``why`` is
    recorded).  ``val_proba`` ``(n_val, n_classes)``, validation probabilities of a model
    that did not train on them: the temperature the saved model applies is fitted there
    (:func:`pipeline.calibration.holdout_calibration`).
    """
    from ..calibration import holdout_calibration
    from .metrics import evaluate  # scikit-learn: not imported by readers of records

    classes = store.classes
    y_val, y_test = store.y("val"), store.y("test")
    test_paths = store.rel_paths("test")
    record = RunRecord(
        **_skeleton(run, store),
        protocol=protocol or Holdout(),
        split_fingerprint=split_fingerprint(test_paths),
        metrics={"val": evaluate(y_val, val_pred, classes),
                 Holdout.scored: evaluate(y_test, test_pred, classes)},
        predictions={
            "paths": test_paths,
            "y_true": [int(v) for v in y_test],
            "y_pred": [int(v) for v in np.asarray(test_pred)],
            "proba": (np.round(np.asarray(test_proba, dtype=float), 5).tolist()
                      if test_proba is not None else None),
        })
    record.update(run.extra or {})
    set_calibration(record, holdout_calibration(y_val, val_proba, y_test, test_proba))
    return record


def new_cv_record(run: RunInfo, store, folds: list,
                  protocol: CrossValidation | None = None) -> RunRecord:
    """A complete cross-validated run record of ``run`` from the outer ``folds`` of
    ``store``'s repeated K-fold (see :func:`pipeline.runs.protocol.cv_result`): per-fold
    scores and parameters, the corrected interval, out-of-fold predictions of every
    image.  ``protocol``: the resolved :class:`~pipeline.runs.protocol.CrossValidation`."""
    from ..calibration import cv_calibration
    from .protocol import cv_result, folds_fingerprint

    result = cv_result(folds, store.labels, store.classes, store.folds.shape[1])
    record = RunRecord(
        **_skeleton(run, store),
        protocol=protocol or CrossValidation(), split_fingerprint=folds_fingerprint(store),
        cv=result["cv"], metrics=result["metrics"],
        predictions={"paths": [store.paths[i] for i in result["rows"]],
                     **result["predictions"]})
    record.update(run.extra or {})
    set_calibration(record, cv_calibration(folds, store.labels))
    return record


def set_calibration(record: RunRecord, block: dict | None) -> None:
    """Keep ``block`` (:func:`pipeline.calibration.calibration_block`) as the record's
    ``calibration`` and its scored metrics' ``ece`` (before) and ``ece_scaled`` (after
    temperature scaling); nothing when None."""
    if block is None:
        return
    record.calibration = block
    record.scored_metrics.update(ece=block["ece"], ece_scaled=block["ece_scaled"])


def save_record(record: RunRecord, runs_dir=DEFAULT_RUNS_DIR) -> Path:
    """Write ``<runs_dir>/<run_id>.json`` whole or not at all (a killed run never leaves
    half a record); refuses to replace an existing file.  ``record``: a
    :class:`RunRecord` (a parsed record is read by :meth:`RunRecord.from_dict`)."""
    record = as_record(record)
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    path = runs_dir / f"{record.run_id}.json"
    try:
        with atomic_write(path, "w", encoding="utf-8", exclusive=True) as fh:
            json.dump(record.to_dict(), fh, indent=1)
    except FileExistsError:
        raise StoreError(f"run record {path} already exists; it is never overwritten") from None
    return path


def save_run(record: RunRecord, runs_dir, model_ext: str, write_model) -> Path:
    """Save ``record`` and its model: ``write_model(path)`` writes ``<run_id>.<model_ext>``
    (atomically), and ``record.model_file`` names it.  Returns the record's path.

    The model is written first: a run killed in between leaves an unnamed model
    file, never a record whose model is missing."""
    model_file = Path(runs_dir).resolve() / f"{record.run_id}.{model_ext}"
    record.model_file = str(model_file)
    model_file.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(model_file) as tmp:
        write_model(tmp)
    return save_record(record, runs_dir)


_FIX = "move it out of the runs folder, or restore it from a backup, to silence this"


def store_candidates(record: RunRecord, runs_dir=None) -> list[Path]:
    """Where the feature store ``record`` names may be, in the order to try.

    Its path when absolute (records of this version); a relative one (older
    records, relative to where ``fit`` ran) against the current folder, then
    against the parent and the grandparent of ``runs_dir`` (``reports/runs`` beside
    ``features/``).  Empty when the record names no store.
    """
    path = record.features.get("path")
    if not path:
        return []
    path = Path(path)
    if path.is_absolute():
        return [path]
    out = [Path.cwd() / path]
    if runs_dir is not None:
        runs = Path(runs_dir).resolve()
        out += [runs.parent / path, runs.parent.parent / path]
    return list(dict.fromkeys(p.resolve() for p in out))


def read_record(path) -> RunRecord:
    """The run record in the JSON file ``path`` (``file`` set to it), validated.

    Raises :class:`StoreError` naming the file and what is wrong with it (unreadable,
    not UTF-8, not JSON, JSON but not an object, or an object without a field a record
    needs or with a value out of range: :meth:`RunRecord.from_dict`).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise StoreError(f"run record {path} is unreadable: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StoreError(f"run record {path} is not UTF-8 text (byte {exc.start} is "
                         f"0x{raw[exc.start]:02x}); it was not written by this tool") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StoreError(f"run record {path} is not valid JSON ({exc.msg} at line "
                         f"{exc.lineno}, column {exc.colno}): truncated or edited?") from None
    if not isinstance(data, dict):
        raise StoreError(f"run record {path} is not a run record: it holds a JSON "
                         f"{type(data).__name__.replace('list', 'array')}, not an object")
    return RunRecord.from_dict(data, file=str(path))


def _runs_folder(runs_dir) -> Path:
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise StoreError(
            f"no run records folder {str(runs_dir)!r}; run `{program()} fit` or "
            f"`{program()} baseline` first, or pass {opt('runs_dir', 'DIR')}", param="runs_dir"
        )
    return runs_dir


def _scan(runs_dir) -> tuple[list, list]:
    """``(records, bad)``: every ``*.json`` of ``runs_dir`` read (:func:`read_record`),
    and ``[(path, StoreError)]`` of the files that could not be."""
    records, bad = [], []
    for path in sorted(_runs_folder(runs_dir).glob("*.json")):
        try:
            records.append(read_record(path))
        except StoreError as exc:
            bad.append((path, exc))
    return records, bad


def load_records(runs_dir=DEFAULT_RUNS_DIR) -> list[RunRecord]:
    """Every run record in ``runs_dir``, oldest first (by ``created``).

    A file that cannot be a record (unreadable, not UTF-8, not JSON, not an
    object, without a field the report needs or with a value it cannot use:
    :func:`record_problem`) is skipped with a warning naming it and the field; a
    record of another schema version is read, with a warning, when it has every
    needed field.
    """
    records, bad = _scan(runs_dir)
    for _path, exc in bad:
        log.warning("%s; skipping it (%s)", exc, _FIX)
    for rec in records:
        if rec.schema_note:
            log.warning("run record %s has %s; reading it, as it has every field the "
                        "report needs", rec.file, rec.schema_note)
    records.sort(key=lambda r: (r.created or "", r.run_id))
    return records


def find_record(ref: str, runs_dir=DEFAULT_RUNS_DIR) -> RunRecord:
    """A record by run id, id prefix, or path to its JSON file.

    A bad file among the others is ignored (logged at debug level); when the
    record asked for is the bad one, :class:`StoreError` says which file and why.
    """
    p = Path(ref)
    if p.suffix == ".json" and p.is_file():
        return _checked(read_record(p))
    parsed, bad = _scan(runs_dir)
    exact = [r for r in parsed if r.run_id == ref]
    if len(exact) == 1:
        return _checked(exact[0])
    matches = [r for r in parsed if r.run_id.startswith(ref)]
    bad_matches = [(path, exc) for path, exc in bad if path.stem.startswith(ref)]
    for path, exc in bad:
        if (path, exc) not in bad_matches:
            log.debug("ignoring %s", exc)
    if len(matches) == 1 and not bad_matches:
        return _checked(matches[0])
    if not matches and len(bad_matches) == 1:
        raise StoreError(f"{bad_matches[0][1]}; restore it from a backup or fit the run again")
    if not matches and not bad_matches:
        raise StoreError(f"no run {ref!r} in {runs_dir}; list them with `ls {runs_dir}`")
    raise StoreError(f"run id {ref!r} is ambiguous in {runs_dir}: "
                     + ", ".join([r.run_id for r in matches[:5]]
                                 + [f"{path.name} (unreadable)" for path, _ in bad_matches[:5]]))


def _checked(rec: RunRecord) -> RunRecord:
    """``rec``, with a warning when its schema differs from this version's."""
    if rec.schema_note:
        log.warning("run record %s has %s; reading it as this one", rec.file, rec.schema_note)
    return rec


def side_records(folder, pattern: str, kind: str, schema: int) -> list[dict]:
    """The readable records of ``kind`` and ``schema`` among ``folder/pattern`` (a
    command's own records beside the runs: hierarchy, explore), newest file name first;
    any other file is skipped with a warning naming it."""
    found = []
    for path in sorted(Path(folder).glob(pattern), reverse=True):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            log.warning("%s record %s skipped: %s", kind, path, exc)
            continue
        if isinstance(record, dict) and record.get("kind") == kind \
                and record.get("schema") == schema:
            found.append(record)
        else:
            log.warning("%s record %s skipped: not a schema-%d %s record", kind, path, schema,
                        kind)
    return found
