"""``track``: every run record of a folder -> one MLflow run each (optional, off by default).

MLflow is an optional dependency (``pip install 'transfer-workbench[mlflow]'``),
imported only when :func:`run_track` runs.  Each record (read tolerantly by
:func:`pipeline.runs.records.load_records`: a file that is no record is skipped
with a warning naming it) becomes one MLflow run named by its label, through
MLflow's own client (:class:`mlflow.MlflowClient`, no global state changed):

* tags ``workbench.run_id``, ``workbench.kind``, ``workbench.method``,
  ``workbench.backbone``, ``workbench.tap``, ``workbench.protocol``,
  ``workbench.store_fingerprint`` (and ``workbench.dataset``, ``workbench.created``,
  ``workbench.selection_metric`` when the record has them);
* params: the record's ``setup`` as ``setup.<key>`` and its ``hyperparameters`` as
  ``hp.<key>`` (nested keys joined by dots; text as it is, anything else as JSON), and
  ``seed``;
* metrics (:func:`record_metrics`): every number of the record's metric blocks as
  ``<block>_<name>`` (``test_accuracy``, ``val_macro_f1``, ``oof_balanced_accuracy``),
  per class as ``<block>_per_class.<class>.<stat>``, the cross-validation summary as
  ``cv_mean``, ``cv_sd``, ``cv_ci_low``, ``cv_ci_high``, ``cv_n_folds``,
  ``cv_n_repeats``, and ``fit_seconds``, ``trainable_params``; the values exactly as
  the record holds them; the per-epoch history as series ``history.<key>`` by epoch
  (:func:`history_metrics`);
* artifacts: ``record/<run_id>.json``, ``model/<run_id>.skops|.pt`` (the run's model
  file as it is: loading it stays the workbench's own safe loaders', skops with the
  trusted types and ``torch.load(weights_only=True)``; no MLflow flavour pickles
  anything) and ``report/<name>.html``.

A record already logged (a finished MLflow run of the experiment with its
``workbench.run_id``) is not logged again.  The default store is MLflow's own
recommended local one, SQLite: ``MLFLOW_TRACKING_URI`` when set, else
``sqlite:///mlflow.db`` in the current folder, its artifacts in ``mlruns/`` beside it.
"""

from __future__ import annotations

import calendar
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..configs import DEFAULT_EXPERIMENT
from ..errors import StoreError, opt, program
from ..runs.records import DEFAULT_RUNS_DIR, RunRecord, load_records

log = logging.getLogger(__name__)

#: Every tag the workbench sets starts with this.
TAG = "workbench."
#: The local store when neither ``tracking_uri`` nor ``MLFLOW_TRACKING_URI`` says one
#: (MLflow 3's own default; its file store ``./mlruns`` is in maintenance mode and refused).
LOCAL_DB = "mlflow.db"
#: The report ``report="auto"`` logs when it is there: the report beside the runs folder
#: (``reports/report.html`` for ``reports/runs``, the demo's ``<stamp>/report.html``).
REPORT_NAME = "report.html"
#: MLflow's longest parameter value (longer ones are cut, ending in ``...``).
MAX_PARAM = 6000
_KEY_CHARS = re.compile(r"[^\w\-. :/]")
INSTALL = "pip install 'transfer-workbench[mlflow]' (in a checkout: pip install -e '.[mlflow]')"


class TrackingError(StoreError):
    """MLflow is not installed, or its store refused what was asked."""


@dataclass
class TrackResult:
    """What :func:`run_track` did: where (``tracking_uri``, ``experiment`` and its id),
    ``logged`` ``{record run id: MLflow run id}``, ``already`` the record run ids the
    experiment held before, and the ``report`` logged with each new run (or None)."""

    tracking_uri: str
    experiment: str
    experiment_id: str
    logged: dict = field(default_factory=dict)
    already: list = field(default_factory=list)
    report: Path | None = None

    def summary(self) -> str:
        return (f"{len(self.logged)} run(s) logged, {len(self.already)} already there, in "
                f"MLflow experiment {self.experiment!r} at {self.tracking_uri}")


def import_mlflow():
    """The ``mlflow`` module, or :class:`TrackingError` saying how to install it."""
    try:
        import mlflow
    except ImportError:
        raise TrackingError(f"MLflow is not installed; {INSTALL}") from None
    return mlflow


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """``tracking_uri``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///`` of
    :data:`LOCAL_DB` in the current folder (absolute, so the URI printed works anywhere)."""
    if tracking_uri:
        return str(tracking_uri)
    return os.environ.get("MLFLOW_TRACKING_URI") or \
        "sqlite:///" + Path(LOCAL_DB).resolve().as_posix()


def _local_artifacts(uri: str) -> str | None:
    """Where a new experiment of a local SQLite store keeps its artifacts: ``mlruns/``
    beside the database (MLflow's default is ``./mlruns`` of whatever folder runs it)."""
    if not uri.startswith("sqlite:///") or uri.endswith(":memory:"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).parent / "mlruns").resolve().as_uri()


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


def _key(name) -> str:
    """``name`` with the characters MLflow refuses in a key as ``_``."""
    return _KEY_CHARS.sub("_", str(name))


def record_metrics(record: RunRecord) -> dict:
    """``{name: value}``: every number the record measured, named flat (module docstring).

    Lists (confusion matrices, per-fold scores, predictions) are left to the record's
    JSON, logged as an artifact; the values are the record's, unrounded."""
    out = {}
    for block, values in record.metrics.items():
        for name, value in (values or {}).items():
            if _number(value):
                out[f"{block}_{name}"] = value
            elif name == "per_class" and isinstance(value, dict):
                out.update({f"{block}_per_class.{_key(cls)}.{stat}": x
                            for cls, stats in value.items() if isinstance(stats, dict)
                            for stat, x in stats.items() if _number(x)})
    cv = record.cv or {}
    out.update({f"cv_{name}": value for name, value in cv.items() if _number(value)})
    if isinstance(cv.get("ci"), list) and len(cv["ci"]) == 2 and all(map(_number, cv["ci"])):
        out["cv_ci_low"], out["cv_ci_high"] = cv["ci"]
    out.update({name: getattr(record, name) for name in ("fit_seconds", "trainable_params")
                if _number(getattr(record, name))})
    return out


def history_metrics(record: RunRecord) -> list:
    """``[(name, value, epoch)]``: the per-epoch training history (MLP, CNN, fine-tuning) as
    MLflow metric series, ``history.<key>`` at step ``epoch`` (``history.val_loss``,
    ``history.lr.<group>``); flags and text left out."""
    out = []
    for entry in record.history:
        if isinstance(entry, dict) and _number(entry.get("epoch")):
            out += [(_key(name), value, int(entry["epoch"]))
                    for name, value in _flat(entry, "history").items()
                    if name != "history.epoch" and _number(value)]
    return out


def _flat(values, prefix: str) -> dict:
    """``{prefix.key: value}`` of a (nested) dict, nested keys joined by dots."""
    out = {}
    for key, value in (values or {}).items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}.{key}"))
        else:
            out[f"{prefix}.{key}"] = value
    return out


def record_params(record: RunRecord) -> dict:
    """``{name: text}``: the record's setup (``setup.<key>``), hyperparameters
    (``hp.<key>``) and seed, as MLflow keeps parameters (text; JSON for non-text)."""
    params = {**_flat(record.setup, "setup"), **_flat(record.hyperparameters, "hp"),
              "seed": record.seed}
    out = {}
    for key, value in params.items():
        text = value if isinstance(value, str) else json.dumps(value)
        out[_key(key)] = text if len(text) <= MAX_PARAM else text[:MAX_PARAM - 3] + "..."
    return out


def record_tags(record: RunRecord) -> dict:
    """``{workbench.<what>: text}``: what the run is, for searching (None values left out)."""
    tags = {"run_id": record.run_id, "kind": record.kind, "method": record.method,
            "backbone": record.backbone, "tap": record.layer, "protocol": record.protocol.name,
            "store_fingerprint": record.features.get("fingerprint"),
            "dataset": record.dataset, "created": record.created,
            "selection_metric": record.selection_metric}
    return {TAG + k: str(v) for k, v in tags.items() if v not in (None, "")}


def model_path(record: RunRecord) -> Path | None:
    """The record's model file: where it names it, else under that name beside the
    record (a runs folder moved whole); None when it names none or it is in neither."""
    if not record.model_file:
        return None
    named = Path(record.model_file)
    beside = Path(record.file).parent / named.name if record.file else named
    found = next((p for p in (named, beside) if p.is_file()), None)
    if found is None:
        log.warning("run %s: its model file %s is missing; logging the run without it",
                    record.run_id, named)
    return found


def find_report(runs_dir, report) -> Path | None:
    """The report to log: ``report`` (a file that must exist), ``"none"``, or ``"auto"``:
    :data:`REPORT_NAME` beside the runs folder when it is there."""
    if report in (None, "none"):
        return None
    if report == "auto":
        path = Path(runs_dir).resolve().parent / REPORT_NAME
        return path if path.is_file() else None
    path = Path(report)
    if not path.is_file():
        raise StoreError(f"no report file {str(path)!r}; write it with `{program()} report`, "
                         f"or pass {opt('report', 'none')}", param="report")
    return path


def _created_ms(record: RunRecord) -> int | None:
    """When the run's record was made (``created``), in ms since the epoch; None without it."""
    try:
        return calendar.timegm(time.strptime(record.created, "%Y-%m-%dT%H:%M:%SZ")) * 1000
    except (TypeError, ValueError):
        return None


# ---------------------------------------------------------------- MLflow itself


def _experiment_id(client, name: str, uri: str) -> str:
    """The id of experiment ``name``, made when it does not exist yet."""
    found = client.get_experiment_by_name(name)
    if found is None:
        return client.create_experiment(name, artifact_location=_local_artifacts(uri))
    if found.lifecycle_stage != "active":
        raise TrackingError(f"MLflow experiment {name!r} at {uri} is deleted; restore it "
                            f"(mlflow experiments restore) or pass another "
                            f"{opt('experiment', 'NAME')}", param="experiment")
    return found.experiment_id


def logged_run_ids(client, experiment_id: str) -> set:
    """The ``workbench.run_id`` of every finished run of the experiment (a failed or
    unfinished one is logged again)."""
    seen, token = set(), None
    while True:
        page = client.search_runs([experiment_id], "attributes.status = 'FINISHED'",
                                  max_results=1000, page_token=token)
        seen.update(r.data.tags.get(TAG + "run_id") for r in page)
        token = page.token
        if not token:
            return seen - {None}


def log_record(client, experiment_id: str, record: RunRecord, report: Path | None) -> str:
    """One MLflow run of ``record`` (tags, params, metrics, artifacts); its MLflow id.

    The run is marked FAILED when anything goes wrong, so that a later ``track``
    logs the record again."""
    from mlflow.entities import Metric, Param

    # MLflow's times are the run's own: the record is made once the fit is done
    end = _created_ms(record)
    start = end - round(1000 * record.fit_seconds) if end else None
    run = client.create_run(experiment_id, start_time=start, tags=record_tags(record),
                            run_name=record.label or record.run_id)
    mlflow_id = run.info.run_id
    status = "FAILED"
    try:
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, 0) for k, v in record_metrics(record).items()] \
            + [Metric(k, v, now, step) for k, v, step in history_metrics(record)]
        client.log_batch(mlflow_id, metrics=metrics,
                         params=[Param(k, v) for k, v in record_params(record).items()])
        client.log_artifact(mlflow_id, record.file, "record")
        model = model_path(record)
        if model is not None:
            client.log_artifact(mlflow_id, str(model), "model")
        if report is not None:
            client.log_artifact(mlflow_id, str(report), "report")
        status = "FINISHED"
    finally:
        client.set_terminated(mlflow_id, status, end_time=end if status == "FINISHED" else None)
    return mlflow_id


def run_track(runs_dir=DEFAULT_RUNS_DIR, tracking_uri: str | None = None,
              experiment: str = DEFAULT_EXPERIMENT, report: str | None = "auto") -> TrackResult:
    """Log every run record of ``runs_dir`` to MLflow, one MLflow run each; a
    :class:`TrackResult`.

    ``tracking_uri``: any MLflow tracking URI (default :func:`resolve_tracking_uri`:
    ``MLFLOW_TRACKING_URI``, else ``mlflow.db`` in the current folder); ``experiment``:
    the experiment's name (made when missing); ``report``: an HTML report logged with each
    new run, ``"auto"`` (the one beside the runs folder, when there) or ``"none"``.  A record
    the experiment already holds is not logged twice.
    """
    mlflow = import_mlflow()
    report = find_report(runs_dir, report)
    records = load_records(runs_dir)
    if not records:
        raise StoreError(f"no run records in {str(runs_dir)!r}; run `{program()} fit` or "
                         f"`{program()} baseline` first, or pass {opt('runs_dir', 'DIR')}",
                         param="runs_dir")
    uri = resolve_tracking_uri(tracking_uri)
    try:
        client = mlflow.MlflowClient(tracking_uri=uri)
        result = TrackResult(uri, experiment, _experiment_id(client, experiment, uri),
                             report=report)
        seen = logged_run_ids(client, result.experiment_id)
        for record in records:
            if record.run_id in seen:
                result.already.append(record.run_id)
                continue
            result.logged[record.run_id] = log_record(client, result.experiment_id, record,
                                                      report)
            log.info("logged %s (%s) as MLflow run %s", record.run_id, record.label,
                     result.logged[record.run_id])
    except mlflow.exceptions.MlflowException as exc:
        first = str(exc.message).strip().splitlines()[0]
        raise TrackingError(f"MLflow at {opt('tracking_uri', uri)}: {first}",
                            param="tracking_uri") from None
    return result
