"""Defaults that work for every backbone (issue 24): ``--pool auto`` (the default) is the
backbone's own pooling, resolved in one place (:meth:`BackboneSpec.resolve_pooling`) from
timm's ``global_pool`` (``cls`` for a ViT pooling its class token, ``mean`` for one
averaging its patch tokens or without a class token, ``avg`` for CNNs and Swin), said in
the output and in the store's name, so a store extracted with that pooling by name is the
one a default run finds; no ``--layer`` is the defaults a backbone has.  ``extract`` with
default options extracts timm models of each kind here and every registered backbone in
``tests/test_registry_defaults.py`` (a module of its own, so pytest-xdist runs the two on
two workers).

Only ``--weights none`` is passed where no weights are offline: those networks have RANDOM
weights, and the stores check the plumbing, never a result.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import pytest
from conftest import assert_default_store, extract_with_defaults, listed_backbones

from pipeline.backbones import get_backbone, register_backbone, resolve_taps
from pipeline.backbones.timm_models import timm_spec
from pipeline.errors import UsageError

#: timm models besides DeiT (a class token, its own test) and the pooling ``auto`` resolves
#: to: a ViT without a class token (a register token, global_pool='avg') and ConvNeXt (a
#: CNN).  (Swin's is checked on the meta device below: its conversion alone takes 10 s.)
TIMM_DEFAULTS = {"timm/vit_wee_patch16_reg1_gap_256": "mean", "timm/convnext_atto": "avg"}


def test_deit_extracts_with_default_options_pooling_its_class_token(run, two_class_folder,
                                                                     tmp_path):
    out, store = extract_with_defaults(run, two_class_folder, "timm/deit_tiny_patch16_224",
                                       tmp_path / "f")
    assert "pooling: cls (the backbone's own: timm global_pool='token', its class token)" \
        in out
    assert "taps: layer2, layer3, layer4 (the backbone's default)" in out
    assert store.name == "img_timm-deit_tiny_patch16_224_cls.h5"
    # the class token: 192 wide (cls+mean would be 2 x 192)
    assert_default_store(store, get_backbone("timm/deit_tiny_patch16_224"), "cls", 6)
    with h5py.File(store) as f:
        assert f["taps/layer4"].shape == (6, 192)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TIMM_DEFAULTS))
def test_timm_models_extract_with_default_options(name, run, two_class_folder, tmp_path):
    out, store = extract_with_defaults(run, two_class_folder, name, tmp_path / "f")
    pooling = TIMM_DEFAULTS[name]
    assert f"pooling: {pooling} (the backbone's own: timm global_pool=" in out
    assert store.name == f"img_{name.replace('/', '-')}_{pooling}.h5"
    assert_default_store(store, get_backbone(name), pooling, 6)


@pytest.mark.parametrize("model, kwargs, pooling, why", [
    ("deit_tiny_patch16_224", {}, "cls", "global_pool='token', its class token"),
    # a class token, but the model's own head averages the patch tokens
    ("vit_tiny_patch16_224", {"global_pool": "avg"}, "mean", "the mean of its patch tokens"),
    ("vit_wee_patch16_reg1_gap_256", {}, "mean", "global_pool='avg'"),
    ("vit_base_patch16_siglip_224", {}, "mean", "'map' and no class token"),
    ("swin_tiny_patch4_window7_224", {}, "avg", "global_pool='avg'"),
    ("convnext_atto", {}, "avg", "global_pool='avg'"),
    ("resnet18", {"global_pool": "max"}, "max", "global_pool='max'"),
])
def test_auto_pooling_is_the_timm_models_own(model, kwargs, pooling, why):
    spec = timm_spec(model, name=f"defaults/{model}", **kwargs)  # meta device: no weights
    own = f"the backbone's own: {spec.default_pooling_why}"
    assert spec.resolve_pooling("auto") == (pooling, own)
    assert why in spec.default_pooling_why
    assert spec.resolve_pooling(spec.poolings[-1]) == (spec.poolings[-1], "as asked")


def test_registry_cnns_pool_avg_and_a_wrong_pooling_names_auto():
    for name in listed_backbones():
        assert get_backbone(name).resolve_pooling("auto")[0] == "avg", name
    with pytest.raises(UsageError, match=r"valid for it: cls, mean, cls\+mean \(or "
                                         r".*--pool auto.*, its own: cls\)"):
        get_backbone("timm/deit_tiny_patch16_224").resolve_pooling("avg")


def test_default_taps_are_those_of_the_defaults_a_backbone_has():
    assert resolve_taps(get_backbone("resnet18"), ()) == ("layer2", "layer3", "layer4")
    assert get_backbone("toy").default_taps == ("layer2",)        # layer1, layer2 only
    shallow = timm_spec("vit_tiny_patch16_224", name="defaults/vit-depth2", img_size=32,
                        depth=2)
    assert shallow.tap_names == ("layer1", "layer2", "head")
    assert resolve_taps(shallow, ()) == ("layer2",)


def test_a_store_extracted_with_avg_by_name_is_the_one_a_default_run_finds(run, toy_folder,
                                                                             tmp_path):
    # the run fixture works in tmp_path: features/ is the default --out and fit's folder
    res = run("extract", "--data", toy_folder, "--backbone", "toy", "--pool", "avg",
              "--no-progress", "--workers", 0)
    assert res.exit_code == 0, res.output
    assert "pooling: avg (as asked)" in res.output
    again = run("extract", "--data", toy_folder, "--backbone", "toy", "--no-progress",
                "--workers", 0)
    assert again.exit_code == 0, again.output
    assert "up to date" in again.output and "pooling: avg (the backbone's own: " in again.output
    assert [p.name for p in (tmp_path / "features").glob("*.h5")] == ["toy_toy_avg.h5"]
    with h5py.File(tmp_path / "features" / "toy_toy_avg.h5") as f:
        assert list(f["taps"]) == ["layer2"]    # the toy's default: the one of layer2-4 it has
    res = run("fit", "--layer", "layer2", "--protocol", "holdout", "--runs", tmp_path / "runs")
    assert res.exit_code == 0, res.output   # its store: the newest in features/
    record = json.loads(next((tmp_path / "runs").glob("*.json")).read_text())
    assert Path(record["features"]["path"]).name == "toy_toy_avg.h5"


def test_api_extract_with_defaults_uses_the_backbones_own_pooling(two_class_folder,
                                                                    tmp_path):
    import pipeline as wb

    spec = register_backbone(timm_spec("vit_tiny_patch16_224", name="defaults/vit-tiny",
                                       img_size=32, depth=4), replace=True)
    store = wb.extract(two_class_folder, backbone=spec.name, weights="none",
                       out=tmp_path / "f", progress=False)
    assert store.path.name == "img_defaults-vit-tiny_cls.h5"
    assert store.summary.resolved[0].startswith("pooling: cls (the backbone's own: ")
    assert store.tap_channels == {"layer2": 192, "layer3": 192, "layer4": 192}
