"""Fine-tuning: block groups, learning-rate plan, freezing, BatchNorm policy, records."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from pipeline.backbones import get_backbone, load_backbone
from pipeline.errors import UsageError
from pipeline.train.finetune import FinetuneConfig, block_groups, make_plan
from pipeline.workflows.finetune import run_finetune
from pipeline.workflows.ladder import summarise_group

LITE0_STAGES = ["stem"] + [f"blocks.{i}" for i in range(7)] + ["conv_head"]
RESNET_STAGES = ["stem", "layer1", "layer2", "layer3", "layer4"]


def test_block_groups_follow_the_taps():
    assert block_groups(get_backbone("efficientnet_lite0"), LITE0_STAGES) == [
        ("layer1", ["stem", "blocks.0", "blocks.1"]), ("layer2", ["blocks.2"]),
        ("layer3", ["blocks.3", "blocks.4"]), ("layer4", ["blocks.5", "blocks.6"]),
        ("head", ["conv_head"])]
    # resnet's head tap shares layer4's stage: no empty group
    assert [g for g, _ in block_groups(get_backbone("resnet18"), RESNET_STAGES)] == [
        "layer1", "layer2", "layer3", "layer4"]


def test_plan_learning_rates_are_ten_times_smaller_per_group_by_default():
    spec = get_backbone("efficientnet_lite0")
    plan = make_plan(spec, LITE0_STAGES, FinetuneConfig(unfreeze="layer3", lr=1e-2))
    assert plan.trainable == ["head", "layer4", "layer3"]
    assert plan.lrs == pytest.approx({"classifier": 1e-2, "head": 1e-3, "layer4": 1e-4,
                                      "layer3": 1e-5})
    assert plan.cut == LITE0_STAGES.index("blocks.3")
    gradual = make_plan(spec, LITE0_STAGES, FinetuneConfig(unfreeze="layer4", gradual=3))
    assert gradual.start_epoch == {"classifier": 0, "head": 3, "layer4": 6}
    head_only = make_plan(spec, LITE0_STAGES, FinetuneConfig(unfreeze="none"))
    assert head_only.trainable == [] and head_only.cut == len(LITE0_STAGES)
    assert make_plan(spec, LITE0_STAGES, FinetuneConfig(unfreeze="all")).cut == 0
    capped = make_plan(spec, LITE0_STAGES, FinetuneConfig(unfreeze="none", cache_at="layer3"))
    assert capped.cut == LITE0_STAGES.index("blocks.5")


def test_unknown_unfreeze_lists_the_groups():
    with pytest.raises(UsageError, match="layer1, layer2, layer3, layer4, head"):
        make_plan(get_backbone("efficientnet_lite0"), LITE0_STAGES,
                  FinetuneConfig(unfreeze="layer9"))


def _tiny_cfg(store, **kw):
    base = dict(features=store, backbone="resnet18", weights="none", input_size=32,
                epochs=2, batch_size=8, lr=1e-2, lr_factor=0.5, views=2, protocol="holdout")
    base.update(kw)
    return FinetuneConfig(**base)


def _saved_top(record):
    return torch.load(record["model_file"], map_location="cpu", weights_only=True)


def _stage_params(state, stage_index, prefix=""):
    return {k: v for k, v in state.items() if k.startswith(f"stages.{stage_index}.")}


@pytest.mark.parametrize("bn", ["frozen-eval", "train"])
def test_frozen_groups_and_batchnorm_policy(tiny_store, tmp_path, bn):
    original = load_backbone("resnet18", "none").model.state_dict()
    record, path = run_finetune(_tiny_cfg(tiny_store, unfreeze="layer4", cache="off", bn=bn),
                                tmp_path / "runs")
    top = _saved_top(record)["top_state"]
    # stages: 0 stem, 1 layer1, 2 layer2, 3 layer3, 4 layer4
    frozen = {k.split(".", 2)[2]: v for k, v in _stage_params(top, 3).items()}
    trained = {k.split(".", 2)[2]: v for k, v in _stage_params(top, 4).items()}
    for name, value in frozen.items():
        ref = original[f"layer3.{name}"]
        if "running" in name or "num_batches" in name:
            # frozen-eval keeps pretrained statistics; train lets them move
            assert torch.equal(value, ref) == (bn == "frozen-eval"), name
        else:
            assert torch.equal(value, ref), name
    assert not torch.equal(trained["0.conv1.weight"], original["layer4.0.conv1.weight"])
    assert record["kind"] == "finetune" and record["finetune"]["bn_policy"] == bn
    assert record["finetune"]["cached_trunk"] is False


def test_record_has_history_groups_and_trainable_params(tiny_store, tmp_path):
    record, path = run_finetune(_tiny_cfg(tiny_store, unfreeze="layer3"), tmp_path / "runs")
    saved = json.loads(path.read_text())
    assert saved["run_id"] == record["run_id"] and saved["method"] == "finetune-differential"
    assert saved["finetune"]["cached_trunk"] is True
    assert saved["finetune"]["trunk_stages"] == ["stem", "layer1", "layer2"]
    for h in saved["history"]:
        assert set(h["lr"]) == {"classifier", "layer4", "layer3"}
        assert {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                "seconds"} <= set(h)
    assert saved["history"][0]["lr"]["layer4"] == pytest.approx(1e-2 * 0.5)
    assert saved["history"][0]["lr"]["layer3"] == pytest.approx(1e-2 * 0.25)
    m = load_backbone("resnet18", "none").model
    expected = sum(p.numel() for p in list(m.layer3.parameters()) + list(m.layer4.parameters()))
    assert saved["trainable_params"] == expected + 512 * 3 + 3
    assert saved["predictions"]["paths"] and saved["metrics"]["test"]["n"] == 3


def test_gradual_unfreezing_adds_one_group_every_k_epochs(tiny_store, tmp_path):
    record, _ = run_finetune(_tiny_cfg(tiny_store, unfreeze="layer3", gradual=1, epochs=3,
                                       patience=None), tmp_path / "runs")
    counts = [h["trainable_params"] for h in record["history"]]
    assert counts[0] == 512 * 3 + 3 and counts[0] < counts[1] < counts[2]


def test_seeds_repeat_is_deterministic(tiny_store, tmp_path):
    a, _ = run_finetune(_tiny_cfg(tiny_store, unfreeze="none", seed=1), tmp_path / "a")
    b, _ = run_finetune(_tiny_cfg(tiny_store, unfreeze="none", seed=1), tmp_path / "b")
    assert a["predictions"]["proba"] == b["predictions"]["proba"]
    row = summarise_group([a, b])
    assert row.n_seeds == 2 and row.accuracy_std == 0.0


def test_a_shared_trunk_cache_computes_the_trunk_once(tiny_store, trunk_passes):
    """Two fine-tunings given one TrunkCache: the second does no trunk forward pass.  The
    cache is the caller's object (no module-global state): a new one computes again."""
    from pipeline.train.finetune import finetune
    from pipeline.train.trunk_cache import TrunkCache

    cache = TrunkCache()
    first = finetune(_tiny_cfg(tiny_store, unfreeze="layer4", epochs=1, seed=1), cache)
    assert first.use_cache and first.cache_seconds > 0 and len(trunk_passes) == 3
    second = finetune(_tiny_cfg(tiny_store, unfreeze="layer4", epochs=1, seed=2, lr=3e-2),
                      cache)
    assert second.cache_seconds == 0 and len(trunk_passes) == 3 and len(cache.memory) == 1
    again = finetune(_tiny_cfg(tiny_store, unfreeze="layer4", epochs=1, seed=1), TrunkCache())
    assert again.cache_seconds > 0 and len(trunk_passes) == 6
    assert (again.test_proba == first.test_proba).all()   # recomputed: the same outputs


def test_prefill_computes_every_depth_in_one_pass_with_the_same_outputs(tiny_store,
                                                                         trunk_passes):
    """The explorer's depths cut the trunk at several stages: prefilling the cache runs the
    images through it once (one pass per part: train, val, test) for all of them, the
    runs then compute nothing, and each depth's outputs are those a run of that depth
    alone computes (to the cache's float16)."""
    from pipeline.train.finetune import finetune, prefill_trunk_cache
    from pipeline.train.trunk_cache import TrunkCache

    depths = [_tiny_cfg(tiny_store, unfreeze=u, epochs=1) for u in ("none", "layer4", "layer3")]
    shared = TrunkCache()
    assert prefill_trunk_cache(depths + [_tiny_cfg(tiny_store, unfreeze="all")], shared) > 0
    assert len(trunk_passes) == 3 and len(shared.memory) == 3   # 'all' trains end to end
    assert prefill_trunk_cache(depths, shared) == 0.0 and len(trunk_passes) == 3
    for n, cfg in enumerate(depths):
        result = finetune(cfg, shared)
        assert result.use_cache and result.cache_seconds == 0
        assert len(trunk_passes) == 3 + 3 * n          # only the runs alone below compute
        alone = TrunkCache()
        finetune(cfg, alone)
        (key, parts), = alone.memory.items()
        for part, (acts, ok, _) in parts.items():
            got, got_ok, _ = shared.memory[key][part]
            assert acts.shape == got.shape and acts.dim() >= 3 and (ok == got_ok).all()
            assert torch.allclose(acts.float(), got.float(), rtol=1e-2, atol=1e-3), part
    assert len(trunk_passes) == 3 + 3 * 3


def test_seeds_of_one_configuration_share_one_trunk_cache(tiny_store, tmp_path, trunk_passes):
    from pipeline.workflows.finetune import run_finetune_seeds

    out = run_finetune_seeds(_tiny_cfg(tiny_store, unfreeze="none", epochs=1), 2,
                             tmp_path / "runs")
    assert len(out) == 2 and len(trunk_passes) == 3   # train, val, test: once for both seeds
    assert [r["finetune"]["cache_seconds"] > 0 for r, _ in out] == [True, False]


def test_finetune_resume_equals_uninterrupted(tiny_store, tmp_path):
    cfg = _tiny_cfg(tiny_store, unfreeze="layer4", epochs=3, patience=None, seed=2)
    full, _ = run_finetune(cfg, tmp_path / "full")
    ck = str(tmp_path / "ck")
    run_finetune(replace(cfg, checkpoint_dir=ck, stop_after=1), tmp_path / "part")
    resumed, _ = run_finetune(replace(cfg, checkpoint_dir=ck, resume=True), tmp_path / "res")
    strip = [[{k: v for k, v in h.items() if k != "seconds"} for h in r["history"]]
             for r in (full, resumed)]
    assert len(strip[0]) == 3 and strip[0] == strip[1]
    assert full["predictions"]["proba"] == resumed["predictions"]["proba"]


def test_cross_validated_finetune_trains_a_fresh_top_per_fold(tiny_store, tmp_path):
    """cv: 15 outer folds on one trunk cache; every image predicted once per repeat; the
    pretrained top is copied for each fold (a fold never starts from another's weights)."""
    original = load_backbone("resnet18", "none").model.state_dict()
    record, path = run_finetune(_tiny_cfg(tiny_store, unfreeze="layer4", protocol="cv"),
                                tmp_path / "runs")
    assert record["protocol"] == "cv" and len(record["cv"]["fold_scores"]) == 15
    pred = record["predictions"]["y_pred_repeats"]
    assert len(pred) == 3 and all(p >= 0 for row in pred for p in row)
    assert all("best_epoch" in p for p in record["cv"]["fold_params"])
    assert record["finetune"]["cached_trunk"] is True
    # the saved (final) model starts from the pretrained layer4, and was trained
    top = _saved_top(record)["top_state"]
    assert not torch.equal(top["stages.0.0.conv1.weight"], original["layer4.0.conv1.weight"])
    with pytest.raises(UsageError, match="frozen-trunk cache"):
        run_finetune(_tiny_cfg(tiny_store, unfreeze="layer4", cache="off", protocol="cv"),
                     tmp_path / "r2")
