"""What a user gets with no flags is the fast path: ``--runtime auto`` is the default of
extract and of fine-tuning's trunk cache, it falls back to eager (one log line)
when the fast runtime cannot take a network, and OpenVINO neither forks its
telemetry nor silences our log."""

from __future__ import annotations

import logging
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import TESTS, make_folder

import cli
from pipeline.backbones import BackboneSpec, Preprocessing, Tap, register_backbone
from pipeline.extraction import runtimes as rt
from pipeline.extraction.job import ExtractConfig, run_extract
from pipeline.store.hdf5 import FeatureStore

FAST = rt.available_runtimes("cpu")[0]
needs_fast = pytest.mark.skipif(FAST not in ("openvino", "onnx"),
                                reason="no fast CPU runtime installed here")


def _build_unconvertible():
    """A stage OpenVINO's converter has no translation for (singular values)."""
    import torch.nn as nn

    class SingularValues(nn.Module):
        def forward(self, x):
            s = torch.linalg.svdvals(x.flatten(2))[..., None, None]
            return s.expand(-1, -1, x.shape[2], x.shape[3])

    net = nn.Module()
    net.a = SingularValues()
    return net


register_backbone(BackboneSpec(
    name="toy-unconvertible", description="a stage no converter takes (tests only)",
    build=_build_unconvertible, stages=lambda m: [("a", m.a)], taps=(Tap("layer1", "a", 3, 1),),
    preprocessing=Preprocessing(input_size=8, crop_pct=1.0, interpolation="nearest",
                                mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)),
    load_weights=lambda model, weights: "none", imagenet_identity=lambda: "none"), replace=True)


@needs_fast
def test_extract_with_no_runtime_flag_uses_the_fast_runtime(tmp_path):
    folder = make_folder(tmp_path / "img", per_class=4)
    res = CliRunner().invoke(cli.cli, ["extract", "--data", str(folder), "--backbone", "toy",
                                       "--layer", "layer1", "--layer", "layer2",
                                       "--out", str(tmp_path / "fast"), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert f"(runtime {FAST}:fp32)" in res.output
    fast = FeatureStore(next((tmp_path / "fast").glob("*.h5")))
    assert fast.config["runtime"] == FAST
    eager = FeatureStore(run_extract(ExtractConfig(
        data=str(folder), backbone="toy", layers=("layer1", "layer2"),
        out=str(tmp_path / "eager"), runtime="eager",
        progress=False, workers=0)).path)
    for tap in fast.taps:
        a, b = fast.X(tap), eager.X(tap)
        assert np.abs(a - b).max() <= rt.TOLERANCE["fp32"] * np.abs(b).max()


@needs_fast
def test_auto_falls_back_to_eager_with_one_line_saying_why(tmp_path, caplog):
    folder = make_folder(tmp_path / "img", per_class=3)
    with caplog.at_level(logging.INFO):
        summary = run_extract(ExtractConfig(
            data=str(folder), backbone="toy-unconvertible", layers=("layer1",),
            out=str(tmp_path / "f"), progress=False, workers=0))
    lines = [r.getMessage() for r in caplog.records if "falling back to eager" in r.getMessage()]
    assert len(lines) == 1 and "cannot run this network" in lines[0], lines
    assert summary.n_extracted == 9
    with pytest.raises(Exception, match="aten::linalg_svdvals"):   # asked for by name: fails
        rt.make_runner(_build_unconvertible().a, FAST, "cpu", SimpleNamespace(input_size=8),
                       cache=rt.ExportCache(tmp_path / "c", example=torch.zeros(2, 3, 8, 8)))


@needs_fast
def test_trunk_cache_runs_on_the_fast_runtime_within_tolerance(tmp_path):
    from pipeline.backbones import load_backbone
    from pipeline.train.trunk_cache import trunk_runner

    loaded = load_backbone("resnet18", "none")
    trunk = torch.nn.Sequential(*[m for _, m in loaded.stages()[:3]]).eval()
    x = torch.randn(5, 3, 32, 32)
    fast = trunk_runner(trunk, 32, "auto")
    assert fast.runtime == FAST
    with torch.inference_mode():
        want = trunk(x)
    (got,) = fast(x)                  # one output per cut: one cut here
    assert got.shape == want.shape
    assert (got - want).abs().max() <= rt.TOLERANCE["fp32"] * want.abs().max()


PROBE = f"""
import logging, sys
sys.path[:0] = [{str(TESTS)!r}, {str(TESTS.parent)!r}]
import conftest
from conftest import make_folder
from pathlib import Path
from pipeline.extraction.job import ExtractConfig, run_extract
logging.basicConfig(level=logging.INFO)
make_folder(Path(sys.argv[1]) / "img", per_class=3)
run_extract(ExtractConfig(data=sys.argv[1] + "/img", backbone="toy", layers=("layer1",),
                          out=sys.argv[1] + "/f", progress=False, workers=0))
import psutil
print("telemetry", sys.modules.get("openvino_telemetry", "absent"))
print("children", len(psutil.Process().children(recursive=True)))
print("root level", logging.getLogger().level)
"""


@pytest.mark.skipif(FAST != "openvino", reason="OpenVINO is not the fast runtime here")
def test_openvino_sends_no_telemetry_and_keeps_our_log_level(tmp_path):
    env = {"WORKBENCH_CACHE_DIR": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin",
           "HOME": str(tmp_path)}                 # a new cache: the conversion runs
    res = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path)], capture_output=True,
                         text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr
    assert "converting the network to OpenVINO" in res.stderr
    assert "telemetry None" in res.stdout and "children 0" in res.stdout
    assert f"root level {logging.INFO}" in res.stdout
    assert not (tmp_path / "intel").exists()       # no consent or client-id files written
