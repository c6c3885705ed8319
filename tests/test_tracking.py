"""``track``: run records logged to a real local MLflow store (SQLite in ``tmp_path``) and
read back with ``mlflow.search_runs``: the same metrics as each record, its params and tags,
the record, model and report as artifacts; a second ``track`` logs nothing new.

The records are real: a holdout and a cross-validated logistic-regression head (``.skops``)
and a two-epoch MLP baseline (``.pt``, a per-epoch history) on toy features of a small image
folder.  Most of this module's time is MLflow's: its import and the schema migrations that
make a fresh SQLite store.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TESTS, assert_clean, make_folder
from report_helpers import make_store

from pipeline import api
from pipeline.runs.records import load_records

REPORT = "<html><body>the comparison report</body></html>"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """``(runs folder, records)``: three real runs, a file that is no record, and a
    ``report.html`` beside the runs folder (what ``report="auto"`` logs)."""
    root = tmp_path_factory.mktemp("track")
    # grey shades whose brightness ranges overlap: scores between 0 and 1, not round
    shades = {"dark": (100, 100, 100), "mid": (112, 112, 112), "light": (124, 124, 124)}
    store = make_store(make_folder(root / "img", per_class=10, colours=shades),
                       root / "features")
    runs = root / "reports" / "runs"
    api.fit(store, layer="layer2", clf="logreg", protocol="holdout", runs_dir=runs)
    api.fit(store, layer="layer1", clf="logreg", protocol="cv", runs_dir=runs)
    api.baseline(store, "mlp", epochs=2, size=8, protocol="holdout", runs_dir=runs)
    records = load_records(runs)
    (runs / "broken.json").write_text("{ not json", encoding="utf-8")
    (runs.parent / "report.html").write_text(REPORT, encoding="utf-8")
    return runs, records


class Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def tracked(study, tmp_path_factory):
    """The CLI's ``track`` of the study into a fresh SQLite store, twice (MLFLOW_TRACKING_URI
    says where): ``(uri, warnings of the first, first output, second output, MLflow runs by
    record run id)``."""
    from click.testing import CliRunner

    import cli

    runs, _ = study
    uri = "sqlite:///" + (tmp_path_factory.mktemp("mlflow") / "mlflow.db").as_posix()
    env = {"MLFLOW_TRACKING_URI": uri}
    runner = CliRunner()
    warned = Collect()
    logging.getLogger("pipeline").addHandler(warned)
    try:
        first = runner.invoke(cli.cli, ["track", "--runs", str(runs)], env=env,
                              catch_exceptions=False)
    finally:
        logging.getLogger("pipeline").removeHandler(warned)
    second = runner.invoke(cli.cli, ["track", "--runs", str(runs)], env=env,
                           catch_exceptions=False)
    import mlflow

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        frame = mlflow.search_runs(experiment_names=["transfer-workbench"])
    by_id = {row["tags.workbench.run_id"]: row for _, row in frame.iterrows()}
    assert len(by_id) == len(frame)     # one MLflow run per record, none twice
    return uri, warned.messages, first, second, by_id


def test_track_logs_every_record_once_with_its_metrics(study, tracked):
    """search_runs reads back one run per record, named by its label, with every number of
    its metric blocks (and the cv summary) equal to the record's own value."""
    _, records = study
    import pandas as pd

    _, warned, first, second, by_id = tracked
    assert first.exit_code == 0, first.output
    assert "3 run(s) logged, 0 already there" in first.output
    assert any("broken.json" in m and "skipping it" in m for m in warned), warned
    assert sorted(by_id) == sorted(r.run_id for r in records)
    for record in records:
        row = by_id[record.run_id]
        assert row["tags.mlflow.runName"] == record.label
        assert row["status"] == "FINISHED"
        # the run's own times: the record is written once the fit is done
        assert row["end_time"] == pd.Timestamp(record.created)
        assert row["start_time"] == pd.Timestamp(record.created) - pd.Timedelta(
            milliseconds=round(1000 * record.fit_seconds))
        numbers = {f"{block}_{name}": value for block, values in record.metrics.items()
                   for name, value in values.items() if isinstance(value, (int, float))}
        assert {"accuracy", "balanced_accuracy", "macro_f1"} <= \
            set(record.metrics[record.protocol.scored])
        for name, value in numbers.items():
            assert row[f"metrics.{name}"] == value, (record.run_id, name)
        cls = record.classes[0]
        assert row[f"metrics.{record.protocol.scored}_per_class.{cls}.recall"] == \
            record.scored_metrics["per_class"][cls]["recall"]
        assert row["metrics.fit_seconds"] == record.fit_seconds
    cv = next(r for r in records if r.protocol == "cv")
    holdout = next(r for r in records if r.protocol == "holdout" and r.kind == "frozen")
    assert by_id[cv.run_id]["metrics.cv_mean"] == cv.cv["mean"]
    assert [by_id[cv.run_id]["metrics.cv_ci_low"], by_id[cv.run_id]["metrics.cv_ci_high"]] \
        == cv.cv["ci"]
    assert 0 < holdout.metrics["val"]["accuracy"] < 1      # a value rounding would change
    assert by_id[holdout.run_id]["metrics.test_accuracy"] == holdout.metrics["test"]["accuracy"]
    assert by_id[holdout.run_id]["metrics.val_accuracy"] == holdout.metrics["val"]["accuracy"]


def test_track_logs_tags_params_and_artifacts(study, tracked):
    """Tags say what each run is; params are its setup and hyperparameters; the record JSON,
    the model file and the report beside the runs folder are its artifacts, byte for byte."""
    _, records = study
    *_, by_id = tracked
    for record in records:
        row = by_id[record.run_id]
        assert row["tags.workbench.kind"] == record.kind
        assert row["tags.workbench.method"] == record.method
        assert row["tags.workbench.protocol"] == record.protocol.name
        assert row["tags.workbench.store_fingerprint"] == record.features["fingerprint"]
        for key, value in record.setup.items():
            assert row[f"params.setup.{key}"] == (value if isinstance(value, str)
                                                   else json.dumps(value)), key
        artifacts = Path(row["artifact_uri"].removeprefix("file://"))
        model = Path(record.model_file)
        assert (artifacts / "record" / f"{record.run_id}.json").read_bytes() == \
            Path(record.file).read_bytes()
        assert (artifacts / "model" / model.name).read_bytes() == model.read_bytes()
        assert (artifacts / "report" / "report.html").read_text(encoding="utf-8") == REPORT
    frozen = next(r for r in records if r.kind == "frozen")
    assert by_id[frozen.run_id]["tags.workbench.tap"] == frozen.layer
    assert by_id[frozen.run_id]["tags.workbench.backbone"] == "toy"
    assert float(by_id[frozen.run_id]["params.hp.C"]) == frozen.hyperparameters["C"]
    assert sorted(Path(r.model_file).suffix for r in records) == [".pt", ".skops", ".skops"]


def test_track_logs_the_training_history_by_epoch(study, tracked):
    """The MLP's per-epoch history: one MLflow metric series per number, a step per epoch,
    the record's values."""
    import mlflow

    _, records = study
    uri, *_, by_id = tracked
    mlp = next(r for r in records if r.method == "mlp")
    assert [h["epoch"] for h in mlp.history] == [1, 2]
    series = mlflow.MlflowClient(uri).get_metric_history(by_id[mlp.run_id]["run_id"],
                                                        "history.val_loss")
    assert [(m.step, m.value) for m in series] == [(h["epoch"], h["val_loss"])
                                                   for h in mlp.history]


def test_track_again_logs_nothing_new(study, tracked):
    """A second ``track`` (the CLI's, then the Python API's) finds every record logged."""
    runs, records = study
    uri, *_, second, by_id = tracked
    assert second.exit_code == 0, second.output
    assert "0 run(s) logged, 3 already there" in second.output
    assert len(by_id) == 3
    again = api.track(runs, tracking_uri=uri, report="none")
    assert again.logged == {} and sorted(again.already) == sorted(r.run_id for r in records)


def test_track_bad_options_are_one_line(study, tmp_path, run):
    """A missing --report file, and a plain folder as --tracking-uri (MLflow 3 refuses its
    file store): a message naming the option, no traceback."""
    runs, _ = study
    db = "sqlite:///" + (tmp_path / "m.db").as_posix()
    assert_clean(run("track", "--runs", runs, "--tracking-uri", db, "--report",
                     tmp_path / "nope.html"), "--report", "nope.html")
    assert_clean(run("track", "--runs", runs, "--tracking-uri", tmp_path / "mlruns"),
                 "--tracking-uri")


def test_track_without_mlflow_says_how_to_install(tmp_path):
    """MLflow made unimportable: one line saying how to install it, exit 1, no traceback."""
    code = (f"import sys; sys.path[:0] = [{str(TESTS.parent)!r}]; sys.modules['mlflow'] = None; "
            "import cli; cli.main()")
    res = subprocess.run([sys.executable, "-c", code, "track", "--runs", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    out = assert_clean(res, "pip install 'transfer-workbench[mlflow]'")
    assert len(out.strip().splitlines()) == 1, out
