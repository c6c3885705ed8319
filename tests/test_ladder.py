"""The course ladder under cross-validation on tiny data: its fine-tuning rungs share one
trunk cache, and its rungs do not answer one class on imbalanced classes."""

from __future__ import annotations

import pytest
from conftest import make_folder

from pipeline.backbones import BackboneSpec, Preprocessing, Tap, register_backbone
from pipeline.configs import LADDER_CV_CNN_WIDTH, LADDER_HEAD_EPOCHS, PRESETS, LadderConfig
from pipeline.extraction.job import ExtractConfig, run_extract
from pipeline.runs.records import find_record
from pipeline.train.baselines import DEFAULTS
from pipeline.train.trunk_cache import TrunkCache
from pipeline.workflows.ladder import ladder_configs, run_ladder

FINETUNE_RUNGS = [name for name, _ in ladder_configs(None)]


def build_tiny4():
    """Four small conv-BN-ReLU stages (one per tap layer1..layer4), random init (seed 0
    in :func:`pipeline.backbones.load_backbone`)."""
    import torch.nn as nn

    def stage(c_in, c_out, stride):
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
                             nn.BatchNorm2d(c_out), nn.ReLU())

    net = nn.Module()
    net.s1, net.s2, net.s3, net.s4 = (stage(3, 4, 2), stage(4, 6, 1), stage(6, 8, 2),
                                      stage(8, 8, 1))
    return net


TINY4 = BackboneSpec(
    name="tiny4",
    description="four conv-BN-ReLU stages, taps layer1..layer4 (tests only)",
    build=build_tiny4,
    stages=lambda m: [("s1", m.s1), ("s2", m.s2), ("s3", m.s3), ("s4", m.s4)],
    taps=(Tap("layer1", "s1", 4, 2), Tap("layer2", "s2", 6, 2), Tap("layer3", "s3", 8, 4),
          Tap("layer4", "s4", 8, 4)),
    preprocessing=Preprocessing(input_size=16, crop_pct=1.0, interpolation="nearest",
                                mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)),
    load_weights=lambda model, weights: "tiny4-random",
    imagenet_identity=lambda: "tiny4-random",
)
register_backbone(TINY4, replace=True)


@pytest.fixture(scope="module")
def imbalanced_store(tmp_path_factory):
    """2 classes, 14 red and 6 blue flat-colour images (imbalanced: 2.3x), all taps."""
    root = tmp_path_factory.mktemp("ladder")
    make_folder(root / "img", per_class=14, colours={"red": (240, 0, 0)}, size=(20, 20))
    make_folder(root / "img", per_class=6, colours={"blue": (0, 0, 200)}, size=(20, 20))
    summary = run_extract(ExtractConfig(data=str(root / "img"), backbone="tiny4",
                                        layers=("all",), out=str(root / "f"), progress=False,
                                        workers=0))
    return str(summary.path)


def test_finetuning_rungs_fill_one_trunk_cache_once_under_cv(imbalanced_store, tmp_path,
                                                              trunk_passes):
    """Every fine-tuning rung of the ladder, cross-validated (15 folds each), reads a
    trunk cache of every image filled by one pass through the trunk: the head-only rung
    the whole backbone's pooled output, the others layer3's (two depths, one pass)."""
    cache = TrunkCache()
    rows = run_ladder(LadderConfig(features=imbalanced_store, protocol="cv", epochs=1,
                                   views=1, rungs=",".join(FINETUNE_RUNGS)),
                      tmp_path / "runs", cache)
    assert [r.label.split(" [")[0] for r in rows[:-1]] == FINETUNE_RUNGS and rows[-1].reference
    assert trunk_passes == [20]          # one pass, every image (the cv layout)
    full, maps = sorted((p["all"][0].shape for p in cache.memory.values()), key=len)
    assert full == (20, 1, 8) and maps == (20, 1, 8, 4, 4)   # (n, views, C[, H, W])
    # the head-only rung trains for its own epochs (cheap on pooled outputs), not --epochs,
    # and so does the recommended preset (the last fine-tuning rung)
    head = find_record(rows[0].run_ids[0], tmp_path / "runs")
    assert 1 < len(head.history) <= LADDER_HEAD_EPOCHS
    assert all(len(find_record(r.run_ids[0], tmp_path / "runs").history) == 1
               for r in rows[1:-2])
    preset = find_record(rows[-2].run_ids[0], tmp_path / "runs")
    assert len(preset.history) == PRESETS["recommended"]["epochs"]


def test_the_cnn_rung_is_narrower_under_cv(imbalanced_store, tmp_path):
    """Under cv the scratch CNN is fitted once per fold: the ladder's is LADDER_CV_CNN_WIDTH
    wide and says so; under holdout it keeps the baseline's own width."""
    for protocol, width in (("cv", LADDER_CV_CNN_WIDTH), ("holdout", DEFAULTS["cnn"]["width"])):
        row, _ = run_ladder(LadderConfig(features=imbalanced_store, protocol=protocol,
                                         cnn_epochs=1, rungs="cnn"), tmp_path / protocol)
        record = find_record(row.run_ids[0], tmp_path / protocol)
        assert record.hyperparameters["width"] == width, protocol
        assert ("width 16" in row.label) == (protocol == "cv"), row.label
