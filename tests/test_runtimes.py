"""Every inference runtime installed here agrees with eager torch.

The tolerance is :data:`pipeline.runtimes.TOLERANCE`: the largest absolute
difference from eager, relative to the largest magnitude of that tap.  A
runtime whose package is not installed is skipped with the reason;
``compile`` runs only on the toy network (compiling the real backbone takes
minutes on 2 cores).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TOY_COLOURS, toy_expected

from pipeline.backbones import get_backbone, load_backbone
from pipeline.data.manifest import bundled_data_root, scan
from pipeline.errors import DeviceError, StoreError, UsageError
from pipeline.extraction import runtimes as rt
from pipeline.extraction.forward import build_extractor
from pipeline.extraction.job import ExtractConfig, run_extract
from pipeline.extraction.loader import ImageDataset
from pipeline.store.hdf5 import FeatureStore

EXPORTED = ("onnx", "openvino")


def _need(runtime):
    if not rt.installed(runtime):
        module, extra = rt.OPTIONAL[runtime]
        pytest.skip(f"{module} is not installed (pip install -e '.[{extra}]')")
    if runtime not in rt.available_runtimes("cpu"):
        pytest.skip(f"runtime {runtime} is not available here (no C++ compiler for compile)")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One export cache for the session, not the user's ~/.cache."""
    return tmp_path_factory.mktemp("runtime-cache")


@pytest.fixture(scope="module")
def toy_extractor():
    return build_extractor(load_backbone("toy"), ("layer1", "layer2"))


@pytest.fixture(scope="module")
def lite0():
    """lite0 cut after layer4, and 5 bundled flowers decoded (an odd batch)."""
    spec = get_backbone("efficientnet_lite0")
    extractor = build_extractor(load_backbone(spec.name), ("layer2", "layer3", "layer4"))
    m = scan(bundled_data_root())
    picks = list(range(0, len(m), len(m) // 5))[:5]
    ds = ImageDataset(m.root, [m.paths[i] for i in picks], picks, spec.preprocessing,
                      hash_files=False)
    batch = torch.from_numpy(np.stack([ds[i].image for i in range(len(ds))]))
    return extractor, spec.preprocessing, batch


def _toy_batch():
    """Flat-colour images (answers known by hand), then random noise; 7 images."""
    flats = [np.broadcast_to(np.array(c, np.uint8).reshape(3, 1, 1), (3, 16, 16))
             for c in TOY_COLOURS.values()]
    noise = np.random.default_rng(0).integers(0, 256, size=(4, 3, 16, 16), dtype=np.uint8)
    return torch.from_numpy(np.concatenate([np.stack(flats), noise]))


def _run(runner, batch):
    with torch.inference_mode():
        return [o.float().numpy() for o in runner(batch)]


def _assert_close(got, want, precision):
    tol = rt.TOLERANCE[precision]
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        err = np.abs(g - w).max() / np.abs(w).max()
        assert err <= tol, f"relative error {err:.2e} over the {precision} tolerance {tol:.0e}"


@pytest.mark.parametrize("runtime", ["compile", *EXPORTED])
def test_toy_runtime_equals_eager_and_hand_computed_taps(runtime, toy_extractor, cache_dir):
    _need(runtime)
    pre = get_backbone("toy").preprocessing
    batch = _toy_batch()
    eager = _run(rt.make_runner(toy_extractor, "eager", "cpu", pre), batch)
    runner = rt.make_runner(toy_extractor, runtime, "cpu", pre, cache=rt.ExportCache(cache_dir))
    assert (runner.runtime, runner.precision) == (runtime, "fp32")
    got = _run(runner, batch)
    _assert_close(got, eager, "fp32")
    for k, rgb in enumerate(TOY_COLOURS.values()):
        for tap, out in zip(("layer1", "layer2"), got):
            np.testing.assert_allclose(out[k], toy_expected(rgb)[tap], rtol=1e-5)
    # A batch of another size (a remainder) goes through the same exported model.
    _assert_close(_run(runner, batch[:3]), [e[:3] for e in eager], "fp32")


@pytest.mark.slow
@pytest.mark.parametrize("runtime", EXPORTED)
def test_lite0_runtime_agrees_with_eager_on_real_photos(runtime, lite0, cache_dir):
    _need(runtime)
    extractor, pre, batch = lite0
    eager = _run(rt.make_runner(extractor, "eager", "cpu", pre), batch)
    runner = rt.make_runner(extractor, runtime, "cpu", pre, cache=rt.ExportCache(cache_dir))
    got = _run(runner, batch)
    assert [g.shape for g in got] == [(5, 40), (5, 112), (5, 320)]
    _assert_close(got, eager, "fp32")
    _assert_close(_run(runner, batch[:2]), [e[:2] for e in eager], "fp32")


@pytest.mark.slow
def test_openvino_bf16_within_its_tolerance(lite0, cache_dir):
    _need("openvino")
    if not rt.cpu_has_bf16():
        pytest.skip("this CPU has no native bf16 (AVX512-BF16 or AMX)")
    extractor, pre, batch = lite0
    eager = _run(rt.make_runner(extractor, "eager", "cpu", pre), batch)
    runner = rt.make_runner(extractor, "openvino", "cpu", pre, precision="bf16",
                            cache=rt.ExportCache(cache_dir))
    got = _run(runner, batch)
    _assert_close(got, eager, "bf16")
    for g, e in zip(got, eager):  # every image's vector keeps its direction
        cosine = (g * e).sum(1) / np.linalg.norm(g, axis=1) / np.linalg.norm(e, axis=1)
        assert cosine.min() > 0.99
    # bf16 really ran: it is measurably further from eager than fp32 would be.
    assert max(np.abs(g - e).max() / np.abs(e).max() for g, e in zip(got, eager)) \
        > rt.TOLERANCE["fp32"]


@pytest.mark.slow
def test_openvino_stream_hands_back_every_batch_in_order_as_single_calls_do(lite0, cache_dir):
    """Batches overlap in the request queue (20 images = requests of 8, 8, 4; a
    batch with no decodable image is None) and still come back in order, image
    by image as eager torch computes them."""
    _need("openvino")
    extractor, pre, batch = lite0
    runner = rt.make_runner(extractor, "openvino", "cpu", pre, cache=rt.ExportCache(cache_dir))
    eager = rt.make_runner(extractor, "eager", "cpu", pre)
    big = torch.cat([batch, batch.flip(0), batch, batch.flip(2)])
    batches = [big, batch[:3], None, batch.flip(0), big, batch[1:2], big]
    want = [None if b is None else _run(eager, b) for b in batches]
    got = list(runner.stream((f"tag{k}", b) for k, b in enumerate(batches)))
    assert [tag for tag, _, _ in got] == [f"tag{k}" for k in range(len(batches))]
    for (_tag, outs, seconds), w in zip(got, want):
        assert seconds >= 0
        if w is None:
            assert outs is None
            continue
        _assert_close([o.numpy() for o in outs], w, "fp32")
    assert [o.shape[0] for o in got[0][1]] == [20, 20, 20]


def _refuse(what):
    def refuse(*args, **kwargs):
        raise AssertionError(f"{what} was not expected here")

    return refuse


#: One backbone of each family (EfficientNet-Lite with its weights; a timm vision
#: transformer and a torchvision ResNet, random weights: no download).
FAMILIES = [("efficientnet_lite0", "imagenet"), ("timm/deit_tiny_patch16_224", "none"),
            ("resnet18", "none")]


@pytest.mark.parametrize(("name", "weights"), FAMILIES)
def test_fast_openvino_conversion_equals_eager_and_is_converted_once(name, weights, tmp_path,
                                                                     monkeypatch):
    """The fast conversion (one trace as a function, OpenVINO's PyTorch frontend directly;
    never ``ov.convert_model``) gives every default tap within the fp32 tolerance of
    eager; a second runner with the same key takes the cached IR without building or
    converting the network."""
    _need("openvino")
    import openvino

    monkeypatch.setattr(openvino, "convert_model", _refuse("ov.convert_model"))
    spec = get_backbone(name)
    extractor = build_extractor(load_backbone(name, weights), spec.default_taps)
    size = spec.preprocessing.input_size
    batch = torch.from_numpy(np.random.default_rng(0).integers(
        0, 256, size=(3, 3, size, size), dtype=np.uint8))
    eager = _run(rt.make_runner(extractor, "eager", "cpu", spec.preprocessing), batch)
    cache = rt.ExportCache(tmp_path, key=f"test:{name}:{weights}")
    runner = rt.make_runner(extractor, "openvino", "cpu", spec.preprocessing, cache=cache)
    _assert_close(_run(runner, batch), eager, "fp32")
    monkeypatch.setattr(rt, "convert_openvino", _refuse("a second conversion"))
    again = rt.make_runner(_refuse("building the network"), "openvino", "cpu",
                           spec.preprocessing, cache=cache)
    _assert_close(_run(again, batch[:2]), [e[:2] for e in eager], "fp32")


def test_tracing_threads_are_one_inside_and_restored_after_an_error():
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError), rt.tracing_threads():
        assert torch.get_num_threads() == 1
        raise RuntimeError("a failed trace")
    assert torch.get_num_threads() == before


def test_auto_picks_an_installed_runtime_and_its_precision():
    cpu = rt.resolve_runtime("auto", "cpu")
    assert cpu in rt.available_runtimes("cpu") and rt.installed(cpu)
    assert cpu == next(r for r in rt.CPU_PREFERENCE if r in rt.available_runtimes("cpu"))
    assert rt.resolve_precision("auto", cpu, "cpu") == "fp32"
    assert rt.resolve_runtime("auto", "cuda") == "eager"
    assert rt.resolve_precision("auto", "eager", "cuda") == "fp16"


def test_unusable_runtime_and_precision_say_how_to_fix(monkeypatch):
    with pytest.raises(UsageError, match="valid: auto, eager, compile, onnx, openvino"):
        rt.resolve_runtime("tensorrt", "cpu")
    with pytest.raises(DeviceError, match="cannot run on cuda here; available: eager, compile"):
        rt.resolve_runtime("openvino", "cuda:0")
    with pytest.raises(UsageError, match="valid there: fp32"):
        rt.resolve_precision("fp16", "eager", "cpu")
    monkeypatch.setattr(rt.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DeviceError, match=r"pip install -e '\.\[openvino\]'"):
        rt.resolve_runtime("openvino", "cpu")
    with pytest.raises(DeviceError, match=r"pip install -e '\.\[onnx\]'"):
        rt.resolve_runtime("onnx", "cpu")
    assert rt.resolve_runtime("auto", "cpu") in ("compile", "eager")


@pytest.mark.parametrize("runtime", EXPORTED)
def test_export_is_cached_and_keyed_by_the_weights(runtime, cache_dir, tmp_path):
    _need(runtime)
    export = rt.export_onnx if runtime == "onnx" else rt.export_openvino
    extractor = build_extractor(load_backbone("toy"), ("layer1", "layer2"))
    first = export(extractor, 16, tmp_path)
    stamp = first.stat().st_mtime_ns
    assert export(extractor, 16, tmp_path) == first and first.stat().st_mtime_ns == stamp
    assert export(extractor, 24, tmp_path) != first                # input size
    with torch.no_grad():
        extractor.stages[0][0].weight.mul_(2.0)                     # other weights
    assert export(extractor, 16, tmp_path) != first
    other_taps = build_extractor(load_backbone("toy"), ("layer1",))
    assert export(other_taps, 16, tmp_path) != first                # other cut and taps


def test_store_records_runtime_and_precision_in_its_key(toy_folder, tmp_path, monkeypatch,
                                                        cache_dir):
    runtime = next(r for r in EXPORTED if rt.installed(r)) if any(
        rt.installed(r) for r in EXPORTED) else None
    if runtime is None:
        pytest.skip("neither onnxruntime nor openvino is installed")
    monkeypatch.setenv(rt.CACHE_ENV, str(cache_dir))
    cfg = dict(data=str(toy_folder), backbone="toy", layers=("layer1", "layer2"),
               out=str(tmp_path / "f"), progress=False, batch_size=4, workers=0)
    summary = run_extract(ExtractConfig(runtime=runtime, **cfg))
    store = FeatureStore(summary.path)
    assert (store.config["runtime"], store.config["precision"]) == (runtime, "fp32")
    assert (summary.runtime, summary.precision) == (runtime, "fp32")
    eager_path = tmp_path / "e"
    eager = FeatureStore(run_extract(ExtractConfig(runtime="eager", **dict(
        cfg, out=str(eager_path)))).path)
    _assert_close([store.X("layer2")], [eager.X("layer2")], "fp32")
    with pytest.raises(StoreError, match="differs in: runtime"):
        run_extract(ExtractConfig(runtime="eager", **cfg))
