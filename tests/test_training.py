"""The generic training loop: schedules, parameter groups, freezing, resume, images."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from pipeline.backbones import Preprocessing
from pipeline.errors import StoreError, UsageError
from pipeline.train.datasets import ImageFolderDataset, TensorPairs, image_transform
from pipeline.train.loop import (
    ParamGroup,
    Schedule,
    TrainConfig,
    schedule_factor,
    train,
)


def _toy_data(n=48, d=6, k=3, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 3
    y = np.arange(n) % k
    X = centres[y] + rng.normal(size=(n, d))
    cut = n * 3 // 4
    return TensorPairs(X[:cut], y[:cut]), TensorPairs(X[cut:], y[cut:])


def _toy_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.2),
                         nn.Linear(8, 3))


# ------------------------------------------------------------------ schedules


@pytest.mark.parametrize("name, kw, t, total, expected", [
    ("constant", {}, 7, 10, 1.0),
    ("exponential", {"gamma": 0.5}, 3, 10, 0.125),
    ("step", {"gamma": 0.1, "step_size": 2}, 1, 10, 1.0),
    ("step", {"gamma": 0.1, "step_size": 2}, 2, 10, 0.1),
    ("step", {"gamma": 0.1, "step_size": 2}, 5, 10, 0.01),
    ("cosine", {"min_factor": 0.0}, 0, 10, 1.0),
    ("cosine", {"min_factor": 0.0}, 5, 10, 0.5),
    ("cosine", {"min_factor": 0.2}, 10, 10, 0.2),
    ("onecycle", {"warmup": 0.2, "div_factor": 10.0}, 0, 10, 0.1),
    ("onecycle", {"warmup": 0.2, "div_factor": 10.0}, 1, 10, 0.55),
    ("onecycle", {"warmup": 0.2, "div_factor": 10.0, "min_factor": 0.0}, 2, 10, 1.0),
    ("onecycle", {"warmup": 0.2, "div_factor": 10.0, "min_factor": 0.0}, 6, 10, 0.5),
])
def test_schedule_factor_values(name, kw, t, total, expected):
    assert schedule_factor(Schedule(name, **kw), t, total) == pytest.approx(expected)


def test_unknown_schedule_is_a_usage_error():
    with pytest.raises(UsageError, match="valid: constant"):
        Schedule("linear")


def test_history_records_every_groups_lr_per_epoch():
    train_set, val_set = _toy_data()
    model = _toy_net()
    groups = [ParamGroup("body", list(model[0].parameters()) + list(model[1].parameters()), 0.1),
              ParamGroup("head", list(model[4].parameters()), 0.01)]
    cfg = TrainConfig(epochs=4, batch_size=8, schedule=Schedule("exponential", per="epoch",
                                                                gamma=0.5), patience=None)
    res = train(model, groups, train_set, val_set, cfg)
    lrs = [h["lr"] for h in res.history]
    for e, lr in enumerate(lrs):
        assert lr["body"] == pytest.approx(0.1 * 0.5 ** e)
        assert lr["head"] == pytest.approx(0.01 * 0.5 ** e)
    assert [h["epoch"] for h in res.history] == [1, 2, 3, 4]
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds"):
        assert all(math.isfinite(h[key]) for h in res.history)


def test_per_step_schedule_steps_every_batch():
    train_set, val_set = _toy_data()   # 36 training rows, batch 12 -> 3 steps per epoch
    model = _toy_net()
    cfg = TrainConfig(epochs=2, batch_size=12, patience=None,
                      schedule=Schedule("step", per="step", gamma=0.5, step_size=1))
    res = train(model, [ParamGroup("all", list(model.parameters()), 1.0)], train_set, val_set, cfg)
    assert [h["lr"]["all"] for h in res.history] == pytest.approx([1.0, 0.5 ** 3])


# ------------------------------------------------------------------ freezing


def test_parameters_outside_groups_or_frozen_do_not_change():
    train_set, val_set = _toy_data()
    model = _toy_net()
    first = model[0].weight.detach().clone()
    model[0].weight.requires_grad_(False)
    last_bias = model[4].bias.detach().clone()   # in no group at all
    groups = [ParamGroup("head", [model[4].weight], 0.1),
              ParamGroup("frozen", [model[0].weight], 0.1)]
    res = train(model, groups, train_set, val_set, TrainConfig(epochs=2, batch_size=8))
    assert torch.equal(model[0].weight, first)
    assert torch.equal(model[4].bias, last_bias)
    assert res.history[-1]["trainable_params"] == model[4].weight.numel()


# ------------------------------------------------------------------ determinism, resume


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _run(tmp_path=None, stop_after=None, resume=False, seed=3):
    train_set, val_set = _toy_data()
    model = _toy_net()
    cfg = TrainConfig(epochs=5, batch_size=8, seed=seed, patience=None,
                      schedule=Schedule("cosine", per="step"),
                      checkpoint_dir=str(tmp_path) if tmp_path else None,
                      stop_after=stop_after, resume=resume)
    res = train(model, [ParamGroup("all", list(model.parameters()), 0.05)],
                train_set, val_set, cfg)
    return res, _state(model)


def _strip(history):
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


def test_same_seed_same_result_on_cpu():
    a, sa = _run()
    b, sb = _run()
    assert _strip(a.history) == _strip(b.history)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_resume_after_interrupt_equals_uninterrupted_run(tmp_path):
    full, s_full = _run()
    part, _ = _run(tmp_path, stop_after=2)
    assert len(part.history) == 2
    resumed, s_res = _run(tmp_path, resume=True)
    assert _strip(resumed.history) == _strip(full.history)
    assert resumed.best_epoch == full.best_epoch
    assert all(torch.equal(s_full[k], s_res[k]) for k in s_full)


def test_resume_refuses_other_config_or_missing_checkpoint(tmp_path):
    with pytest.raises(StoreError, match="nothing to resume"):
        _run(tmp_path / "none", resume=True)
    _run(tmp_path, stop_after=1)
    with pytest.raises(StoreError, match="another training configuration"):
        _run(tmp_path, resume=True, seed=4)


def test_early_stopping_restores_best_epoch():
    train_set, val_set = _toy_data()
    model = _toy_net()
    # A huge constant rate diverges after the first epochs; patience 1 stops it.
    cfg = TrainConfig(epochs=30, batch_size=8, patience=1, optimizer="sgd",
                      schedule=Schedule("constant", per="epoch"))
    res = train(model, [ParamGroup("all", list(model.parameters()), 0.5)], train_set,
                val_set, cfg)
    losses = [h["val_loss"] for h in res.history]
    assert res.best_epoch == int(np.argmin(losses)) + 1
    from pipeline.train.loop import evaluate_model

    loss, _, _ = evaluate_model(model, val_set)
    assert loss == pytest.approx(min(losses), rel=1e-5)


# ------------------------------------------------------------------ images


PRE = Preprocessing(input_size=16, crop_pct=1.0, interpolation="bilinear",
                    mean=(0.2, 0.4, 0.6), std=(0.5, 0.25, 0.1))


def test_transform_ends_with_the_weights_normalisation():
    img = Image.new("RGB", (20, 24), (51, 102, 153))    # 0.2, 0.4, 0.6 of 255
    for augment in ("none",):
        x = image_transform(PRE, augment)(img)
        assert x.shape == (3, 16, 16)
        assert torch.allclose(x, torch.zeros_like(x), atol=1e-6)
    x = image_transform(PRE, "standard")(img)     # jitter moves values but shape holds
    assert x.shape == (3, 16, 16)


def test_image_dataset_skips_corrupt_files(tmp_path):
    Image.new("RGB", (30, 20), (10, 20, 30)).save(tmp_path / "good.png")
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "empty.png").write_bytes(b"")
    ds = ImageFolderDataset(tmp_path, ["good.png", "bad.jpg", "empty.png"], [0, 1, 1], PRE,
                            augment="none")
    assert len(ds) == 1 and ds.kept == [0]
    assert [p for p, _ in ds.skipped] == ["bad.jpg", "empty.png"]
    x, y = ds[0]
    assert x.shape == (3, 16, 16) and y == 0
