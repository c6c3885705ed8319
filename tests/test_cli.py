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
from PIL import Image


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

    # --explain: one overlay per image, named by its predicted class, the toy's 16 px crop
    maps = tmp_path / "maps"
    res = run("predict", "--model", rec["run_id"], folder / "red", "--explain", maps,
              "--runs", tmp_path / "runs")
    assert res.exit_code == 0 and f"wrote 8 overlays to {maps}" in res.output, res.output
    overlays = sorted(maps.iterdir())
    assert [p.name for p in overlays] == [f"img_{i:02d}.red.cam.png" for i in range(8)]
    assert Image.open(overlays[0]).size == (16, 16)
    res = run("predict", "--model", rec["run_id"], folder / "red", "--explain", maps,
              "--runs", tmp_path / "runs")
    assert res.exit_code != 0 and "--overwrite" in res.output and "Traceback" not in res.output

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
    # the benchmark is part of the package (an installed wheel runs it too), not a script
    res = run("bench", "extract", "--help")
    assert res.exit_code == 0 and "--skip-naive" in res.output and "bench extract" in res.output


# ------------------------------------------------------------------ one source of defaults


def _library_defaults(source) -> dict:
    """Name -> default of a config dataclass's fields (the library's own, ``cli_default``
    aside) or of a function's keyword parameters."""
    import inspect
    from dataclasses import MISSING, fields, is_dataclass

    if is_dataclass(source):
        return {f.name: f.default for f in fields(source) if f.default is not MISSING}
    return {n: p.default for n, p in inspect.signature(source).parameters.items()
            if p.default is not p.empty}


def _same(value):
    """Defaults compared as the command line shows them: paths as text, sequences as tuples."""
    from pathlib import Path

    if isinstance(value, Path):
        return str(value)
    return tuple(value) if isinstance(value, list) else value


def default_sources() -> dict:
    """Each command -> the config dataclass and the API and workflow functions that take
    the same options (every command is here: a new one must say where its defaults live)."""
    from pipeline import api, configs
    from pipeline.extraction.shards import launch_extract
    from pipeline.workflows.audit import run_audit
    from pipeline.workflows.baseline import run_baseline
    from pipeline.workflows.demo import run_demo
    from pipeline.workflows.explore import run_explore
    from pipeline.workflows.export import run_export
    from pipeline.workflows.finetune import run_finetune_seeds
    from pipeline.workflows.fit import run_fit
    from pipeline.workflows.hierarchy import run_hierarchy
    from pipeline.workflows.ladder import run_ladder
    from pipeline.workflows.predict import run_predict
    from pipeline.workflows.report import build_report
    from pipeline.workflows.track import run_track

    return {
        "extract": [configs.ExtractConfig, api.extract, launch_extract],
        "fit": [configs.FitConfig, api.fit, run_fit],
        "baseline": [configs.BaselineConfig, api.baseline, run_baseline],
        "finetune": [configs.FinetuneConfig, api.finetune, run_finetune_seeds],
        "ladder": [configs.LadderConfig, run_ladder],
        "explore": [configs.ExploreConfig, run_explore],
        "hierarchy": [configs.HierarchyConfig, run_hierarchy],
        "demo": [run_demo, configs.FitConfig],
        "predict": [api.predict, run_predict],
        "export": [api.export, run_export],
        "report": [api.report, build_report],
        "audit": [configs.AuditConfig, api.audit, run_audit],
        "track": [api.track, run_track],
        "backbones": [],
        "bench": [],
    }


#: Options only the command line has (nothing else takes them, so nothing can drift).
CLI_ONLY = {("extract", "merge_shards"), ("backbones", "pattern"), ("backbones", "limit")}


def test_cli_api_and_workflow_defaults_agree_for_every_command():
    """The defaults have one source: every option's default on the command line equals the
    config dataclass's field (or its declared ``cli_default``), and the Python API and the
    workflow functions default to the same, command by command.  The protocol is ``auto``
    everywhere (the workflows once defaulted to holdout)."""
    from dataclasses import fields, is_dataclass

    import click

    from pipeline.cli import cli
    from pipeline.configs import FinetuneConfig

    sources = default_sources()
    assert set(sources) == set(cli.commands)
    disagree, unsourced = [], []
    for name, command in cli.commands.items():
        known = [_library_defaults(s) for s in sources[name]]
        ctx = click.Context(command)
        for param in command.params:
            if param.required or param.param_type_name == "argument":
                continue
            shown = _same(param.get_default(ctx, call=False))
            matched = False
            for source, defaults in zip(sources[name], known):
                if param.name not in defaults:
                    continue
                matched = True
                expected = defaults[param.name]
                if is_dataclass(source):  # the command's own default, where it says so
                    field = next(f for f in fields(source) if f.name == param.name)
                    expected = field.metadata.get("cli_default", expected)
                if _same(expected) != shown:
                    disagree.append(f"{name} --{param.name}: {shown!r} vs {expected!r} "
                                    f"({getattr(source, '__qualname__', source)})")
            if not matched and (name, param.name) not in CLI_ONLY:
                unsourced.append(f"{name} {param.name}")
        for defaults in known[1:]:   # the API and the workflows agree with the config too
            if is_dataclass(sources[name][0]):
                for key, value in defaults.items():
                    if key in known[0] and _same(value) != _same(known[0][key]):
                        disagree.append(f"{name} {key}: {value!r} vs the config's "
                                        f"{known[0][key]!r}")
    assert disagree == [] and unsourced == []
    # the one default the command line sets on purpose: checkpoints, so --resume works
    from pipeline.configs import (
        BaselineConfig,
        ExploreConfig,
        ExtractConfig,
        FitConfig,
        HierarchyConfig,
        LadderConfig,
    )
    declared = [(c.__name__, f.name) for c in (BaselineConfig, ExploreConfig, ExtractConfig,
                                               FinetuneConfig, FitConfig, HierarchyConfig,
                                               LadderConfig)
                for f in fields(c) if "cli_default" in f.metadata]
    assert declared == [("FinetuneConfig", "checkpoint_dir")]
    assert {_library_defaults(s).get("protocol") for v in sources.values() for s in v} \
        <= {"auto", None}


def test_the_defaults_check_sees_a_drifted_default(monkeypatch):
    """The check above fails when the command line and a workflow disagree."""
    from pipeline.workflows import fit as fit_workflow

    def drifted(cfg, runs_dir="elsewhere"):
        return []

    monkeypatch.setattr(fit_workflow, "run_fit", drifted)
    with pytest.raises(AssertionError, match="fit --runs_dir"):
        test_cli_api_and_workflow_defaults_agree_for_every_command()
