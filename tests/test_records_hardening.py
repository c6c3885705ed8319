"""Hardening of run records and the report: perfect scores, bad record files, moved or
replaced feature stores, repeated seeds, and report outputs that cannot be written.

Records are built with :func:`pipeline.runs.records.new_record` on toy stores of a few
flat-colour images, so every report here takes about a second.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import make_folder
from report_helpers import make_store

from pipeline.errors import StoreError
from pipeline.files import atomic_path, atomic_write
from pipeline.reporting import plots
from pipeline.runs.groups import group_runs
from pipeline.runs.records import RunInfo, find_record, load_records, new_record, save_record
from pipeline.runs.stats import wilson_interval
from pipeline.workflows.report import build_report


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Two toy stores with different images (so different fingerprints); 9 test images in a."""
    root = tmp_path_factory.mktemp("stores")
    a = make_store(make_folder(root / "a", per_class=17), root / "fa")
    b = make_store(make_folder(root / "b", per_class=18), root / "fb")
    assert a.fingerprint != b.fingerprint
    return a, b


def frozen(store, layer="layer1", right=1.0, seed=None, group=None, kind="frozen"):
    """A run record on ``store``'s split that gets the first ``right`` fraction of the
    test images right (the rest wrong: next class)."""
    y_val, y_test = store.y("val"), store.y("test")
    k = len(store.classes)
    pred = y_test.copy()
    n_wrong = len(y_test) - int(round(right * len(y_test)))
    if n_wrong:
        pred[-n_wrong:] = (pred[-n_wrong:] + 1) % k
    run = RunInfo(kind=kind, method="logreg", label=group or f"logreg on {layer}",
                  layer=layer, seed=seed, group=group, hyperparameters={"C": 1.0})
    return new_record(run, store, y_val, pred, np.eye(k)[pred] * 0.9 + 0.1 / k)


def section(html: str, name: str) -> str:
    m = re.search(rf'<section id="{name}".*?</section>', html, re.S)
    assert m, f"section {name} missing"
    return m.group(0)




# ------------------------------------------------------------------ 1. 0% and 100% runs


def test_wilson_interval_at_none_and_all_correct_holds_the_estimate_exactly():
    for n in range(1, 201):
        for k in (0, n):
            p = k / n
            lo, hi = wilson_interval(k, n)
            assert 0.0 <= lo <= p <= hi <= 1.0, (k, n, lo, hi)
            assert p - lo >= 0 and hi - p >= 0       # the error bar matplotlib draws
    assert wilson_interval(7, 7)[1] == 1.0 and wilson_interval(0, 7)[0] == 0.0


def test_depth_plot_never_passes_a_negative_error_bar():
    # A seed-mean a hair (or far) outside the representative run's interval.
    series = {"logreg (toy)": [("layer1", 1.0, 1.0, 0.9999999999999999),
                               ("layer2", 0.6, 0.9, 1.0)]}
    assert plots.depth_plot(series, [], ["layer1", "layer2"]).startswith("data:image/svg")


def test_report_renders_runs_at_100_and_0_percent(stores, tmp_path):
    store, _ = stores
    runs = tmp_path / "runs"
    # Three seeds at 100%, 100%, 0%: the median run's interval is near 1, the mean is not.
    for seed, right in enumerate((1.0, 1.0, 0.0)):
        save_record(frozen(store, "layer1", right, seed=seed, group="logreg on layer1"), runs)
    save_record(frozen(store, "layer2", 0.0), runs)
    html = build_report(runs, tmp_path / "r.html", efficiency_budget=0).read_text()
    assert "data:image/svg" in section(html, "depth")
    assert "100.0%" in section(html, "comparison")


# ------------------------------------------------------------------ 2. bad record files


def _bad_files(runs, good):
    text = json.dumps(good.to_dict())
    (runs / "array.json").write_text("[1, 2, 3]")
    (runs / "latin1.json").write_bytes(b'{"run_id": "caf\xe9"}')
    (runs / "truncated.json").write_text(text[: len(text) // 2])
    old = {k: v for k, v in good.items() if k not in ("metrics", "predictions")}
    old["run_id"] = "old-schema-run"
    (runs / "old-schema-run.json").write_text(json.dumps(old))
    return ["array.json", "latin1.json", "truncated.json", "old-schema-run.json"]


def test_bad_run_records_are_skipped_with_a_warning_naming_each(stores, tmp_path, caplog):
    store, _ = stores
    runs = tmp_path / "runs"
    good = frozen(store)
    save_record(good, runs)
    names = _bad_files(runs, good)
    with caplog.at_level(logging.WARNING):
        records = load_records(runs)
    assert [r["run_id"] for r in records] == [good["run_id"]]
    warned = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    for name in names:
        assert name in warned, name
    assert "metrics" in warned                           # says what the old record lacks
    html = build_report(runs, tmp_path / "r.html", efficiency_budget=0).read_text()
    assert "logreg on layer1" in section(html, "comparison")


def test_another_schema_version_is_warned_about_and_loaded_when_complete(stores, tmp_path,
                                                                        caplog):
    store, _ = stores
    runs = tmp_path / "runs"
    newer = frozen(store)
    newer.schema = 99
    save_record(newer, runs)
    older = frozen(store, "layer2").to_dict()          # as an older version wrote it
    del older["schema"], older["metrics"]
    (runs / f"{older['run_id']}.json").write_text(json.dumps(older))
    with caplog.at_level(logging.WARNING):
        records = load_records(runs)
    assert [r["run_id"] for r in records] == [newer["run_id"]]
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(newer["run_id"] in w and "schema 99" in w for w in warned), warned
    assert any(older["run_id"] in w and "skipping" in w and "metrics" in w for w in warned), warned


def test_find_record_survives_other_bad_records_and_names_a_bad_requested_one(stores,
                                                                             tmp_path):
    store, _ = stores
    runs = tmp_path / "runs"
    good = frozen(store)
    save_record(good, runs)
    _bad_files(runs, good)
    assert find_record(good["run_id"], runs)["run_id"] == good["run_id"]
    assert find_record(good["run_id"][:18], runs)["run_id"] == good["run_id"]
    with pytest.raises(StoreError, match=r"truncated\.json.*(unreadable|not valid)"):
        find_record("truncated", runs)
    with pytest.raises(StoreError, match=r"array\.json.*not a run record"):
        find_record(str(runs / "array.json"), runs)
    with pytest.raises(StoreError, match=r"latin1\.json.*UTF-8"):
        find_record(str(runs / "latin1.json"), runs)


def test_predict_and_report_cli_with_bad_records_give_messages_not_tracebacks(stores,
                                                                             tmp_path, run):
    store, _ = stores
    runs = tmp_path / "runs"
    good = frozen(store, kind="baseline")
    save_record(good, runs)
    _bad_files(runs, good)
    res = run("predict", "--model", "truncated", tmp_path, "--runs", runs)
    assert res.exit_code == 1 and "truncated.json" in res.output
    assert "Traceback" not in res.output
    res = run("report", "--runs", runs, "--out", tmp_path / "r.html")
    assert res.exit_code == 0, res.output


# ------------------------------------------------------------------ 3. where the store is


def test_records_keep_the_absolute_store_path_and_fingerprint(stores, tmp_path, monkeypatch):
    store, _ = stores
    monkeypatch.chdir(store.path.parent)
    from pipeline.store.hdf5 import FeatureStore

    rec = frozen(FeatureStore(store.path.name))
    assert rec["features"]["path"] == str(store.path.resolve())
    assert rec["features"]["fingerprint"] == store.fingerprint


def _study_with_relative_store(stores, root):
    """``root/features/s.h5`` and ``root/runs`` with records naming ``features/s.h5``
    (as records written by ``fit`` run in ``root`` before paths were absolute)."""
    store, _ = stores
    (root / "features").mkdir(parents=True)
    shutil.copy(store.path, root / "features" / "s.h5")
    runs = root / "runs"
    for layer in ("layer1", "layer2"):
        rec = frozen(store, layer, right=0.8)
        rec["features"]["path"] = "features/s.h5"
        save_record(rec, runs)
    return runs


def test_report_from_another_folder_has_the_same_sections(stores, tmp_path, monkeypatch):
    runs = _study_with_relative_store(stores, tmp_path / "project")
    monkeypatch.chdir(tmp_path / "project")
    here = build_report("runs", tmp_path / "here.html", efficiency_budget=0).read_text()
    shutil.rmtree(runs / "analysis", ignore_errors=True)     # no cached analysis to reuse
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    there = build_report(runs, tmp_path / "there.html", efficiency_budget=0).read_text()
    for html in (here, there):
        fmap = section(html, "featuremap")
        assert "PCA" in fmap and "data:image/svg" in fmap
        assert 'class="empty"' not in fmap
    def text(html):    # the page without its figures (matplotlib salts SVG ids)
        return re.sub(r"data:image/[^\"]+", "", re.sub(r"generated [^<]+", "", html))

    for name in ("featuremap", "efficiency", "depth", "provenance"):
        assert text(section(here, name)) == text(section(there, name)), name


def test_a_different_store_at_the_recorded_path_is_detected(stores, tmp_path, caplog):
    a, b = stores
    shutil.copy(a.path, tmp_path / "s.h5")
    from pipeline.store.hdf5 import FeatureStore

    runs = tmp_path / "runs"
    for layer in ("layer1", "layer2"):
        save_record(frozen(FeatureStore(tmp_path / "s.h5"), layer), runs)
    shutil.copy(b.path, tmp_path / "s.h5")                 # re-extracted over other images
    with caplog.at_level(logging.WARNING):
        html = build_report(runs, tmp_path / "r.html", efficiency_budget=0).read_text()
    fmap, fewshot = section(html, "featuremap"), section(html, "efficiency")
    for part in (fmap, fewshot):
        assert "fingerprint" in part and "not the store" in part, part
    assert "data:image/svg" not in fmap
    warned = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    assert "s.h5" in warned and "fingerprint" in warned
    # ... and a store that is gone is said to be missing
    (tmp_path / "s.h5").unlink()
    html = build_report(runs, tmp_path / "r.html", overwrite=True,
                        efficiency_budget=0).read_text()
    assert "s.h5" in section(html, "featuremap") and "missing" in section(html, "featuremap")


# ------------------------------------------------------------------ 4. repeated seeds


def test_a_repeated_seed_counts_once_and_the_latest_run_wins(stores, tmp_path, caplog):
    store, _ = stores
    runs = tmp_path / "runs"
    first = frozen(store, right=0.5, seed=0, group="ft")
    first.created = "2026-01-01T00:00:00Z"
    second = frozen(store, right=0.8, seed=1, group="ft")
    second.created = "2026-01-01T00:01:00Z"
    again = frozen(store, right=1.0, seed=0, group="ft")      # finetune --resume: seed 0 again
    again.created = "2026-01-01T00:02:00Z"
    first_file = save_record(first, runs)
    for rec in (second, again):
        save_record(rec, runs)
    with caplog.at_level(logging.INFO):
        records = load_records(runs)
        groups = group_runs(records)
    (ft,) = groups
    assert sorted(r["run_id"] for r in ft["runs"]) == sorted([second["run_id"], again["run_id"]])
    assert ft["accuracy"] == pytest.approx(0.9, abs=0.05)
    assert first_file.name in caplog.text and "superseded" in caplog.text
    # the same seed in another group is another run
    other = frozen(store, "layer2", seed=0, group="other")
    assert len(group_runs([first, second, again, other])) == 2
    html = build_report(runs, tmp_path / "r.html", efficiency_budget=0).read_text()
    table = section(html, "comparison")
    assert "2 seeds" in table and "3 seeds" not in table


# ------------------------------------------------------------------ 5. where the report goes


def test_report_out_an_existing_folder_is_a_clear_error_leaving_nothing(stores, tmp_path, run):
    store, _ = stores
    runs = tmp_path / "runs"
    save_record(frozen(store, kind="baseline"), runs)
    (tmp_path / "out").mkdir()
    before = sorted(p.name for p in tmp_path.rglob("*"))
    for extra in ((), ("--overwrite",)):
        res = run("report", "--runs", runs, "--out", tmp_path / "out", *extra)
        assert res.exit_code == 2, res.output
        assert "is a folder" in res.output and "--out" in res.output
        assert "Traceback" not in res.output
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    # a file where the report's folder should be is an error too, not a traceback
    (tmp_path / "afile").write_text("x")
    res = run("report", "--runs", runs, "--out", tmp_path / "afile" / "r.html")
    assert res.exit_code == 1 and "cannot write" in res.output, res.output


@pytest.mark.parametrize("exc", [ValueError, KeyboardInterrupt])
def test_atomic_writes_remove_their_temporary_file_on_any_error(tmp_path, exc):
    target = tmp_path / "f.txt"
    with pytest.raises(exc):
        with atomic_write(target, "w", encoding="utf-8") as fh:
            fh.write("half")
            raise exc()
    with pytest.raises(exc):
        with atomic_path(tmp_path / "m.bin") as tmp:
            tmp.write_bytes(b"half")
            raise exc()
    (tmp_path / "dir").mkdir()
    with pytest.raises(OSError):
        with atomic_write(tmp_path / "dir", "w", encoding="utf-8") as fh:
            fh.write("x")
    with pytest.raises(OSError):
        with atomic_path(tmp_path / "dir") as tmp:
            tmp.write_bytes(b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir"]


# ------------------------------------------------------------------ 5. the typed record

OLD_RECORDS = Path(__file__).parent / "data" / "records"


def test_records_written_before_the_typed_record_load_and_write_back_unchanged(tmp_path,
                                                                              caplog):
    """Schema-1 files as ``fit`` wrote them before RunRecord existed (tests/data/records)."""
    from pipeline.runs.groups import score
    from pipeline.runs.records import RunRecord, read_record

    runs = tmp_path / "runs"
    runs.mkdir()
    for f in OLD_RECORDS.glob("schema1-*.json"):
        shutil.copy(f, runs / f.name)
    with caplog.at_level(logging.WARNING):
        records = {r.protocol.name: r for r in load_records(runs)}
    assert caplog.text == ""                                # read as this version's
    assert set(records) == {"holdout", "cv"}
    for name, rec in records.items():
        data = json.loads((OLD_RECORDS / f"schema1-{name}.json").read_text())
        assert isinstance(rec, RunRecord) and rec.file == str(runs / f"schema1-{name}.json")
        assert (rec.run_id, rec.kind, rec.layer, rec.classes) == (
            data["run_id"], "frozen", "layer1", ["blue", "red"])
        assert rec.protocol.why == data["protocol_reason"] and rec.extra == {}
        assert rec.split["class_sizes"] == data["split"]["class_sizes"]
        assert rec.split_fingerprint == data["split_fingerprint"]
        assert rec.selection_metric == data["selection_metric"] == "accuracy"
        # the same JSON back, keys in the same order; and the JSON view reads like it
        assert list(rec.to_dict().items()) == list(data.items())
        assert rec["metrics"] is rec.metrics and rec.get("protocol") == name
        assert score(rec)["value"] == pytest.approx(
            data["cv"]["mean"] if name == "cv" else data["metrics"]["test"]["accuracy"])
        assert read_record(runs / f"schema1-{name}.json").to_dict() == data


def test_a_record_from_before_the_split_and_selection_fields_still_loads(tmp_path):
    from pipeline.runs.records import RunRecord

    data = json.loads((OLD_RECORDS / "schema1-holdout.json").read_text())
    for key in ("dataset", "layout", "split", "split_fingerprint", "protocol",
                "protocol_reason", "selection_metric", "selection_metric_reason",
                "class_weight", "class_weight_reason", "class_counts"):
        del data[key]
    data["features"] = None                                  # null reads as empty
    rec = RunRecord.from_dict(data)
    assert rec.protocol == "holdout" and rec.protocol.why is None
    assert rec.split == {} and rec.features == {} and rec.selection_metric is None
    assert "protocol_reason" not in rec.to_dict() and "class_counts" not in rec.to_dict()


def test_from_dict_refuses_a_record_missing_a_field_naming_the_file_and_the_field(tmp_path):
    from pipeline.runs.records import RunRecord, read_record

    data = json.loads((OLD_RECORDS / "schema1-cv.json").read_text())
    del data["predictions"], data["cv"]["fold_scores"]
    with pytest.raises(StoreError, match=r"run record /some/run\.json: fields missing: "
                                         r"predictions, cv\.fold_scores"):
        RunRecord.from_dict(data, file="/some/run.json")
    path = tmp_path / "run.json"
    path.write_text(json.dumps({**data, "predictions": {}, "kind": "frozen",
                                "metrics": {"test": {}}}))
    with pytest.raises(StoreError, match=rf"{re.escape(str(path))}: fields missing: "
                                         r"metrics\.oof, cv\.fold_scores"):
        read_record(path)
    bad = {**json.loads((OLD_RECORDS / "schema1-holdout.json").read_text()),
           "protocol": "kfold", "history": "none"}
    with pytest.raises(StoreError, match=r"'kfold'.*history \(a JSON array, not str\)"):
        RunRecord.from_dict(bad)


def test_keys_this_version_does_not_know_are_kept_and_written_back(stores, tmp_path):
    from dataclasses import fields

    from pipeline.runs.records import LAYOUT, RunRecord

    # every field is written (the file's order is LAYOUT), nothing else is
    assert set(LAYOUT) == {f.name for f in fields(RunRecord)} - {"extra", "file"} | {
        "protocol_reason"}

    store, _ = stores
    rec = frozen(store)
    rec.update({"written_by_a_later_version": {"x": 1}, "protocol_reason": "holdout (test)"})
    assert rec.extra == {"written_by_a_later_version": {"x": 1}}
    assert rec.protocol.why == "holdout (test)"
    path = save_record(rec, tmp_path / "runs")
    back = load_records(tmp_path / "runs")[0]
    assert back.extra == rec.extra and back.to_dict() == json.loads(path.read_text())
    assert RunRecord.from_dict(back.to_dict()).to_dict() == back.to_dict()
