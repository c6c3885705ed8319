"""The command line on tmp_path: exit codes, messages, and outputs read back.

Runs click's CliRunner on the toy backbone (registered by conftest before
``cli`` is imported, so it is one of the ``--backbone`` choices).
"""

from __future__ import annotations

import csv
import json

import h5py
import pytest
from conftest import make_folder


def _toy_extract(run, folder, out, *extra):
    return run("extract", "--data", folder, "--backbone", "toy", "--layer", "layer1",
               "--layer", "layer2", "--batch-size", 4, "--workers", 0, "--out", out,
               "--no-progress", *extra)


def test_backbones_lists_taps_channels_and_strides(run):
    res = run("backbones")
    assert res.exit_code == 0
    lines = res.output.splitlines()
    lite0 = lines.index("efficientnet_lite0")
    block = "\n".join(lines[lite0:lite0 + 10])
    assert "layer3  stage blocks.4" in block and "channels   112" in block
    assert "stride 16" in block and "mean (0.5, 0.5, 0.5)" in block
    assert any(line.startswith("resnet50") for line in lines)


@pytest.mark.parametrize("args, names, phrase", [
    # --backbone is checked by the registry (timm/<model> names are open-ended), not a Choice
    (("--backbone", "nope"), "efficientnet_lite0", "unknown backbone 'nope'"),
    (("--layer", "layer9"), "layer4", "is not one of"),
    (("--pool", "median"), "gem", "is not one of"),
])
def test_unknown_names_exit_2_listing_valid_ones(run, args, names, phrase):
    res = run("extract", *args)
    assert res.exit_code == 2
    assert phrase in res.output and names in res.output


def test_fit_unknown_layer_in_store_exits_2(run, toy_folder, tmp_path):
    assert _toy_extract(run, toy_folder, tmp_path / "f").exit_code == 0
    res = run("fit", "--features", tmp_path / "f" / "toy_toy_avg.h5", "--layer", "layer4")
    assert res.exit_code == 2
    assert "layer4" in res.output and "layer1" in res.output and "layer2" in res.output


def test_missing_data_folder_is_a_clear_error(run, tmp_path):
    res = run("extract", "--data", tmp_path / "nowhere", "--out", tmp_path / "f")
    assert res.exit_code == 1
    assert "nowhere" in res.output and "--data DIR" in res.output
    assert not (tmp_path / "f").exists() or not any((tmp_path / "f").iterdir())


def test_one_class_and_too_small_class_are_refused(run, tmp_path):
    make_folder(tmp_path / "one", colours={"red": (255, 0, 0)})
    res = run("extract", "--data", tmp_path / "one", "--backbone", "toy",
              "--layer", "layer2", "--out", tmp_path / "f")
    assert res.exit_code == 1 and "at least 2" in res.output

    make_folder(tmp_path / "small", colours={"red": (255, 0, 0), "blue": (0, 0, 255)})
    for extra in list((tmp_path / "small" / "blue").iterdir())[1:]:
        extra.unlink()
    res = run("extract", "--data", tmp_path / "small", "--backbone", "toy",
              "--layer", "layer2", "--out", tmp_path / "f")
    assert res.exit_code == 1
    assert "blue" in res.output


def test_cuda_without_cuda_is_an_error_not_a_fallback(run, toy_folder, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    res = _toy_extract(run, toy_folder, tmp_path / "f", "--device", "cuda")
    assert res.exit_code == 1
    assert "--device cpu" in res.output
    assert not list((tmp_path / "f").glob("*.h5"))


def test_extract_fit_predict_report_chain(run, tmp_path):
    folder = make_folder(tmp_path / "toy", per_class=8)
    res = _toy_extract(run, folder, tmp_path / "f")
    assert res.exit_code == 0, res.output
    store = tmp_path / "f" / "toy_toy_avg.h5"
    assert res.output.strip().splitlines()[-1] == str(store)
    with h5py.File(store) as f:
        assert f["taps/layer1"].shape == (24, 2)

    again = _toy_extract(run, folder, tmp_path / "f")
    assert "up to date" in again.output

    res = run("fit", "--features", store, "--layer", "all", "--clf", "logreg",
              "--protocol", "holdout", "--runs", tmp_path / "runs")
    assert res.exit_code == 0, res.output
    records = sorted((tmp_path / "runs").glob("*.json"))
    assert len(records) == 2
    rec = json.loads(records[0].read_text())
    for key in ("method", "backbone", "layer", "hyperparameters", "metrics", "fit_seconds",
                "split_sizes", "features"):
        assert key in rec
    assert rec["metrics"]["test"]["accuracy"] == 1.0   # flat colours are separable
    assert (tmp_path / "runs" / f"{rec['run_id']}.skops").is_file()

    res = run("predict", "--model", rec["run_id"], folder / "red", "--out",
              tmp_path / "preds.csv", "--runs", tmp_path / "runs")
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(open(tmp_path / "preds.csv")))
    assert len(rows) == 8 and {r["label"] for r in rows} == {"red"}

    res = run("predict", "--model", rec["run_id"], folder / "red", "--out",
              tmp_path / "preds.csv", "--runs", tmp_path / "runs")
    assert res.exit_code != 0 and "--overwrite" in res.output

    out = tmp_path / "r.html"
    assert run("report", "--runs", tmp_path / "runs", "--out", out).exit_code == 0
    html = out.read_text()
    assert "toy" in html and "<html" in html.lower()
    res = run("report", "--runs", tmp_path / "runs", "--out", out)
    assert res.exit_code != 0 and "--overwrite" in res.output


def test_other_configuration_on_existing_output_is_refused_with_hint(run, toy_folder,
                                                                     tmp_path):
    out = tmp_path / "f" / "store.h5"
    assert _toy_extract(run, toy_folder, out).exit_code == 0
    before = out.read_bytes()
    res = _toy_extract(run, toy_folder, out, "--pool", "max")
    assert res.exit_code != 0
    assert "--overwrite" in res.output and "pool" in res.output
    assert out.read_bytes() == before
    assert _toy_extract(run, toy_folder, out, "--pool", "max", "--overwrite").exit_code == 0


def test_unreadable_image_is_skipped_and_listed(run, toy_folder, tmp_path):
    (toy_folder / "red" / "broken.png").write_bytes(b"not a png at all")
    res = _toy_extract(run, toy_folder, tmp_path / "f")
    assert res.exit_code == 0, res.output
    assert "skipped 1 file(s)" in res.output and "broken.png" in res.output


def test_bench_help_and_unknown_benchmark(run):
    res = run("bench", "--help")
    assert res.exit_code == 0 and "forward-only ceiling" in res.output
    res = run("bench", "decode")
    assert res.exit_code == 2 and "'decode' is not a benchmark; valid: extract" in res.output
