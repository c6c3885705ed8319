"""The one torch training loop and its learning-rate schedules.

Every torch model in the workbench (the MLP and scratch-CNN baselines and
fine-tuning) is trained by :func:`train`: named parameter groups each with
their own learning rate (:class:`ParamGroup`), a learning-rate schedule
(:func:`schedule_factor`: constant, exponential, step, cosine, onecycle;
stepped per epoch or per batch), label smoothing, class weights in the loss
(training and validation alike), early stopping on the validation loss or,
for a balanced selection metric, on that metric (``TrainConfig.select_by``)
with the best epoch's weights restored, a checkpoint after
every epoch (model, optimizer, scheduler, RNG state, history) and resume from
it.  Each epoch reseeds torch from ``(seed, epoch)``, so a run on CPU is
deterministic and a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from ..balance import METRICS, balanced_weights, collapse, confusion, metric_values
from ..errors import StoreError, UsageError, opt, unsafe_load_reason
from ..files import atomic_path
from ..options import SCHEDULES

log = logging.getLogger(__name__)


CHECKPOINT_NAME = "last.pt"


@dataclass(frozen=True)
class Schedule:
    """A learning-rate schedule as a factor of each group's base rate.

    ``per`` is ``"epoch"`` (one step per epoch) or ``"step"`` (one per batch).
    ``gamma``: decay of exponential (per unit) and step (per ``step_size``
    units); ``min_factor``: floor of cosine and onecycle's end; ``warmup``:
    the fraction of training onecycle spends rising from ``1 / div_factor``.
    ``warmup_epochs``: a linear warm-up from ``warmup_start`` x the rate to the
    rate over that many epochs before any schedule, which then runs over the
    remaining units (timm's ``warmup_prefix``: warm-up + cosine is timm's
    ``CosineLRScheduler`` curve, checked in the tests).
    """

    name: str = "cosine"
    per: str = "step"
    gamma: float = 0.9
    step_size: int = 5
    min_factor: float = 0.01
    warmup: float = 0.1
    div_factor: float = 25.0
    warmup_epochs: float = 0.0
    warmup_start: float = 0.01

    def __post_init__(self):
        if self.name not in SCHEDULES:
            raise UsageError(f"unknown schedule {self.name!r}; valid: {', '.join(SCHEDULES)}")
        if self.per not in ("epoch", "step"):
            raise UsageError(f"schedule unit {self.per!r} must be 'epoch' or 'step'")
        if self.step_size < 1:
            raise UsageError(f"step_size must be >= 1, got {self.step_size}")
        if self.warmup_epochs < 0:
            raise UsageError(f"{opt('warmup_epochs')} must be >= 0, got {self.warmup_epochs}",
                             param="warmup_epochs")


def warmed_factor(schedule: Schedule, t: int, total: int, warmup: int) -> float:
    """:func:`schedule_factor` after ``warmup`` units of linear warm-up from
    ``schedule.warmup_start`` (the schedule then runs over ``total - warmup`` units)."""
    if t < warmup:
        start = schedule.warmup_start
        return start + (1.0 - start) * t / warmup
    return schedule_factor(schedule, t - warmup, max(total - warmup, 1))


def schedule_factor(schedule: Schedule, t: int, total: int) -> float:
    """The multiplier of the base learning rate at unit ``t`` of ``total`` (0-based)."""
    name = schedule.name
    if name == "constant":
        return 1.0
    if name == "exponential":
        return schedule.gamma ** t
    if name == "step":
        return schedule.gamma ** (t // schedule.step_size)
    progress = min(t / max(total, 1), 1.0)
    if name == "cosine":
        lo = schedule.min_factor
        return lo + (1.0 - lo) * 0.5 * (1.0 + math.cos(math.pi * progress))
    # onecycle: linear warm-up from 1/div_factor to 1, then cosine down to min_factor
    start = 1.0 / schedule.div_factor
    if progress < schedule.warmup:
        return start + (1.0 - start) * progress / schedule.warmup
    rest = (progress - schedule.warmup) / max(1.0 - schedule.warmup, 1e-12)
    lo = schedule.min_factor
    return lo + (1.0 - lo) * 0.5 * (1.0 + math.cos(math.pi * rest))


@dataclass
class ParamGroup:
    """A named set of parameters trained at learning rate ``lr``."""

    name: str
    params: list
    lr: float
    weight_decay: float | None = None   # None: TrainConfig.weight_decay


@dataclass
class TrainConfig:
    """How :func:`train` runs; everything here shapes the result."""

    epochs: int = 20
    batch_size: int = 32
    optimizer: str = "adamw"            # adamw | adam (L2 as coupled decay) | sgd
    weight_decay: float = 1e-4
    momentum: float = 0.9
    schedule: Schedule = field(default_factory=Schedule)
    label_smoothing: float = 0.0
    patience: int | None = 5            # epochs without a better val loss; None = never stop
    seed: int = 0
    checkpoint_dir: str | None = None   # a checkpoint after every epoch goes here
    resume: bool = False                # continue from checkpoint_dir's last epoch
    stop_after: int | None = None       # end after this epoch as if interrupted (tests)
    channels_last: bool = True          # image batches and conv weights NHWC (see _layout)
    # (n_classes,) weight of each class in the training and validation loss; None: unweighted
    class_weights: tuple | None = None
    # the epoch kept (and early stopping): "val_loss", or a metric of pipeline.balance.METRICS
    # on validation, ties going to the lower validation loss
    select_by: str = "val_loss"
    # Beta(alpha, alpha) of mixup / cutmix (0: off; both on: one of the two per batch)
    mixup: float = 0.0
    cutmix: float = 0.0
    # decay of the weights' exponential moving average (None: off); the average is what is
    # validated, kept as the best epoch and returned
    ema_decay: float | None = None

    def __post_init__(self):
        if self.select_by not in ("val_loss", *METRICS):
            raise UsageError(f"select_by {self.select_by!r} is not valid; valid: val_loss, "
                             f"{', '.join(METRICS)}")
        if self.class_weights is not None:
            self.class_weights = tuple(float(w) for w in self.class_weights)
        if self.mixup < 0 or self.cutmix < 0:
            raise UsageError(f"mixup ({self.mixup}) and cutmix ({self.cutmix}) alphas must be "
                             ">= 0 (0: off)", param="mixup")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise UsageError(f"{opt('ema')} decay must be in (0, 1), got {self.ema_decay}",
                             param="ema")

    def to_dict(self):
        d = asdict(self)
        d.pop("checkpoint_dir")
        d.pop("resume")
        d.pop("stop_after")
        return d


@dataclass
class TrainResult:
    model: nn.Module
    history: list           # per-epoch dicts (see module docstring of results.py)
    best_epoch: int
    seconds: float
    stopped_early: bool
    trainable_params: int
    extra: dict = field(default_factory=dict)   # what a caller adds (e.g. WiSE-FT's choice)


def make_optimizer(groups, cfg: TrainConfig):
    torch_groups = []
    for g in groups:
        wd = cfg.weight_decay if g.weight_decay is None else g.weight_decay
        torch_groups.append({"params": list(g.params), "lr": g.lr, "initial_lr": g.lr,
                             "weight_decay": wd, "name": g.name})
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(torch_groups)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(torch_groups)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(torch_groups, momentum=cfg.momentum, nesterov=True)
    raise UsageError(f"unknown optimizer {cfg.optimizer!r}; valid: adamw, adam, sgd")


def make_scheduler(optimizer, schedule: Schedule, epochs: int, steps_per_epoch: int):
    """A ``LambdaLR`` applying :func:`warmed_factor` to every group's base rate."""
    unit = steps_per_epoch if schedule.per == "step" else 1
    total, warmup = epochs * unit, int(round(schedule.warmup_epochs * unit))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda t: warmed_factor(schedule, t, total, warmup))


def epoch_seed(seed: int, epoch: int) -> int:
    return (int(seed) * 1_000_003 + int(epoch) * 7919 + 17) % (2 ** 31)


def _layout(x, channels_last: bool):
    """``x`` in channels-last memory order when it is an image batch ``(N, C, H, W)``.

    The same arithmetic in another memory order: on this machine's CPU (oneDNN)
    a training step of efficientnet_lite0's top groups took 480 instead of
    610 ms per 32 cached maps, of the whole network 2,938 instead of 4,405 ms
    per 32 images (float32; bf16 autocast was no faster: 756 and 3,089 ms).
    Results agree to float32 rounding, not bit for bit, with the contiguous
    order.
    """
    if channels_last and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def select_by_for(metric: str) -> str:
    """The epoch rule of a selection metric: the validation loss for accuracy (the loss is
    the smoother criterion, and unweighted it is accuracy's own), the metric itself on
    validation for balanced accuracy and macro-F1 (so an epoch where the model answers
    one class is not kept because its loss happens to be low), ties to the lower loss."""
    if metric not in METRICS:
        raise UsageError(f"metric {metric!r} is not valid here; valid: {', '.join(METRICS)} "
                         "(resolve auto first: pipeline.balance.resolve_metric)", param="metric")
    return "val_loss" if metric == "accuracy" else metric


def dataset_labels(dataset) -> np.ndarray:
    """The labels ``(n,)`` of a training dataset of this package (items ``(x, label)``)."""
    if hasattr(dataset, "y"):                               # TensorPairs
        return np.asarray(dataset.y)
    labels = np.asarray(dataset.labels)
    kept = getattr(dataset, "kept", None)                   # ImageFolderDataset drops files
    return labels[np.asarray(kept, dtype=np.int64)] if kept is not None else labels


def loss_weights(class_weight: str, dataset, n_classes: int) -> tuple | None:
    """``TrainConfig.class_weights`` for ``class_weight`` (none | balanced) on the training
    ``dataset``: balanced ``n / (K * n_c)`` of its labels, or None."""
    if class_weight not in ("none", "balanced"):
        raise UsageError(f"class_weight {class_weight!r} is not valid here; valid: none, "
                         "balanced (resolve auto first: pipeline.balance.resolve_class_weight)",
                         param="class_weight")
    if class_weight == "none":
        return None
    return tuple(float(w) for w in balanced_weights(dataset_labels(dataset), n_classes))


def evaluate_model(model, dataset, batch_size: int = 64, class_weights=None,
                   return_labels: bool = False):
    """Mean cross-entropy, accuracy and class probabilities ``(n, n_classes)`` of ``dataset``
    (batches in channels-last order when the model's conv weights are); with
    ``return_labels`` also the labels ``(n,)``.  ``class_weights`` ``(n_classes,)``
    weight each image's loss by its class (the mean is over the weights, as
    ``CrossEntropyLoss(weight=)`` takes it)."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    weight = None if class_weights is None else torch.as_tensor(class_weights,
                                                                dtype=torch.float32)
    was_training = model.training
    model.eval()
    losses, probas, labels, total_weight = [], [], [], 0.0
    nhwc = any(p.dim() == 4 and not p.is_contiguous()
               and p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters())
    try:
        with torch.no_grad():
            for x, y in loader:
                logits = model(_layout(x, nhwc))
                losses.append(nn.functional.cross_entropy(logits, y, weight=weight,
                                                          reduction="sum").item())
                total_weight += float(weight[y].sum()) if weight is not None else len(y)
                probas.append(torch.softmax(logits, dim=1))
                labels.append(y)
    finally:
        model.train(was_training)
    proba = torch.cat(probas).numpy()
    y = torch.cat(labels).numpy()
    loss = sum(losses) / max(total_weight, 1e-12)
    acc = float(np.mean(proba.argmax(1) == y))
    return (loss, acc, proba, y) if return_labels else (loss, acc, proba)


def count_trainable(groups) -> int:
    return int(sum(p.numel() for g in groups for p in g.params))


def _n_outputs(model) -> int:
    """The width of ``model``'s last linear layer (its number of classes)."""
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1].out_features


def _save_checkpoint(path: Path, epoch: int, run, cfg, model, optimizer, scheduler, ema=None):
    """Everything :func:`_resume` needs after ``epoch``; tensors and plain data only, so
    it loads with ``weights_only=True``."""
    state = {"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "history": run.history,
             "best_state": run.best_state, "best_loss": run.best_loss,
             "best_score": run.best_score, "best_epoch": run.best_epoch, "bad": run.bad,
             "torch_rng": torch.get_rng_state(),
             "config": cfg.to_dict(), "stopped": run.stopped,
             "ema": ema.state_dict() if ema is not None else None}
    with atomic_path(path) as tmp:  # a killed save never leaves a half-written checkpoint
        torch.save(state, tmp)


@dataclass
class _Progress:
    """Where a training run stands after an epoch (what a checkpoint restores)."""

    history: list = field(default_factory=list)
    best_state: dict | None = None
    best_loss: float = math.inf
    best_score: float = -math.inf       # the validation metric of the kept epoch (select_by)
    best_epoch: int = -1
    bad: int = 0
    next_epoch: int = 0
    stopped: bool = False


def _resume(ckpt: Path | None, cfg: TrainConfig, model, optimizer, scheduler,
            ema=None) -> _Progress:
    """The progress saved in ``ckpt``, restored into model, optimizer, scheduler and RNG."""
    if ckpt is None or not ckpt.is_file():
        raise StoreError(f"nothing to resume: no checkpoint {ckpt}; run without "
                         f"{opt('resume')}", param="resume")
    try:  # weights_only: tensors and plain containers, never code
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        raise StoreError(
            f"checkpoint {ckpt} cannot be resumed from ({unsafe_load_reason(exc)}); it is "
            "damaged or not a checkpoint of this "
            f"tool. Delete it and run without {opt('resume')} to start afresh",
            param="resume") from None
    if not isinstance(state, dict) or not {"config", "model", "epoch"} <= set(state):
        raise StoreError(f"checkpoint {ckpt} is not a training checkpoint of this tool; "
                         f"delete it and run without {opt('resume')}", param="resume")
    if state["config"] != cfg.to_dict():
        raise StoreError(
            f"checkpoint {ckpt} was written with another training configuration; "
            "resume with the same options or start afresh in another folder", param="resume")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    if ema is not None:
        ema.load_state_dict(state["ema"])
    log.info("resumed from %s after epoch %d", ckpt, state["epoch"] + 1)
    return _Progress(state["history"], state["best_state"], state["best_loss"],
                     state.get("best_score", -math.inf), state["best_epoch"], state["bad"],
                     cfg.epochs if state.get("stopped") else state["epoch"] + 1)


class WeightAverage:
    """An exponential moving average of a model's weights (and BatchNorm statistics):
    timm's ``ModelEmaV3`` with its decay warm-up (``1 - (1 + step) ** -2/3`` up to
    ``decay``), so in a short run the average does not keep the initial weights for
    long.  ``module`` is the averaged copy (eval mode); ``steps`` counts updates."""

    def __init__(self, model, decay: float):
        from timm.utils import ModelEmaV3

        self.ema = ModelEmaV3(model, decay=decay, use_warmup=True)
        self.steps = 0

    @property
    def module(self):
        return self.ema.module

    def update(self, model):
        self.steps += 1
        self.ema.update(model, step=self.steps)

    def state_dict(self) -> dict:
        return {"module": self.ema.module.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict):
        self.ema.module.load_state_dict(state["module"])
        self.steps = int(state["steps"])


def batch_mixer(cfg: TrainConfig, n_classes: int):
    """``mix(x, y) -> (x, soft y)`` per ``cfg.mixup`` / ``cfg.cutmix`` (torchvision's
    ``transforms.v2.MixUp`` / ``CutMix``, one of the two drawn per batch when both are
    on), or None when both are off.  Works on image batches and on cached trunk maps
    (``(N, C, H, W)``: manifold mixup); pooled ``(N, C)`` inputs take mixup only."""
    from torchvision.transforms import v2

    if not cfg.mixup and not cfg.cutmix:
        return None
    mixup = v2.MixUp(alpha=cfg.mixup, num_classes=n_classes) if cfg.mixup else None
    both = [t for t in (mixup, v2.CutMix(alpha=cfg.cutmix, num_classes=n_classes)
                        if cfg.cutmix else None) if t is not None]
    maps = both[0] if len(both) == 1 else v2.RandomChoice(both)

    def mix(x, y):
        if x.dim() == 4:
            return maps(x, y)
        if mixup is None:
            return x, nn.functional.one_hot(y, n_classes).float()
        x, y = mixup(x[..., None, None], y)
        return x[..., 0, 0], y

    return mix


def _one_epoch(model, train_data, cfg: TrainConfig, optimizer, scheduler, criterion,
               mix=None, ema=None):
    """One pass over ``train_data`` in a seeded random order: ``(mean loss, accuracy,
    share of the predictions that went to the most predicted class)``; ``mix`` mixes
    each batch (:func:`batch_mixer`; accuracy then counts the labels before mixing),
    ``ema`` follows the weights after every step."""
    order = torch.randperm(len(train_data)).tolist()
    total_loss, correct, seen, predicted = 0.0, 0, 0, {}
    for start in range(0, len(order), cfg.batch_size):
        batch = order[start:start + cfg.batch_size]
        if len(batch) == 1 and len(order) > 1:
            continue  # BatchNorm cannot train on one image; it comes round in another epoch
        x, y = _collate([train_data[i] for i in batch])
        x, target = mix(x, y) if mix is not None else (x, y)
        logits = model(_layout(x, cfg.channels_last))
        loss = criterion(logits, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ema is not None:
            ema.update(model)
        if cfg.schedule.per == "step":
            scheduler.step()
        total_loss += loss.item() * len(y)
        pred = logits.argmax(1)
        correct += int((pred == y).sum())
        for c, k in zip(*np.unique(pred.numpy(), return_counts=True)):
            predicted[int(c)] = predicted.get(int(c), 0) + int(k)
        seen += len(y)
    if cfg.schedule.per == "epoch":
        scheduler.step()
    return (total_loss / max(seen, 1), correct / max(seen, 1),
            max(predicted.values(), default=0) / max(seen, 1))


def _checkpoint_file(cfg: TrainConfig) -> Path | None:
    """Where this run's checkpoint goes (its folder made), or None without checkpoints."""
    if not cfg.checkpoint_dir:
        return None
    ckpt = Path(cfg.checkpoint_dir) / CHECKPOINT_NAME
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    return ckpt


def train(model: nn.Module, groups, train_data, val_data, cfg: TrainConfig,
          on_epoch_start: Callable[[int], None] | None = None,
          set_train_mode: Callable[[nn.Module], None] | None = None) -> TrainResult:
    """Train ``model`` on ``train_data`` (a Dataset of ``(x, y)``), early-stopping on ``val_data``.

    ``groups`` is a list of :class:`ParamGroup`; parameters outside every
    group are never updated.  ``on_epoch_start(epoch)`` may change which
    parameters require grad (gradual unfreezing); it must depend on the epoch
    only, so resume stays exact.  ``set_train_mode(model)`` puts the model in
    training mode each epoch (default ``model.train()``; fine-tuning keeps
    frozen BatchNorm in eval mode there).  Returns the model with the best
    epoch's weights: the lowest validation loss (``cfg.select_by="val_loss"``), or
    the best validation balanced accuracy / macro-F1 / accuracy with ties going to
    the lower loss; early stopping counts epochs without such a better epoch.
    ``cfg.class_weights`` weight both the training and the validation loss.
    """
    t_start = time.perf_counter()
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)  # in place: the groups' tensors stay its own
    optimizer = make_optimizer(groups, cfg)
    steps = math.ceil(len(train_data) / cfg.batch_size)
    scheduler = make_scheduler(optimizer, cfg.schedule, cfg.epochs, steps)
    criterion = _criterion(cfg)
    ckpt = _checkpoint_file(cfg)
    mix = batch_mixer(cfg, _n_outputs(model))
    ema = WeightAverage(model, cfg.ema_decay) if cfg.ema_decay else None
    run = (_resume(ckpt, cfg, model, optimizer, scheduler, ema) if cfg.resume
           else _Progress())
    kept = ema.module if ema is not None else model   # what is validated and kept
    for epoch in range(run.next_epoch, cfg.epochs):
        t0 = time.perf_counter()
        torch.manual_seed(epoch_seed(cfg.seed, epoch))
        if on_epoch_start is not None:
            on_epoch_start(epoch)
        (set_train_mode or (lambda m: m.train()))(model)
        lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
        train_loss, train_acc, train_share = _one_epoch(model, train_data, cfg, optimizer,
                                                        scheduler, criterion, mix, ema)
        val_loss, val_acc, val_scores, collapsed = validate(kept, val_data, cfg)
        entry = {"epoch": epoch + 1, "train_loss": train_loss, "train_accuracy": train_acc,
                 "val_loss": val_loss, "val_accuracy": val_acc,
                 "val_balanced_accuracy": val_scores.get("balanced_accuracy"),
                 "val_macro_f1": val_scores.get("macro_f1"),
                 # a run answering one class, told apart from one that memorises (report)
                 "train_top_share": train_share, "val_collapsed": collapsed, "lr": lrs,
                 "trainable_params": _trained_now(groups), "seconds": time.perf_counter() - t0}
        run.history.append(entry)
        log.info("epoch %d/%d train loss %.4f acc %.3f  val loss %.4f acc %.3f  (%.1f s)",
                 epoch + 1, cfg.epochs, train_loss, train_acc, val_loss, val_acc,
                 entry["seconds"])
        _keep_best(run, cfg, kept, epoch, val_loss, val_scores)
        if ckpt is not None:
            _save_checkpoint(ckpt, epoch, run, cfg, model, optimizer, scheduler, ema)
        if run.stopped or (cfg.stop_after is not None and epoch + 1 >= cfg.stop_after):
            break
    if run.best_state is not None:
        model.load_state_dict(run.best_state)
    model.eval()
    return TrainResult(model, run.history, run.best_epoch, time.perf_counter() - t_start,
                       run.stopped, count_trainable(groups))


def _trained_now(groups) -> int:
    """Parameters of ``groups`` that train this epoch (gradual unfreezing, LP-FT)."""
    return sum(p.numel() for g in groups for p in g.params if p.requires_grad)


def _criterion(cfg: TrainConfig):
    """The training loss: cross-entropy with ``cfg``'s class weights and label smoothing
    (it takes mixup's soft targets as well as class indices)."""
    weight = (None if cfg.class_weights is None
              else torch.as_tensor(cfg.class_weights, dtype=torch.float32))
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)


def validate(model, val_data, cfg: TrainConfig):
    """``(loss, accuracy, {metric: value}, collapsed)`` of ``model`` on ``val_data``."""
    val_loss, val_acc, val_proba, val_y = evaluate_model(
        model, val_data, max(cfg.batch_size, 64), cfg.class_weights, return_labels=True)
    n_classes = val_proba.shape[1]
    val_pred = val_proba.argmax(1)
    if not len(val_y):
        return val_loss, val_acc, {}, False
    return (val_loss, val_acc, metric_values(val_y, val_pred, n_classes),
            bool(collapse(confusion(val_y, val_pred, n_classes))))


def _keep_best(run, cfg: TrainConfig, model, epoch: int, val_loss: float, val_scores: dict):
    """Keep ``model``'s weights when this epoch is the best so far (``cfg.select_by``, ties
    to the lower loss); else count it towards early stopping (``run.stopped``)."""
    score = (-math.inf if cfg.select_by == "val_loss"
             else val_scores.get(cfg.select_by, -math.inf))
    if score > run.best_score or (score == run.best_score and val_loss < run.best_loss):
        run.best_loss, run.best_score, run.best_epoch, run.bad = val_loss, score, epoch + 1, 0
        run.best_state = copy.deepcopy(model.state_dict())
    else:
        run.bad += 1
    run.stopped = cfg.patience is not None and run.bad >= cfg.patience
    if run.stopped:
        log.info("early stop after epoch %d: best val %s at epoch %d", epoch + 1,
                 f"loss {run.best_loss:.4f}" if cfg.select_by == "val_loss"
                 else f"{cfg.select_by} {run.best_score:.4f}", run.best_epoch)


def _collate(items):
    xs, ys = zip(*items)
    return torch.stack(xs), torch.as_tensor(ys, dtype=torch.long)
