"""Fine-tuning recipes: warm-up + cosine, LP-FT, WiSE-FT, layer-wise decay, EMA, mixup and
flip TTA, on toy networks and a tiny store (what each freezes, mixes and chooses)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from pipeline.backbones import get_backbone, load_backbone
from pipeline.errors import UsageError
from pipeline.train.finetune import (
    WISE_ALPHAS,
    FinetuneConfig,
    build_network,
    make_plan,
    mix_states,
)
from pipeline.train.loop import ParamGroup, Schedule, TrainConfig, train, warmed_factor
from pipeline.workflows.finetune import run_finetune

LITE0_STAGES = ["stem"] + [f"blocks.{i}" for i in range(7)] + ["conv_head"]


def _cfg(store, **kw):
    base = dict(features=store, backbone="resnet18", weights="none", input_size=32,
                epochs=2, batch_size=8, lr=1e-2, lr_factor=1.0, views=2, protocol="holdout",
                patience=None)
    return FinetuneConfig(**{**base, **kw})


def test_warmup_then_cosine_is_timms_curve():
    """The loop's warm-up + cosine factor equals timm's CosineLRScheduler (warmup_prefix)
    at every step: the same schedule users know from timm, resumable by our LambdaLR."""
    from timm.scheduler import CosineLRScheduler

    total, warm = 40, 6
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    theirs = CosineLRScheduler(opt, t_initial=total - warm, lr_min=0.01, warmup_t=warm,
                               warmup_lr_init=0.01, warmup_prefix=True)
    ours = Schedule("cosine", per="epoch", warmup_epochs=warm)
    got = [warmed_factor(ours, t, total, warm) for t in range(total)]
    assert got == pytest.approx([theirs._get_lr(t)[0] for t in range(total)], abs=1e-12)
    assert got[0] == pytest.approx(0.01) and max(got) == pytest.approx(1.0)


def test_layer_decay_gives_each_stage_its_rate_and_lp_delays_every_group():
    spec = get_backbone("efficientnet_lite0")
    plan = make_plan(spec, LITE0_STAGES, FinetuneConfig(unfreeze="layer4", lr=1.0,
                                                         layer_decay=0.5, lp_epochs=2))
    assert plan.stage_lrs == pytest.approx({"conv_head": 0.5, "blocks.6": 0.25,
                                            "blocks.5": 0.125})
    assert plan.start_epoch == {"classifier": 0, "head": 2, "layer4": 2}


def test_lp_ft_trains_the_classifier_alone_then_every_unfrozen_group(tiny_store, tmp_path):
    """LP-FT: during the linear probe only the classifier trains (the unfrozen stages keep
    their pretrained weights); then every unfrozen group trains at once."""
    original = load_backbone("resnet18", "none").model.state_dict()
    cfg = _cfg(tiny_store, unfreeze="layer3", lp_epochs=1, epochs=2)
    probe, _ = run_finetune(replace(cfg, stop_after=1), tmp_path / "probe")
    counts = [h["trainable_params"] for h in probe["history"]]
    assert counts == [512 * 3 + 3]
    top = torch.load(probe["model_file"], map_location="cpu", weights_only=True)["top_state"]
    # top stages: 0 layer3, 1 layer4 (the trunk up to layer2 is cached)
    for prefix, stage in (("stages.0.", "layer3."), ("stages.1.", "layer4.")):
        for k, v in top.items():
            if k.startswith(prefix):
                assert torch.equal(v, original[stage + k[len(prefix):]]), k
    full, _ = run_finetune(replace(cfg, checkpoint_dir=str(tmp_path / "ck")), tmp_path / "full")
    counts = [h["trainable_params"] for h in full["history"]]
    assert counts[0] == 512 * 3 + 3 and counts[1] > counts[0] * 100
    # the last epoch's weights (the kept epoch may be the probe's, by validation)
    last = torch.load(tmp_path / "ck" / "last.pt", map_location="cpu", weights_only=True)
    assert not torch.equal(last["model"]["stages.0.0.conv1.weight"],
                           original["layer3.0.conv1.weight"])
    assert full["method"] == "finetune-lpft" and "LP-FT 1ep" in full["label"]


def _toy_top(seed):
    torch.manual_seed(seed)
    stages = [("s0", torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4),
                                         torch.nn.ReLU()))]
    return build_network(stages, 3, 0.0).eval()


def test_wise_mix_at_0_and_1_reproduces_the_endpoints():
    probe, tuned = _toy_top(0), _toy_top(1)
    with torch.no_grad():   # BatchNorm statistics differ too: they are mixed as well
        tuned.stages[0][1].running_mean.add_(0.5)
    x = torch.randn(5, 3, 8, 8)
    mixed = _toy_top(2)
    for alpha, endpoint in ((0.0, probe), (1.0, tuned)):
        mixed.load_state_dict(mix_states(probe.state_dict(), tuned.state_dict(), alpha))
        with torch.no_grad():
            assert torch.equal(mixed(x), endpoint(x)), alpha
    mixed.load_state_dict(mix_states(probe.state_dict(), tuned.state_dict(), 0.5))
    half = mixed.state_dict()["fc.weight"]
    assert torch.allclose(half, (probe.fc.weight + tuned.fc.weight) / 2)


def test_wise_chooses_its_coefficient_on_validation_only(tiny_store, tmp_path, monkeypatch):
    """Every evaluation that chooses something (the epoch kept, WiSE-FT's coefficient) sees
    the validation split's labels, never the test split's."""
    import numpy as np

    from pipeline.store.hdf5 import open_store
    from pipeline.train import loop

    seen, real = [], loop.validate

    def spy(model, val_data, cfg):
        seen.append(np.asarray(val_data.labels).tolist())
        return real(model, val_data, cfg)

    monkeypatch.setattr(loop, "validate", spy)
    record, _ = run_finetune(_cfg(tiny_store, unfreeze="layer4", lp_epochs=1, epochs=3,
                                  wise=True), tmp_path / "runs")
    store = open_store(tiny_store)
    val = store.y("val").tolist()
    assert len(seen) == 3 + len(WISE_ALPHAS) and all(s == val for s in seen)
    wise = record["finetune"]["wise"]
    assert wise["alpha"] in WISE_ALPHAS
    assert [s["alpha"] for s in wise["scores"]] == list(WISE_ALPHAS)
    assert "WiSE-FT" in record["label"]


def test_wise_needs_a_linear_probe(tiny_store):
    from pipeline.train.finetune import check_config

    with pytest.raises(UsageError, match="--lp-epochs"):
        check_config(_cfg(tiny_store, unfreeze="layer4", wise=True))


def _toy_data(n=48, seed=0):
    from pipeline.train.datasets import TensorPairs

    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 3, 6, 6, generator=g)
    y = (X.mean(dim=(1, 2, 3)) > 0).long() + (X[:, 0].mean(dim=(1, 2)) > 0.3).long()
    return TensorPairs(X[:36], y[:36]), TensorPairs(X[36:], y[36:])


def _toy_run(tmp_path=None, stop_after=None, resume=False, **kw):
    train_set, val_set = _toy_data()
    torch.manual_seed(0)
    model = build_network([("s0", torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3),
                                                      torch.nn.BatchNorm2d(8),
                                                      torch.nn.ReLU()))], 3, 0.0)
    cfg = TrainConfig(epochs=4, batch_size=8, seed=1, patience=None,
                      checkpoint_dir=str(tmp_path) if tmp_path else None,
                      stop_after=stop_after, resume=resume, **kw)
    res = train(model, [ParamGroup("all", list(model.parameters()), 0.05)],
                train_set, val_set, cfg)
    return res, {k: v.clone() for k, v in model.state_dict().items()}


def test_ema_and_mixup_runs_resume_exactly_and_the_average_is_what_is_kept(tmp_path):
    """With an EMA of the weights and mixup/cutmix, an interrupted run resumed from its
    checkpoint ends with the same weights as one that ran through; the weights returned
    are the average (they differ from the same run's without EMA)."""
    recipe = dict(ema_decay=0.9, mixup=0.4, cutmix=1.0)
    full, s_full = _toy_run(**recipe)
    _toy_run(tmp_path, stop_after=2, **recipe)
    resumed, s_res = _toy_run(tmp_path, resume=True, **recipe)
    assert all(torch.equal(s_full[k], s_res[k]) for k in s_full)
    assert [h["val_loss"] for h in full.history] == [h["val_loss"] for h in resumed.history]
    _, s_plain = _toy_run(mixup=0.4, cutmix=1.0)
    assert not torch.equal(s_plain["fc.weight"], s_full["fc.weight"])


def test_flip_tta_averages_the_logits_of_the_image_and_its_mirror():
    net = _toy_top(3)
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        both = net(torch.stack([x, torch.flip(x, dims=[-1])], dim=1))
        assert torch.allclose(both, (net(x) + net(torch.flip(x, dims=[-1]))) / 2, atol=1e-6)
        assert not torch.allclose(both, net(x), atol=1e-4)


def test_the_preset_rung_reads_the_other_rungs_trunk_cache(tiny_store):
    """The ladder's fine-tuning rungs past head-only, the recommended preset among them,
    cut the trunk at the same stage with the same views: one cache key (tests/test_ladder.py
    checks that one pass fills it and the head-only rung's)."""
    from pipeline.train.finetune import _prepare, uses_trunk_cache
    from pipeline.train.trunk_cache import ALL_IMAGES, cache_key
    from pipeline.workflows.ladder import PRESET_RUNG, ladder_configs

    rungs = ladder_configs(tiny_store)
    assert rungs[-1][0] == PRESET_RUNG and rungs[-1][1].wise and rungs[-1][1].lp_epochs
    keys = set()
    for _, cfg in rungs[1:]:
        cfg, store, loaded, _, _, plan, pre, _ = _prepare(replace(cfg, backbone="resnet18",
                                                                  weights="none"))
        assert uses_trunk_cache(cfg, plan)
        keys.add(cache_key(store, cfg, plan.cut, loaded.weights_id, pre, ALL_IMAGES))
    assert len(keys) == 1


def test_cross_validated_wise_chooses_per_fold_and_the_final_model_takes_their_median(
        tiny_store, tmp_path):
    """Under cv each outer fold chooses its coefficient on its inner validation split; the
    model trained on every image is mixed at the folds' median, not at one chosen on the
    images it trained on."""
    import numpy as np

    record, _ = run_finetune(_cfg(tiny_store, unfreeze="layer4", lp_epochs=1, epochs=3,
                                  lr=1e-3, wise=True, protocol="cv"), tmp_path / "runs")
    params = record["cv"]["fold_params"]
    alphas = [p["wise_alpha"] for p in params]
    assert len(alphas) == 15 and set(alphas) <= set(WISE_ALPHAS)
    final = record["finetune"]["wise"]
    # (at this slow rate every fold kept a fine-tuned epoch, so the final model mixes)
    assert np.median([p["best_epoch"] for p in params]) > 1
    assert final["alpha"] == float(np.median(alphas)) and len(final["scores"]) == 1


def test_an_interrupted_wise_run_resumes_with_its_probe_and_refuses_a_damaged_one(
        tiny_store, tmp_path):
    """The probe's weights are kept beside the checkpoint: a resumed WiSE-FT run mixes with
    the same probe and ends as the uninterrupted run; a damaged probe file is a one-line
    refusal naming it and the fix, not a traceback."""
    from pipeline.errors import StoreError

    cfg = _cfg(tiny_store, unfreeze="layer4", lp_epochs=1, epochs=3, wise=True, seed=4)
    full, _ = run_finetune(cfg, tmp_path / "full")
    ck = tmp_path / "ck"
    run_finetune(replace(cfg, checkpoint_dir=str(ck), stop_after=2), tmp_path / "part")
    assert (ck / "probe.pt").is_file()
    resumed, _ = run_finetune(replace(cfg, checkpoint_dir=str(ck), resume=True),
                              tmp_path / "resumed")
    assert resumed["finetune"]["wise"] == full["finetune"]["wise"]
    assert resumed["predictions"]["proba"] == full["predictions"]["proba"]
    (ck / "probe.pt").write_bytes(b"not a torch file")
    with pytest.raises(StoreError, match="probe.pt.*--resume"):
        run_finetune(replace(cfg, checkpoint_dir=str(ck), resume=True), tmp_path / "again")


def test_a_preset_takes_the_options_given_and_keeps_the_commands_own_defaults():
    """``finetune --preset recommended --lr 3e-3``: the rate given wins, the preset's epochs
    stand over the command's default 12, and a default the command sets on purpose (its
    checkpoint folder) is kept."""
    from pipeline.configs import PRESETS, preset_config

    cfg = preset_config("recommended", {"lr"}, lr=3e-3, epochs=12,
                        checkpoint_dir="reports/checkpoints")
    assert cfg.lr == 3e-3 and cfg.epochs == PRESETS["recommended"]["epochs"]
    assert cfg.checkpoint_dir == "reports/checkpoints" and cfg.wise and cfg.lp_epochs == 1
    assert preset_config("none", {"lr"}, lr=3e-3, epochs=12).epochs == 12


@pytest.mark.parametrize("unfreeze", ["none", "layer1"])
def test_a_logreg_probe_starts_fine_tuning_where_the_frozen_head_ends(tiny_store, unfreeze):
    """``--probe logreg --classify-at layer1``: the network ends at layer1's stage, its pooled
    output is the store's layer1 features (cached pooled output or images), and the
    classifier it starts from is the frozen logistic-regression head of those features,
    its C chosen on validation and fitted on the training images alone."""
    import numpy as np

    from pipeline.heads.selection import Choice, predict_proba, select_and_fit
    from pipeline.train.finetune import _datasets, _pooled, _prepare, fit_probe
    from pipeline.train.trunk_cache import TrunkCache

    cfg = FinetuneConfig(features=tiny_store, classify_at="layer1", unfreeze=unfreeze,
                         probe="logreg", epochs=1, batch_size=8, views=2, protocol="holdout")
    with pytest.raises(UsageError, match="'bogus'.* is not a tap of toy; valid: layer1, layer2"):
        _prepare(replace(cfg, classify_at="bogus"))
    cfg, store, loaded, stages, names, plan, pre, _ = _prepare(cfg)
    assert names == ["a"]
    top, sets, *_ = _datasets(cfg, store, loaded, stages, plan, pre, TrunkCache.of(None))
    X = {s: store.X("layer1", s) for s in ("train", "val")}
    for s in X:
        np.testing.assert_allclose(_pooled(top, sets[s].unaugmented())[0], X[s], rtol=2e-3,
                                   atol=1e-3)
    got = fit_probe(top, sets["train"], sets["val"], cfg)
    frozen = select_and_fit("logreg", X["train"], store.y("train"), X["val"], store.y("val"),
                            cfg.seed, choice=Choice(cfg.metric, cfg.class_weight), refit=False)
    assert got["C"] == frozen.params["C"]
    top.eval()
    with torch.no_grad():
        ours = torch.softmax(top(torch.stack([x for x, _ in sets["val"].unaugmented()])), 1)
    np.testing.assert_allclose(ours.numpy(), predict_proba(frozen.model, X["val"]), atol=2e-3)


def test_a_logreg_probe_is_wises_zero_end_and_needs_no_probe_epochs(tiny_store, tmp_path):
    """With the logistic-regression probe WiSE-FT needs no classifier-only epoch: its
    a = 0 end is the probe itself (same validation score), recorded with the probe's C.
    Here (C = 1e-4: nearly uniform probabilities, still every validation image right)
    validation keeps a = 0, so the run predicts the test images as the frozen head does."""
    import numpy as np

    from pipeline.heads.selection import Choice, predict_proba, select_and_fit
    from pipeline.store.hdf5 import open_store

    record, _ = run_finetune(FinetuneConfig(
        features=tiny_store, classify_at="layer1", unfreeze="layer1", probe="logreg",
        lp_epochs=0, wise=True, epochs=2, batch_size=8, lr=1e-2, protocol="holdout",
        patience=None), tmp_path / "runs")
    details = record["finetune"]
    assert details["classify_at"] == "layer1" and details["probe"]["C"] > 0
    zero = details["wise"]["scores"][0]
    assert zero["alpha"] == 0.0 and zero["val_score"] == pytest.approx(
        details["probe"]["val_score"])
    assert record["method"] == "finetune-lpft" and "logreg probe" in record["label"]
    assert details["wise"]["alpha"] == 0.0
    store = open_store(tiny_store)
    frozen = select_and_fit("logreg", store.X("layer1", "train"), store.y("train"),
                            store.X("layer1", "val"), store.y("val"), choice=Choice(),
                            refit=False)
    np.testing.assert_allclose(record["predictions"]["proba"],
                               predict_proba(frozen.model, store.X("layer1", "test")),
                               atol=2e-3)
    with pytest.raises(UsageError, match="--probe logreg"):
        from pipeline.train.finetune import check_config
        check_config(_cfg(tiny_store, unfreeze="layer4", wise=True, lp_epochs=0))


def test_cross_validated_logreg_probe_chooses_c_per_fold_and_the_final_model_their_median(
        tiny_store, tmp_path):
    """Under cv each fold's probe chooses C on its inner validation split; the model trained
    on every image takes their geometric median, not a C chosen on its own images."""
    import numpy as np

    record, _ = run_finetune(FinetuneConfig(
        features=tiny_store, classify_at="layer1", unfreeze="none", probe="logreg",
        epochs=2, batch_size=8, protocol="cv", patience=None), tmp_path / "runs")
    cs = [p["probe_C"] for p in record["cv"]["fold_params"]]
    assert len(cs) == 15
    assert record["finetune"]["probe"]["C"] == pytest.approx(float(np.exp(np.median(np.log(cs)))))
