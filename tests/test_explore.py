"""The transfer explorer: a real grid of fine-tuning runs, its resumable record, the report.

Networks are resnet18 with random weights at 32 px on the bundled flowers' split:
these tests check the machinery (cells, sizes, caches, resume, the chart's data and
verdicts), never accuracy.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from report_helpers import add_explore_record, add_frozen_runs, make_store

from pipeline.errors import UsageError
from pipeline.runs.stats import wilson_interval
from pipeline.workflows.explore import (
    ExploreConfig,
    depth_plan,
    grid_sizes,
    latest_explore,
    record_path,
    run_explore,
)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("explore")
    store = make_store(None, root / "features")
    runs = root / "runs"
    record = add_explore_record(store, runs, cache_dir=root / "cache")
    return store, runs, record, root


def test_depths_name_the_groups_they_train():
    groups = ["layer1", "layer2", "layer3", "layer4", "head"]
    assert depth_plan("0", groups) == ("none", [], "classifier only")
    assert depth_plan("1", groups) == ("head", ["head"], "top 1 group (head)")
    assert depth_plan("2", groups) == ("layer4", ["layer4", "head"],
                                       "top 2 groups (layer4, head)")
    assert depth_plan("5", groups)[0] == "all" and depth_plan("all", groups)[0] == "all"
    for bad in ("6", "-1", "top"):
        with pytest.raises(UsageError, match="0 .. 5|number of top block"):
            depth_plan(bad, groups)


def test_sizes_as_large_as_the_split_are_left_out():
    labels = np.repeat([0, 1, 2], [22, 20, 22])
    assert grid_sizes(("10", "30", "100", "all"), labels) == [10, None]
    assert grid_sizes(("all", "5", "5"), labels) == [5, None]
    with pytest.raises(UsageError, match="whole number"):
        grid_sizes(("0",), labels)


def test_every_cell_is_a_real_run_on_its_draw(study):
    store, runs, record, _ = study
    cells = record["cells"]
    assert record["complete"] and len(cells) == 3 * 2 * 2
    counts = np.bincount(store.y("train"))
    assert {c["per_class"] for c in cells} == {4, None}
    for c in cells:
        assert c["n_train"] == (4 * len(counts) if c["per_class"] == 4 else counts.sum())
        correct = [ch == "1" for ch in c["test_correct"]]
        assert len(correct) == c["n_test"] == len(store.y("test"))
        assert c["test_accuracy"] == pytest.approx(np.mean(correct))
        assert (c["test_low"], c["test_high"]) == wilson_interval(sum(correct), len(correct))
        assert c["cached_trunk"] == (c["depth"] != "all")
        assert c["epochs_run"] == 1 and len(c["val_curve"]) == 1
    params = {c["depth"]: c["trainable_params"] for c in cells}
    assert params["0"] < params["1"] < params["all"]
    # one trunk cache per cached depth, all computed in one pass before the first cell
    # (the grid's trunk_cache_seconds) and read by every cell
    assert record["trunk_cache_seconds"] > 0
    assert all(c["cache_seconds"] == 0 for c in cells)
    assert latest_explore(runs)["key"] == record["key"]


def test_an_interrupted_grid_resumes_at_the_next_cell_with_the_same_results(study, caplog):
    """A kill between cells leaves the record of the cells before it (it is written
    atomically after each); the same command then runs only the missing cells, reusing the
    trunk caches on disk, and they come out as in the uninterrupted grid."""
    store, _runs, full, root = study
    runs = root / "resumed"
    cfg = ExploreConfig(features=str(store.path), depths=("0", "1", "all"), sizes=("4", "all"),
                        lrs=(1e-2, 3e-2), epochs=1, views=2, backbone="resnet18",
                        weights="none", extra={"input_size": 32, "batch_size": 16})
    path = record_path(runs, full["key"])
    path.parent.mkdir(parents=True)
    cut = json.loads(record_path(study[1], full["key"]).read_text())
    cut["cells"], cut["complete"] = cut["cells"][:5], False
    path.write_text(json.dumps(cut))
    with caplog.at_level("INFO"):
        record, _ = run_explore(cfg, runs, root / "cache")
    assert "5 of 12 cells done" in caplog.text
    assert caplog.text.count("loaded cached trunk outputs") == 1   # depth 1's, from disk
    assert len(record["cells"]) == 12 and record["complete"]
    assert record["cells"][:5] == cut["cells"]
    rest = {(c["depth"], c["per_class"], c["lr"]): c for c in record["cells"][5:]}
    for c in full["cells"][5:]:
        again = rest[(c["depth"], c["per_class"], c["lr"])]
        for k in ("val_accuracy", "test_correct", "trainable_params", "n_train"):
            assert again[k] == c[k], (c["label"], c["per_class"], c["lr"], k)


def test_a_damaged_record_is_moved_aside_not_lost(study):
    store, _runs, full, root = study
    runs = root / "damaged"
    cfg = ExploreConfig(features=str(store.path), depths=("0",), sizes=("all",), lrs=(1e-2,),
                        epochs=1, views=2, backbone="resnet18", weights="none",
                        extra={"input_size": 32, "batch_size": 16})
    path = record_path(runs, cfg.key(store.fingerprint))
    path.parent.mkdir(parents=True)
    path.write_text('{"kind": "explore", "cells": [')
    record, written = run_explore(cfg, runs, root / "cache")
    assert len(record["cells"]) == 1 and written.is_file()
    aside = list(path.parent.glob("*.unreadable-*"))
    assert len(aside) == 1 and aside[0].read_text() == '{"kind": "explore", "cells": ['


def test_cli_refuses_a_depth_the_backbone_lacks(study, run):
    store, *_ = study
    res = run("explore", "--features", str(store.path), "--depth", "9", "--per-class", "all",
              "--lr", "1e-2", "--epochs", "1")
    assert res.exit_code == 2, res.output
    assert "--depth 9" in res.output and "0 .. " in res.output
    res = run("explore", "--features", str(store.path), "--lr", "0")
    assert res.exit_code == 2 and "--lr" in res.output


def test_report_section_draws_the_grid_and_says_whether_gaps_are_noise(study):
    from pipeline.workflows.report import build_report

    store, runs, record, root = study
    add_frozen_runs(store, runs, clfs=("logreg",))
    page = build_report(runs, root / "report.html").read_text()
    sec = re.search(r'<section id="explore".*?</section>', page, re.S).group(0)
    data = json.loads(re.search(r'<script type="application/json" id="explore-data">(.*?)'
                                r'</script>', sec, re.S).group(1))
    assert data["depths"] == ["0", "1", "all"] and data["sizes"] == ["4", "all"]
    assert len(data["cells"]) == 12 and "test_correct" not in data["cells"][0]
    assert sec.count("McNemar") + sec.count("the classifier alone is the choice") == 2
    assert 'id="explore-size"' in sec and 'id="explore-lr"' in sec
    # chosen on validation only: the verdict's depth is the best validation cell of its size
    from pipeline.reporting.explore import size_verdicts

    for row in size_verdicts(record):
        size = None if row["size"] == "all" else int(row["size"])
        here = [c for c in record["cells"] if c["per_class"] == size]
        assert row["best"]["val_accuracy"] == max(c["val_accuracy"] for c in here)


def test_end_to_end_cells_over_the_limit_are_listed_not_run(study):
    from pipeline.reporting.explore import explore_section

    store, _runs, _full, root = study
    cfg = ExploreConfig(features=str(store.path), depths=("0", "all"), sizes=("4", "all"),
                        lrs=(1e-2,), epochs=1, views=2, backbone="resnet18", weights="none",
                        max_end_to_end=30, extra={"input_size": 32, "batch_size": 16})
    record, _ = run_explore(cfg, root / "limited", root / "cache")
    ran = {(c["depth"], c["per_class"]) for c in record["cells"]}
    assert ran == {("0", 4), ("0", None), ("all", 4)}   # 4 x 5 classes = 20 <= 30 images
    assert [(k["depth"], k["per_class"], k["n_train"]) for k in record["skipped"]] == [
        ("all", None, int(len(store.y("train"))))]
    assert record["complete"]
    section = explore_section(record)
    assert section["n_cells"] == section["n_planned"] == 3 and section["skipped"]
    # the limit is not part of the grid's identity: lifting it resumes and runs the rest
    from dataclasses import replace

    again, path = run_explore(replace(cfg, max_end_to_end=None), root / "limited", root / "cache")
    assert len(again["cells"]) == 4 and again["skipped"] == [] and again["complete"]
    assert again["cells"][:3] == record["cells"]
    assert len(list(path.parent.glob("explore-*.json"))) == 1
