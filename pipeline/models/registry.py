"""The registry of trained-model kinds, and opening the model a run id, record or file names.

:func:`register_model_kind` adds a :class:`~pipeline.models.base.TrainedModel`
subclass; :func:`model_kind_for` is the kind a file holds (by its suffix, then
by what the file's reader returns); :func:`load_model` opens the model of a run
id (or prefix), a run record JSON or a model file.  ``predict`` and ``export``
ask the object they get back; nothing else tells kinds apart.  The built-in
kinds are registered when :mod:`pipeline.models` is imported.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import StoreError, UsageError
from ..registry import Registry
from ..runs.records import DEFAULT_RUNS_DIR, find_record

_KINDS = Registry("model kind")


def register_model_kind(cls, replace: bool = False):
    """Register a :class:`~pipeline.models.base.TrainedModel` subclass (usable as a class
    decorator); returns it.  Kinds saved with one suffix must share one reader, so a
    file is read once whichever of them it holds."""
    for other in _KINDS.items():
        if other.kind != cls.kind and set(other.suffixes) & set(cls.suffixes) \
                and other.read is not cls.read:
            raise ValueError(f"model kind {cls.kind!r} reads .{cls.suffixes[0]} files "
                             f"otherwise than {other.kind!r}; kinds saved with one suffix "
                             "share one reader")
    return _KINDS.add(cls.kind, cls, replace)


def unregister_model_kind(kind: str) -> None:
    """Forget model kind ``kind`` (a test's own kind, once the test is done)."""
    _KINDS.remove(kind)


def list_model_kinds() -> list[str]:
    """Names of the registered kinds, in the order they were registered."""
    return _KINDS.names()


def get_model_kind(kind: str):
    """The registered class of model kind ``kind``."""
    return _KINDS.get(kind)


def kinds_reading(path) -> list:
    """The kinds whose files have ``path``'s suffix (empty: not a model file)."""
    suffix = Path(path).suffix.lower().lstrip(".")
    return [k for k in _KINDS.items() if suffix and suffix in k.suffixes]


def model_kind_for(path, bundle: dict):
    """The kind of the model file ``path`` whose reader returned ``bundle``."""
    kinds = kinds_reading(path)
    for kind in kinds:
        if kind.claims(bundle):
            return kind
    what = " or ".join(k.title for k in kinds) or "model"
    raise StoreError(f"{path} holds no {what} of this tool")


def open_model_file(path, record=None):
    """The model saved at ``path``; ``record``: its run's record (None: looked for beside
    it, as ``<stem>.json``)."""
    path = Path(path)
    kinds = kinds_reading(path)
    if not kinds:
        suffixes = sorted({s for k in _KINDS.items() for s in k.suffixes})
        raise UsageError(f"{path} is not a model file; models are saved as "
                         f"{', '.join('.' + s for s in suffixes)}", param="model_ref")
    bundle = kinds[0].read(path)          # kinds of one suffix share its reader
    kind = model_kind_for(path, bundle)
    return kind(bundle, path, record if record is not None else _record_beside(path))


def _record_beside(path: Path):
    sibling = path.with_name(f"{path.stem}.json")  # save_run writes <run_id>.json beside it
    if not sibling.is_file():
        return None
    try:
        return find_record(str(sibling))
    except (OSError, ValueError):
        return None


def load_model(model_ref, runs_dir=DEFAULT_RUNS_DIR):
    """The model ``model_ref`` names: a run id (or prefix), a run record JSON, or a model
    file of a registered kind (``.skops``, ``.pt``, ``.onnx``; pickles are refused)."""
    if kinds_reading(model_ref):
        return open_model_file(model_ref)
    record = find_record(str(model_ref), runs_dir)
    if not record.model_file:
        raise UsageError(f"run {record.run_id} ({record.method}) saved no model; "
                         "predict and export take runs written by fit, baseline or finetune")
    model_file = Path(record.model_file)
    if not model_file.is_file():      # the runs folder was moved: the model sits beside it
        model_file = Path(record.file).with_name(model_file.name)
    if not model_file.is_file():
        raise StoreError(f"the saved model of run {record.run_id} is missing ({model_file})")
    return open_model_file(model_file, record)
