"""Hardening, round two: what a hostile tester found, each a regression test on real files.

1. a second data folder of the same name never updates the first one's store in place;
2. runs with other hyperparameters are other strategies in the report, told apart;
3. runs of two stores (re-extracted with another class) are never pooled into one row;
4. cross-validation on tiny data (3 images per class) finds a validation split or says why;
5. ``predict`` on ``../folder`` or a folder under a hidden one finds its images;
6. no float option takes nan or inf, on the command line or in the Python API;
12. an empty ``--data`` is an error, not the bundled flowers;
15. ``predict --out`` on a read-only file system names ``--out`` and its file, not a temp file;
16. a crafted torch file is refused without passing on torch's advice to load it unsafely;
17. a file that is not HDF5 given as a store is called so, never "corrupt" (no move-aside advice).

Everything runs on the toy backbone of conftest (fine-tuning: a small resnet18 at random
initialisation on 32-px inputs).
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace

import numpy as np
import pytest
from conftest import assert_clean, make_folder

from pipeline.configs import BaselineConfig, ExploreConfig, ExtractConfig, FinetuneConfig
from pipeline.errors import UsageError
from pipeline.extraction.job import run_extract
from pipeline.runs.groups import group_runs, latest_per_seed
from pipeline.runs.records import load_records
from pipeline.store.hdf5 import FeatureStore

STORE = "photos_toy_avg.h5"


def _toy(folder, out, *extra):
    return ("extract", "--data", folder, "--backbone", "toy", "--layer", "layer1",
            "--layer", "layer2", "--workers", 0, "--out", out, "--no-progress", *extra)


def _extract(folder, out, **kw):
    return run_extract(ExtractConfig(data=str(folder), backbone="toy", layers=("layer1",),
                                     out=str(out), progress=False, workers=0, **kw))


# ------------------------------------------------------------ 1. two folders of one name


def test_another_data_folder_of_the_same_name_never_replaces_a_store(tmp_path, run, caplog):
    site_a = make_folder(tmp_path / "siteA" / "photos", per_class=4)
    site_b = make_folder(tmp_path / "siteB" / "photos", per_class=5)
    out = tmp_path / "features"
    assert run(*_toy(site_a, out)).exit_code == 0
    before = (out / STORE).read_bytes()
    msg = assert_clean(run(*_toy(site_b, out)), str(out / STORE), str(site_a.resolve()),
                       str(site_b.resolve()), "--out", "--overwrite")
    assert "move the old store aside" in msg
    assert (out / STORE).read_bytes() == before              # siteA's features untouched
    # --overwrite keeps siteA's store beside the new one, never deletes it
    with caplog.at_level(logging.WARNING):
        assert run(*_toy(site_b, out, "--overwrite")).exit_code == 0
    store = FeatureStore(out / STORE)
    assert store.data_root == site_b.resolve() and len(store) == 15
    aside = [p for p in out.iterdir() if p.name.startswith(STORE + ".")
             and not p.name.endswith((".lock", ".partial"))]
    assert len(aside) == 1 and aside[0].read_bytes() == before
    assert aside[0].name in "\n".join(r.getMessage() for r in caplog.records)
    # the same folder again is still an update in place
    assert run(*_toy(site_b, out)).exit_code == 0
    assert FeatureStore(out / STORE).data_root == site_b.resolve()


# ------------------------------------------------------------ 2. other hyperparameters


@pytest.fixture(scope="module")
def toy_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("hard2")
    folder = make_folder(root / "img", per_class=8, size=(40, 36))
    return str(_extract(folder, root / "f").path)


def test_finetune_runs_with_other_learning_rates_are_two_strategies(toy_store, tmp_path,
                                                                    caplog):
    from pipeline.workflows.finetune import run_finetune

    base = FinetuneConfig(features=toy_store, backbone="resnet18", weights="none",
                          input_size=32, epochs=1, batch_size=8, views=1, unfreeze="none",
                          protocol="holdout", lr=1e-3)
    runs = tmp_path / "runs"
    run_finetune(base, runs)
    run_finetune(replace(base, lr=1e-2), runs)
    records = load_records(runs)
    with caplog.at_level(logging.WARNING):
        kept, superseded = latest_per_seed(records)
    assert not superseded and len(kept) == 2, caplog.text
    names = [g["name"] for g in group_runs(records)]
    assert len(names) == 2 and len(set(names)) == 2, names
    assert any("lr 0.001" in n for n in names) and any("lr 0.01" in n for n in names), names
    # the page names both in the tables and above their learning curves
    from pipeline.workflows.report import build_report

    html = build_report(runs, tmp_path / "r.html", efficiency_budget=0).read_text()
    for name in names:
        assert html.count(name.replace("'", "&#39;")) >= 3, name


def test_baselines_with_other_options_are_two_strategies(toy_store, tmp_path):
    from pipeline.workflows.baseline import run_baseline

    runs = tmp_path / "runs"
    for epochs in (1, 2):
        run_baseline(BaselineConfig(kind="mlp", features=toy_store, protocol="holdout",
                                    epochs=epochs, options={"size": 8}), runs)
    records = load_records(runs)
    assert not latest_per_seed(records)[1]
    names = [g["name"] for g in group_runs(records)]
    assert len(set(names)) == 2 and any("epochs 1" in n for n in names), names


# ------------------------------------------------------------ 3. runs of two stores


def test_runs_of_an_earlier_store_are_never_pooled_with_the_current_ones(tmp_path, run,
                                                                         caplog):
    from pipeline.workflows.report import build_report

    folder = make_folder(tmp_path / "photos", per_class=6)
    out = tmp_path / "features"
    assert run(*_toy(folder, out)).exit_code == 0
    assert run("fit", "--features", out, "--layer", "layer2", "--protocol", "holdout",
               "--runs", "runs").exit_code == 0
    make_folder(folder, per_class=6, colours={"white": (250, 250, 250)})
    assert run(*_toy(folder, out, "--overwrite")).exit_code == 0
    assert run("fit", "--features", out, "--layer", "layer2", "--protocol", "holdout",
               "--seed", 1, "--runs", "runs").exit_code == 0
    records = load_records(tmp_path / "runs")
    old = next(r for r in records if len(r.classes) == 3)
    # the library never pools them
    groups = group_runs(records)
    assert all(len({r.features["fingerprint"] for r in g["runs"]}) == 1 for g in groups)
    # the report shows the current store's runs and names the earlier one
    with caplog.at_level(logging.WARNING):
        html = build_report(tmp_path / "runs", tmp_path / "r.html",
                            efficiency_budget=0).read_text()
    warned = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    assert old.run_id in warned and "earlier store" in warned, warned
    assert old.run_id in html and "s.d. over 2 seeds" not in html


# ------------------------------------------------------------ 4. cv on tiny data


@pytest.mark.parametrize("n_classes, per_class", [(3, 3), (5, 5)])
def test_inner_validation_split_on_tiny_folds(n_classes, per_class):
    from pipeline.data.partition import inner_split

    labels = np.repeat(np.arange(n_classes), per_class)
    rows = np.flatnonzero(np.arange(len(labels)) % per_class)   # an outer training fold
    tr, va = inner_split(labels, rows, seed=0)
    assert len(tr) and len(va) and not set(tr) & set(va)
    assert set(tr) | set(va) == set(rows)


def test_mlp_baseline_under_cv_on_three_images_per_class(tmp_path):
    from pipeline.workflows.baseline import run_baseline

    folder = make_folder(tmp_path / "img", per_class=3, colours={
        "a": (200, 0, 0), "b": (0, 200, 0), "c": (0, 0, 200)})
    store = _extract(folder, tmp_path / "f").path
    record, _ = run_baseline(BaselineConfig(kind="mlp", features=str(store), protocol="cv",
                                            epochs=1, options={"size": 8}), tmp_path / "runs")
    assert record.protocol.name == "cv" and record.cv["fold_scores"]


# ------------------------------------------------------------ 5. predict and hidden folders


@pytest.mark.parametrize("where", ["parent", "hidden-ancestor"])
def test_predict_finds_images_below_dotted_paths(tmp_path, run, where):
    folder = make_folder(tmp_path / "photos", per_class=4)
    out = tmp_path / "features"
    assert run(*_toy(folder, out)).exit_code == 0
    assert run("fit", "--features", out, "--layer", "layer2", "--protocol", "holdout",
               "--runs", "runs").exit_code == 0
    run_id = load_records(tmp_path / "runs")[0].run_id
    new = make_folder(tmp_path / ".cache" / "new" if where == "hidden-ancestor"
                      else tmp_path / "new", per_class=1)
    (new / "red" / ".hidden.png").write_bytes((new / "red" / "img_00.png").read_bytes())
    (new / ".git").mkdir()
    (new / ".git" / "x.png").write_bytes((new / "red" / "img_00.png").read_bytes())
    sub = tmp_path / "runs"
    os.chdir(sub)                         # the folder is given as ../new (or ../.cache/new)
    rel = os.path.relpath(new, sub)
    res = run("predict", "--model", run_id, rel, "--runs", ".")
    assert res.exit_code == 0, res.output
    listed = [ln for ln in res.output.splitlines() if ".png" in ln]
    assert len(listed) == 3, res.output                 # hidden ones below it left out
    assert not any("hidden" in ln or ".git" in ln for ln in listed)


# ------------------------------------------------------------ 6. nan and inf


@pytest.mark.parametrize("args", [
    ("finetune", "--lr", "nan"), ("finetune", "--lr", "inf"),
    ("finetune", "--lr-factor", "nan"), ("finetune", "--label-smoothing", "nan"),
    ("finetune", "--gamma", "-inf"), ("explore", "--lr", "nan"), ("explore", "--lr", "inf"),
])
def test_float_options_refuse_non_finite_values(run, args):
    res = run(*args)
    assert res.exit_code == 2, res.output
    assert args[1] in res.output and "finite" in res.output, res.output


@pytest.mark.parametrize("make", [
    lambda: FinetuneConfig(lr=float("nan")),
    lambda: FinetuneConfig(lr_factor=float("inf")),
    lambda: FinetuneConfig(label_smoothing=float("nan")),
    lambda: replace(FinetuneConfig(), weight_decay=float("nan")),
    lambda: ExploreConfig(lrs=(1e-3, float("nan"))),
])
def test_configs_refuse_non_finite_values_in_the_api(make):
    with pytest.raises(UsageError, match="finite"):
        make()


# ------------------------------------------------------------ 12, 17. paths that are not data


def test_an_empty_data_path_is_an_error_not_the_bundled_flowers(run, tmp_path):
    """``extract --data ""`` used to extract the bundled flowers silently."""
    res = run("extract", "--data", "", "--backbone", "toy", "--out", tmp_path / "f",
              "--no-progress")
    assert res.exit_code != 0 and "Traceback" not in res.output, res.output
    assert "--data" in res.output and "empty path" in res.output, res.output
    assert not (tmp_path / "f").exists() or not list((tmp_path / "f").glob("*.h5"))
    with pytest.raises(UsageError, match="empty path"):
        run_extract(ExtractConfig(data="  ", backbone="toy", out=str(tmp_path / "g")))


def test_a_file_that_is_not_a_store_is_called_so_and_never_moved(run, tmp_path):
    """``fit --features /etc/passwd`` was called a corrupt store, with the advice that
    ``extract --overwrite`` moves the file aside."""
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0:root:/root:/bin/bash\n")
    for cmd in (("fit", "--features", passwd, "--layer", "layer1"),
                ("baseline", "--kind", "pixels", "--features", passwd)):
        out = assert_clean(run(*cmd), str(passwd), "not an HDF5 feature store", "--features")
        assert "--overwrite" not in out and "corrupt" not in out, out
    assert passwd.read_text() == "root:x:0:0:root:/root:/bin/bash\n"


# ------------------------------------------------------------ 16. no unsafe advice


class _Payload:
    """Unpickling this would call ``Path.touch(marker)``: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        from pathlib import Path

        return (Path.touch, (self.marker,))


def test_a_crafted_torch_file_is_refused_without_torchs_unsafe_advice(run, tmp_path):
    """``extract --weights evil.pth`` and ``predict --model evil.pt`` were refused, but the
    message quoted torch's advice to load the file with ``weights_only=False``."""
    import torch

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": _Payload(marker)}, evil)
    folder = make_folder(tmp_path / "img", per_class=4)
    for cmd in (("extract", "--data", folder, "--backbone", "resnet18", "--weights", evil,
                 "--out", tmp_path / "f", "--no-progress"),
                ("predict", "--model", evil, folder)):
        res = run(*cmd)
        assert res.exit_code != 0 and "Traceback" not in res.output, res.output
        assert str(evil) in res.output and "never unpickled" in res.output, res.output
        assert "weights_only" not in res.output, res.output
    assert not marker.exists()


# ------------------------------------------------------------ 15. --out on a read-only folder


def test_predict_out_on_a_read_only_file_system_names_the_option_and_the_file(tmp_path, run,
                                                                              tmpfs):
    """The message named the temporary file beside ``--out`` (``.preds.csv.<pid>.tmp``)."""
    folder = make_folder(tmp_path / "photos", per_class=4)
    assert run(*_toy(folder, tmp_path / "features")).exit_code == 0
    assert run("fit", "--features", tmp_path / "features", "--layer", "layer2", "--protocol",
               "holdout", "--runs", tmp_path / "runs").exit_code == 0
    run_id = load_records(tmp_path / "runs")[0].run_id
    ro = tmpfs(tmp_path / "ro", "size=1m,ro")
    out = ro / "preds.csv"
    msg = assert_clean(run("predict", "--model", run_id, folder, "--runs", tmp_path / "runs",
                           "--out", out), str(out), "--out")
    assert ".tmp" not in msg, msg
