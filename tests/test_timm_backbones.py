"""timm and torchvision backbones: taps from metadata against real outputs, token pooling by
hand, weights (file, hub through a local server, offline), CLI names, several backbones over
one folder (same split, side-by-side report), fine-tuning.

Every network here has RANDOM weights (or weights saved by the test): the accuracies these
tests produce check the plumbing and are never results.  Models are shrunk through timm
kwargs (img_size, depth, widths) where that keeps the family's structure, so all of this
runs on a CPU in well under a minute and a half.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_folder

from pipeline.backbones import get_backbone, load_backbone, register_backbone
from pipeline.backbones.timm_models import timm_spec
from pipeline.errors import UsageError, WeightsError
from pipeline.extraction.forward import build_extractor, pool

ROOT = Path(__file__).resolve().parents[1]

#: family -> (timm model, kwargs that shrink it), ten families.
TINY = {
    "resnet": ("resnet18", {}),
    "efficientnet": ("efficientnet_b0", {}),
    "mobilenetv3": ("mobilenetv3_small_050", {}),
    "convnext": ("convnext_atto", {}),
    "regnet": ("regnetx_002", {}),
    "vit": ("vit_tiny_patch16_224", {"img_size": 32, "depth": 4}),
    "deit-distilled": ("deit_tiny_distilled_patch16_224", {"img_size": 32, "depth": 4}),
    "dinov2-registers": ("vit_small_patch14_reg4_dinov2",
                         {"img_size": 28, "depth": 4, "embed_dim": 64, "num_heads": 2}),
    "clip": ("vit_base_patch16_clip_224",
             {"img_size": 32, "depth": 4, "embed_dim": 64, "num_heads": 2}),
    "swin": ("swin_tiny_patch4_window7_224",
             {"img_size": 64, "depths": (1, 1, 1, 1), "window_size": 2, "embed_dim": 32,
              "num_heads": (1, 1, 1, 1)}),
}
#: Prefix tokens each token family must declare (class, distillation, register tokens).
PREFIX = {"vit": 1, "deit-distilled": 2, "dinov2-registers": 5, "clip": 1}


def tiny(family: str):
    """The spec ``tiny/<family>`` (registered once; random weights with ``none``)."""
    name = f"tiny/{family}"
    try:
        return get_backbone(name)
    except UsageError:
        model, kwargs = TINY[family]
        return register_backbone(timm_spec(model, name=name, **kwargs))


def _input_size(spec) -> int:
    return spec.preprocessing.input_size if spec.family == "vit" or "img_size" in \
        TINY[spec.name.split("/", 1)[1]][1] else 64


@pytest.mark.parametrize("family", list(TINY))
def test_declared_taps_match_real_outputs_and_head_is_timms_pre_logits(family):
    spec = tiny(family)
    assert spec.tap_names == ("layer1", "layer2", "layer3", "layer4", "head")
    loaded = load_backbone(spec.name, "none")
    pooling = "cls+mean" if spec.family == "vit" else "avg"
    extractor = build_extractor(loaded, spec.tap_names, pooling)
    size = _input_size(spec)
    x = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)
    seen = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: seen.__setitem__(n, o.shape))
             for n, m in zip(extractor.stage_names, extractor.stages)]
    try:
        with torch.no_grad():
            outs = extractor(x)
            xn = (x.float() - extractor.mean) / extractor.std
            model = loaded.model
            reference = model.forward_head(model.forward_features(xn), pre_logits=True)
    finally:
        for h in hooks:
            h.remove()
    for tap, out in zip(spec.tap_names, outs):
        declared = spec.tap(tap)
        assert tuple(out.shape) == (2, declared.width(pooling)), tap
        shape = seen[declared.stage]
        if declared.kind == "map":       # (N, C, H, W) at the declared stride
            assert shape[1] == declared.channels and size // shape[-1] == declared.stride, tap
        elif declared.kind == "tokens":  # (N, prefix + patches, D)
            patches = (size // declared.stride) ** 2
            assert shape[2] == declared.channels, tap
            assert shape[1] == spec.num_prefix_tokens + patches, tap
        else:
            assert tuple(shape) == (2, declared.channels), tap
    # the head tap is exactly timm's own forward_features + forward_head(pre_logits=True)
    torch.testing.assert_close(outs[-1], reference, rtol=0, atol=0)
    if family in PREFIX:
        assert spec.num_prefix_tokens == PREFIX[family]
        assert spec.poolings == ("cls", "mean", "cls+mean")


@pytest.mark.parametrize("family", ["convnext", "vit", "swin"])
def test_network_is_cut_after_the_deepest_tap(family):
    spec = tiny(family)
    extractor = build_extractor(load_backbone(spec.name, "none"), ["layer2"],
                                spec.poolings[0])
    assert extractor.stage_names[-1] == spec.tap("layer2").stage
    assert "head" not in extractor.stage_names


def test_token_pooling_by_hand():
    # 1 image, 1 class token + 4 register tokens + 3 patch tokens, 2 dims
    tokens = torch.tensor([[[10.0, 20.0],                              # class token
                            [99.0, 99.0], [99.0, 99.0], [99.0, 99.0], [99.0, 99.0],  # registers
                            [1.0, 2.0], [3.0, 4.0], [8.0, 0.0]]])      # patches
    assert pool(tokens, "cls", prefix_tokens=5).tolist() == [[10.0, 20.0]]
    assert pool(tokens, "mean", prefix_tokens=5).tolist() == [[4.0, 2.0]]  # registers left out
    assert pool(tokens, "cls+mean", prefix_tokens=5).tolist() == [[10.0, 20.0, 4.0, 2.0]]
    assert pool(tokens, "mean", prefix_tokens=1)[0].tolist() == \
        pytest.approx([(99 * 4 + 12) / 7, (99 * 4 + 6) / 7])
    vector = torch.tensor([[1.0, -2.0]])
    assert pool(vector, "max").tolist() == [[1.0, -2.0]]  # a pre-logits head is kept as is
    with pytest.raises(UsageError, match="for transformer tokens"):
        pool(torch.zeros(1, 2, 3, 3), "cls")
    with pytest.raises(UsageError, match="for CNN feature maps"):
        pool(tokens, "gem")


def test_token_pooling_through_a_real_vit_extractor():
    spec = tiny("dinov2-registers")
    loaded = load_backbone(spec.name, "none")
    x = torch.randint(0, 256, (2, 3, 28, 28), dtype=torch.uint8)
    captured = {}
    assert spec.tap("layer4").stage == "blocks.3"  # the last of the 4 blocks
    hook = loaded.model.blocks[3].register_forward_hook(
        lambda m, i, o: captured.__setitem__("t", o))
    try:
        with torch.no_grad():
            outs = {p: build_extractor(loaded, ["layer4"], p)(x)[0]
                    for p in ("cls", "mean", "cls+mean")}
    finally:
        hook.remove()
    t = captured["t"]
    assert t.shape[1] == 5 + 4  # class + 4 registers + a 2x2 grid of 14 px patches
    torch.testing.assert_close(outs["cls"], t[:, 0])
    torch.testing.assert_close(outs["mean"], t[:, 5:].mean(1))
    torch.testing.assert_close(outs["cls+mean"], torch.cat([t[:, 0], t[:, 5:].mean(1)], 1))


def test_pooling_must_fit_the_family():
    with pytest.raises(UsageError, match="valid for it: cls, mean, cls\\+mean"):
        tiny("vit").check_pooling("avg")
    with pytest.raises(UsageError, match="valid for it: avg, max, gem"):
        tiny("convnext").check_pooling("cls")
    with pytest.raises(UsageError, match="valid for it: avg, max, gem"):
        build_extractor(load_backbone("tiny/swin", "none"), ["layer1"], "mean")


def test_resolver_reads_taps_and_preprocessing_from_metadata():
    r50 = get_backbone("timm/resnet50.a1_in1k")
    assert [(t.name, t.stage, t.channels, t.stride) for t in r50.taps] == [
        ("layer1", "layer1", 256, 4), ("layer2", "layer2", 512, 8),
        ("layer3", "layer3", 1024, 16), ("layer4", "layer4", 2048, 32),
        ("head", "head", 2048, 32)]
    pre = r50.preprocessing  # a1_in1k: timm's config, not torchvision's
    assert (pre.input_size, pre.crop_pct, pre.interpolation) == (224, 0.95, "bicubic")
    dino = get_backbone("timm/vit_small_patch14_dinov2.lvd142m")
    assert (dino.preprocessing.input_size, dino.preprocessing.crop_pct) == (518, 1.0)
    assert dino.num_prefix_tokens == 1 and dino.tap("layer4").channels == 384
    assert [t.stage for t in dino.taps[:4]] == ["blocks.2", "blocks.5", "blocks.8", "blocks.11"]
    clip = get_backbone("timm/vit_base_patch16_clip_224.openai")
    assert clip.preprocessing.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert clip.tap("head").channels == 768  # pre-logits, not the 512-d projection
    mnv3 = get_backbone("timm/mobilenetv3_large_100")
    assert mnv3.tap("layer4").channels == 960 and mnv3.tap("head").channels == 1280
    assert get_backbone("timm/vit_small_patch14_dinov2.lvd142m") is dino  # memoised
    with pytest.raises(UsageError, match="backbones --search"):
        get_backbone("timm/no_such_model_v9")


def test_store_key_includes_the_preprocessing():
    from dataclasses import replace

    from pipeline.configs import ExtractConfig
    from pipeline.extraction.target import store_config
    from pipeline.store.hdf5 import config_key

    spec = tiny("vit")
    cfg = ExtractConfig(backbone=spec.name, weights="none", pool="cls")
    config = store_config(cfg, spec)
    assert config["preprocessing"] == json.loads(json.dumps(spec.preprocessing.to_dict()))
    other = replace(spec, preprocessing=replace(spec.preprocessing, crop_pct=1.0))
    assert config_key(store_config(cfg, other)) != config_key(config)


@pytest.mark.parametrize("name,enum", [
    ("mobilenet_v2", "MobileNet_V2_Weights"), ("mobilenet_v3_large", "MobileNet_V3_Large_Weights"),
    ("efficientnet_b0", "EfficientNet_B0_Weights"), ("convnext_tiny", "ConvNeXt_Tiny_Weights")])
def test_torchvision_preprocessing_is_the_weights_own(name, enum):
    import torchvision

    t = getattr(torchvision.models, enum).IMAGENET1K_V1.transforms()
    pre = get_backbone(name).preprocessing
    assert pre.input_size == t.crop_size[0]
    assert pre.input_size / pre.crop_pct == pytest.approx(t.resize_size[0])
    assert pre.interpolation == t.interpolation.value
    assert pre.mean == pytest.approx(tuple(t.mean)) and pre.std == pytest.approx(tuple(t.std))


def test_weights_path_safetensors_or_state_dict_without_pickle(tmp_path):
    import timm
    from safetensors.torch import save_file

    spec = tiny("convnext")
    torch.manual_seed(1)
    full = timm.create_model("convnext_atto", pretrained=False)  # with its 1000-way classifier
    state = {k: v.contiguous() for k, v in full.state_dict().items()}
    save_file(state, tmp_path / "w.safetensors")
    torch.save(state, tmp_path / "w.pth")
    for path in (tmp_path / "w.safetensors", tmp_path / "w.pth"):
        loaded = load_backbone(spec.name, str(path))
        assert loaded.weights_id.startswith("file:sha256:")
        got = loaded.model.state_dict()
        assert set(got) == {k for k in state if not k.startswith("head.fc.")}
        assert all(torch.equal(got[k], state[k]) for k in got)
    save_file({k: v.contiguous() for k, v in
               timm.create_model("resnet18").state_dict().items()}, tmp_path / "r18.safetensors")
    with pytest.raises(WeightsError, match="do not fit timm model convnext_atto"):
        load_backbone(spec.name, str(tmp_path / "r18.safetensors"))
    with pytest.raises(WeightsError, match="no such file"):
        load_backbone(spec.name, str(tmp_path / "missing.safetensors"))


# ------------------------------------------------------------------ the hub, for real


HUB_MODEL = "mobilenetv3_small_050.lamb_in1k"


class HubHandler(http.server.BaseHTTPRequestHandler):
    """Enough of the Hugging Face hub for hf_hub_download: ``/{repo}/resolve/{rev}/{file}``
    with the headers huggingface_hub reads (X-Repo-Commit, ETag, Content-Length)."""

    files: dict = {}      # "repo/filename" -> bytes
    requests: list = []
    commit = "0123456789abcdef0123456789abcdef01234567"

    def log_message(self, *args):
        pass

    def _lookup(self):
        m = re.match(r"^/(.+)/resolve/([^/]+)/(.+)$", self.path.split("?")[0])
        self.requests.append((self.command, self.path))
        return self.files.get(f"{m.group(1)}/{m.group(3)}") if m else None

    def _headers(self, body):
        if body is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("X-Error-Message", "Entry not found")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return False
        self.send_response(200)
        self.send_header("X-Repo-Commit", self.commit)
        self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        return True

    def do_HEAD(self):
        self._headers(self._lookup())

    def do_GET(self):
        body = self._lookup()
        if self._headers(body):
            self.wfile.write(body)


def _python(code: str, env: dict, *args):
    env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


HUB_CHECK = """
import json, sys, torch
from safetensors.torch import load_file
from pipeline.backbones import load_backbone, weights_identity, get_backbone
name = "timm/" + sys.argv[1]
ident = weights_identity(get_backbone(name), "imagenet")
loaded = load_backbone(name, "imagenet")
ref = load_file(sys.argv[2])
got = loaded.model.state_dict()
print(json.dumps({"same": all(torch.equal(got[k], ref[k]) for k in got), "n": len(got),
                  "id": loaded.weights_id, "ident": ident}))
"""


def test_hub_download_through_a_local_server_then_offline(tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(3)
    model = timm.create_model(HUB_MODEL, pretrained=False)
    weights = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
    HubHandler.files = {f"timm/{HUB_MODEL}/model.safetensors": weights.read_bytes()}
    HubHandler.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HubHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hf_home = tmp_path / "hf"
    try:
        res = _python(HUB_CHECK, {"HF_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}",
                                  "HF_HOME": str(hf_home), "HF_HUB_DISABLE_XET": "1"},
                      HUB_MODEL, weights)
    finally:
        server.shutdown()
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert out["same"] and out["n"] > 100
    assert out["id"] == out["ident"] == f"hf-hub:timm/{HUB_MODEL}/model.safetensors:sha256:{sha}"
    assert ("GET", f"/timm/{HUB_MODEL}/resolve/main/model.safetensors") in HubHandler.requests
    blobs = list((hf_home / "hub").rglob("model.safetensors"))
    assert blobs, "the file should be in huggingface_hub's cache under HF_HOME"
    # Offline with an empty cache: the CLI names --weights PATH.  (HF_HUB_OFFLINE=1, the
    # hub's own switch: a dead endpoint gives the same message after ~30 s of hub retries.)
    folder = make_folder(tmp_path / "img", per_class=4)
    res = _python("import cli; cli.main()",
                  {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "1",
                   "HF_HOME": str(tmp_path / "empty")},
                  "extract", "--data", folder, "--backbone", f"timm/{HUB_MODEL}",
                  "--out", tmp_path / "f", "--no-progress")
    assert res.returncode == 1, res.stderr[-2000:]
    assert "--weights PATH" in res.stderr and "Hugging Face hub" in res.stderr


# ------------------------------------------------------------------ CLI


def test_cli_takes_timm_names_and_searches_metadata(monkeypatch, tmp_path):
    from click.testing import CliRunner

    import cli

    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    res = runner.invoke(cli.cli, ["backbones", "--search", "mobilenetv3_small", "--limit", "2"])
    assert res.exit_code == 0, res.output
    assert "timm/mobilenetv3_small_050.lamb_in1k" in res.output
    assert "layer1 8ch/4" in res.output and "pool: avg | max | gem" in res.output
    assert "more matches (taps shown for the first 2" in res.output
    res = runner.invoke(cli.cli, ["extract", "--backbone", "timm/no_such_model_v9"])
    assert res.exit_code == 2 and "backbones --search" in res.output
    res = runner.invoke(cli.cli, ["extract", "--backbone", "vgg99"])
    assert res.exit_code == 2 and "resnet18" in res.output and "timm/<model>" in res.output
    folder = make_folder(tmp_path / "img", per_class=4)
    vit = tiny("vit").name   # registered here too: the test must not rely on an earlier one
    res = runner.invoke(cli.cli, ["extract", "--data", str(folder), "--backbone", vit,
                                  "--weights", "none", "--pool", "avg", "--no-progress"])
    assert res.exit_code == 2 and "cls, mean, cls+mean" in res.output
    assert "cls+mean" in runner.invoke(cli.cli, ["extract", "--help"]).output


# ------------------------------------------------------------------ several backbones


@pytest.fixture(scope="module")
def two_stores(tmp_path_factory):
    """A tiny ViT (cls+mean) and a tiny ConvNeXt (avg), random weights, over one folder."""
    from pipeline.extraction.job import ExtractConfig, run_extract
    from pipeline.store.hdf5 import FeatureStore

    root = tmp_path_factory.mktemp("two")
    folder = make_folder(root / "img", per_class=10, size=(40, 36))
    stores = {}
    for family, pooling in (("vit", "cls+mean"), ("convnext", "avg")):
        summary = run_extract(ExtractConfig(
            data=str(folder), backbone=tiny(family).name, weights="none", layers=("all",),
            pool=pooling, out=str(root / "features"), progress=False, workers=0))
        stores[family] = FeatureStore(summary.path)
    return folder, stores


def test_backbones_over_one_folder_share_split_and_folds(two_stores):
    _, stores = two_stores
    vit, cnn = stores["vit"], stores["convnext"]
    assert vit.paths == cnn.paths
    assert np.array_equal(vit.split_codes, cnn.split_codes)
    assert np.array_equal(vit.folds, cnn.folds) and vit.has_stored_folds
    assert vit.path.name == "img_tiny-vit_cls+mean.h5"   # the / of the name is not a folder
    assert vit.tap_channels["layer2"] == 2 * 192 and vit.tap_channels["head"] == 192
    assert cnn.tap_channels == {"layer1": 40, "layer2": 80, "layer3": 160, "layer4": 320,
                                "head": 320}
    cost = json.loads(cnn.attrs["cost"])
    assert cost["input_size"] == 224
    assert 0 < cost["gflops"]["layer1"] < cost["gflops"]["layer4"] <= cost["gflops"]["head"]
    assert cost["params"]["head"] == sum(
        p.numel() for p in load_backbone("tiny/convnext", "none").model.parameters())


def test_report_compares_two_backbones_side_by_side(two_stores, tmp_path):
    from pipeline.configs import FitConfig
    from pipeline.workflows.fit import run_fit
    from pipeline.workflows.report import build_report

    _, stores = two_stores
    runs = tmp_path / "runs"
    for store in stores.values():  # the real fit: its labels name the backbone
        run_fit(FitConfig(features=str(store.path), layer="all", protocol="holdout"), runs)
    html = build_report(runs, tmp_path / "report.html", efficiency_budget=5).read_text()
    m = re.search(r'<section id="backbones".*?</section>', html, re.S)
    assert m, "the backbones section is missing"
    part = m.group(0)
    assert "tiny/vit" in part and "tiny/convnext" in part
    assert "Accuracy vs depth per backbone" in part and "Pareto" in part
    assert part.count("data:image/svg+xml;base64,") == 2
    assert "random weights: not a result" in part
    assert "Best backbone for this data:" in part and "GFLOPs" in part
    assert "Best backbone for this data:" in re.search(
        r'<section id="advice".*?</section>', html, re.S).group(0)


# ------------------------------------------------------------------ fine-tuning


@pytest.mark.parametrize("family", ["convnext", "vit"])
def test_finetune_one_epoch_on_a_timm_model(two_stores, tmp_path, family):
    from pipeline.train.finetune import FinetuneConfig, block_groups
    from pipeline.workflows.finetune import run_finetune

    _, stores = two_stores
    spec = tiny(family)
    names = [n for n, _ in load_backbone(spec.name, "none").stages()]
    groups = block_groups(spec, names)
    assert [g for g, _ in groups] == ["layer1", "layer2", "layer3", "layer4", "head"]
    cfg = FinetuneConfig(features=str(stores["convnext"].path), backbone=spec.name,
                         weights="none", unfreeze="layer4", input_size=32, epochs=1,
                         batch_size=8, views=1, protocol="holdout")
    record, _ = run_finetune(cfg, tmp_path / "runs")
    assert record["kind"] == "finetune" and len(record["history"]) == 1
    assert set(record["history"][0]["lr"]) == {"classifier", "head", "layer4"}
    assert record["metrics"]["test"]["n"] > 0


@pytest.mark.parametrize("family", ["vit", "swin"])
def test_onnx_export_of_a_timm_network_agrees_with_eager(family, tmp_path):
    from pipeline.extraction.runtimes import TOLERANCE, ExportCache, make_runner

    spec = tiny(family)
    extractor = build_extractor(load_backbone(spec.name, "none"), spec.tap_names,
                                spec.poolings[-1])
    size = spec.preprocessing.input_size
    x = torch.randint(0, 256, (3, 3, size, size), dtype=torch.uint8)
    with torch.no_grad():
        eager = extractor(x)
    onnx = make_runner(extractor, "onnx", "cpu", spec.preprocessing,
                       cache=ExportCache(tmp_path))(x)
    for a, b in zip(onnx, eager):
        assert float((a - b).abs().max()) <= TOLERANCE["fp32"] * float(b.abs().max())


def test_auto_runtime_falls_back_to_eager_in_one_logged_line(monkeypatch, tmp_path, caplog):
    import logging

    from pipeline.extraction import runtimes

    def refuse(*args, **kwargs):
        raise RuntimeError("exporter cannot trace this network\nmore detail")

    monkeypatch.setattr(runtimes, "export_onnx", refuse)
    spec = tiny("vit")
    extractor = build_extractor(load_backbone(spec.name, "none"), ["layer1"], "cls")
    with caplog.at_level(logging.WARNING, logger="pipeline.extraction.runtimes"):
        run = runtimes.make_runner(extractor, "onnx", "cpu", spec.preprocessing,
                                   cache=runtimes.ExportCache(tmp_path), fallback=True)
    assert run.runtime == "eager"
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "falling back to eager" in lines[0] and "\n" not in lines[0]
    with pytest.raises(RuntimeError, match="cannot trace"):  # asked for explicitly: no fallback
        runtimes.make_runner(extractor, "onnx", "cpu", spec.preprocessing,
                             cache=runtimes.ExportCache(tmp_path))
