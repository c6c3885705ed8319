"""Fine-tuning a pretrained backbone on a store's split: the training steps.

A backbone's stages are split into *block groups*, one per depth tap (the
group of tap ``layerN`` is every stage after the previous tap's stage up to
its own; the stem goes with the first).  :func:`finetune` puts a new
linear classifier on the pooled last stage and trains it with
:func:`pipeline.train.loop.train`:

- how much: ``unfreeze="none"`` (classifier only), a tap name (that group
  and every group above it, ``--unfreeze-from``), or ``"all"``;
- differential learning rates: the classifier trains at ``lr``, the group
  below at ``lr * lr_factor``, the next at ``lr * lr_factor**2`` ...
  (default factor 0.1, the course's rule);
- ``gradual=K``: classifier alone first, then one more group (top down)
  every ``K`` epochs;
- BatchNorm: groups that are frozen (at this epoch) run in eval mode
  (``bn="frozen-eval"``, the default: their running statistics stay the
  pretrained ones, which is what makes the frozen trunk a fixed function);
  ``bn="train"`` lets them update their statistics.

Speed on a CPU: with ``bn="frozen-eval"`` the stages below the lowest
group that is ever trained compute a fixed function of the input, so their
outputs are computed once (``views`` cached views per training image: the
centre crop plus ``views - 1`` augmented ones; val/test get the centre crop)
and only the top is trained per epoch.  This is exact for what it computes;
augmentation is then limited to the cached views.  The cached outputs live in
a :class:`pipeline.train.trunk_cache.TrunkCache` the caller may own and share
between runs (:func:`finetune` takes one, or a folder).  ``cache="off"`` trains
end to end from images (fresh augmentation every epoch; slow on CPU).

:func:`finetune` (and :func:`finetune_cv`, over the store's cv folds) returns
a :class:`FinetuneResult` (the trained network, the per-epoch history,
predictions); :mod:`pipeline.workflows.finetune` writes its run record and
model, and repeats it over seeds; :mod:`pipeline.workflows.ladder` runs the
course ladder.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..configs import FinetuneConfig
from ..errors import DataError, StoreError, UsageError, WeightsError, opt, unsafe_load_reason
from ..options import BN_POLICIES, CACHE_MODES, PROBES
from ..store.hdf5 import open_store
from .trunk_cache import ALL_IMAGES, PER_SPLIT, CachedViews, TrunkCache, cache_key

log = logging.getLogger(__name__)


def block_groups(spec, stage_names) -> list[tuple[str, list[str]]]:
    """``[(tap_name, [stage names])]`` shallow to deep, one group per tap with stages.

    Stages before the first tap join the first group; stages after the last
    tap join the last group; taps sharing a stage give no empty group, taps on stages
    not in ``stage_names`` (above a ``classify_at`` cut) none.
    """
    groups, taken = [], 0
    for tap in spec.taps:
        if tap.stage not in stage_names:
            continue
        idx = stage_names.index(tap.stage) + 1
        if idx > taken:
            groups.append((tap.name, list(stage_names[taken:idx])))
            taken = idx
    if taken < len(stage_names):
        groups[-1][1].extend(stage_names[taken:])
    return groups


def _torch():
    import torch
    import torch.nn as nn

    return torch, nn


def build_network(stages, n_classes: int, dropout: float, channels: int | None = None):
    """``nn.Module``: ``stages`` in order, global average pool, dropout, new linear layer.

    ``forward(x)`` takes a normalised ``(N, 3, H, W)`` batch (or the output
    of the stages it does not hold) and returns ``(N, n_classes)`` logits; given
    ``(N, V, ...)`` (``V`` views of each input: test-time augmentation) it returns
    the mean of each input's views' logits.
    When ``stages`` is empty, ``x`` may also be already pooled ``(N, C)``;
    ``channels`` is then the width of ``x`` (default: the last stage's output).
    """
    torch, nn = _torch()

    class Network(nn.Module):
        def __init__(self):
            super().__init__()
            self.stage_names = [n for n, _ in stages]
            self.stages = nn.ModuleList(m for _, m in stages)
            self.dropout = nn.Dropout(dropout)
            self.fc = nn.Linear(channels or _out_channels(stages), n_classes)

        def features(self, x):
            """The pooled output of the stages ``(N, C)``: what the classifier reads."""
            for stage in self.stages:
                x = stage(x)
            return x.mean(dim=(2, 3)) if x.dim() == 4 else x

        def forward(self, x):
            if x.dim() == 5 or (x.dim() == 3 and not self.stages):   # views of each input
                n, v = x.shape[:2]
                return self.forward(x.flatten(0, 1)).view(n, v, -1).mean(dim=1)
            return self.fc(self.dropout(self.features(x)))

    return Network()


def trunk_width(spec, stages) -> int:
    """Width of the last stage's output: the declared channels of a tap on it (a timm
    pre-logits head, whose last layer may be an identity), else read off its layers."""
    for tap in reversed(spec.taps):
        if stages and tap.stage == stages[-1][0]:
            return tap.channels
    return _out_channels(stages)


def _out_channels(stages) -> int:
    _, nn = _torch()
    for _, module in reversed(stages):
        convs = [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        if convs:
            last = convs[-1]
            return last.out_channels if isinstance(last, nn.Conv2d) else last.out_features
    raise UsageError("cannot tell the output width of an empty network")


@dataclass
class Plan:
    """Which stages are trained, at which rate, and from which epoch."""

    groups: list            # [(group name, [stage names])] shallow to deep
    trainable: list         # group names trained at some point, deepest first
    lrs: dict               # group name (and "classifier") -> learning rate
    start_epoch: dict       # group name -> first epoch it trains (gradual, LP-FT)
    cut: int                # stages[:cut] are frozen for the whole run
    # stage name -> learning rate under layer-wise decay (None: one rate per group)
    stage_lrs: dict | None = None


def make_plan(spec, stage_names, cfg: FinetuneConfig) -> Plan:
    groups = block_groups(spec, stage_names)
    names = [g for g, _ in groups]
    if cfg.unfreeze == "none":
        trainable = []
    elif cfg.unfreeze == "all":
        trainable = names[::-1]
    elif cfg.unfreeze in names:
        trainable = names[names.index(cfg.unfreeze):][::-1]
    else:
        raise UsageError(f"{opt('unfreeze', repr(cfg.unfreeze))} is not valid for {spec.name}; "
                         f"valid: none, all, or a block group to unfreeze from: "
                         f"{', '.join(names)}", param="unfreeze")
    if cfg.lr <= 0 or cfg.lr_factor <= 0:
        raise UsageError(f"{opt('lr')} ({cfg.lr}) and {opt('lr_factor')} ({cfg.lr_factor}) "
                         "must be > 0", param="lr")
    lrs = {"classifier": cfg.lr}
    start = {"classifier": 0}
    for depth, name in enumerate(trainable, start=1):
        lrs[name] = cfg.lr * cfg.lr_factor ** depth
        start[name] = (depth * cfg.gradual if cfg.gradual else 0) + cfg.lp_epochs
    if trainable:
        lowest = dict(groups)[trainable[-1]][0]
        cut = stage_names.index(lowest)
    else:
        cut = len(stage_names)
    if cfg.cache_at is not None:
        tap_stage = spec.tap(cfg.cache_at).stage
        cut = min(cut, stage_names.index(tap_stage) + 1)
    return Plan(groups, trainable, lrs, start, cut, _stage_lrs(cfg, groups, trainable))


def _stage_lrs(cfg: FinetuneConfig, groups, trainable) -> dict | None:
    """Layer-wise rate decay: the trained stages top down at ``lr * decay ** k`` (k = 1
    for the top stage), or None without ``cfg.layer_decay``."""
    if cfg.layer_decay is None:
        return None
    stages = [st for g in trainable for st in dict(groups)[g][::-1]]
    return {st: cfg.lr * cfg.layer_decay ** k for k, st in enumerate(stages, start=1)}


def _transform_pre(pre, input_size):
    return replace(pre, input_size=input_size) if input_size else pre


def check_config(cfg: FinetuneConfig):
    """:class:`UsageError` naming the parameter for a configuration that cannot run."""
    from ..options import AUGMENTATIONS, SCHEDULES

    for name, value, allowed in (("bn", cfg.bn, BN_POLICIES), ("cache", cfg.cache, CACHE_MODES),
                                 ("augment", cfg.augment, AUGMENTATIONS),
                                 ("schedule", cfg.schedule, SCHEDULES)):
        if value not in allowed:
            raise UsageError(f"{opt(name)} {value!r} is not valid; valid: {', '.join(allowed)}",
                             param=name)
    for name in ("views", "epochs", "batch_size"):
        if getattr(cfg, name) < 1:
            raise UsageError(f"{opt(name)} must be >= 1, got {getattr(cfg, name)}", param=name)
    if cfg.gradual < 0:
        raise UsageError(f"{opt('gradual')} must be >= 0, got {cfg.gradual}", param="gradual")
    if cfg.ema is not None and not 0 < cfg.ema < 1:
        raise UsageError(f"{opt('ema')} is a decay in (0, 1), e.g. 0.998; got {cfg.ema}",
                         param="ema")
    if cfg.probe not in PROBES:
        raise UsageError(f"{opt('probe')} {cfg.probe!r} is not valid; valid: {', '.join(PROBES)}",
                         param="probe")
    low = 0 if cfg.probe == "logreg" else 1
    if cfg.wise and not low <= cfg.lp_epochs < cfg.epochs:
        raise UsageError(f"{opt('wise')} mixes the fine-tuned weights with the linear probe's: "
                         f"it needs {opt('lp_epochs', 'N')} with {low} <= N < {opt('epochs')} "
                         f"({cfg.epochs}), got {cfg.lp_epochs}"
                         + ("" if low == 0 else f", or {opt('probe', 'logreg')}"),
                         param="lp_epochs")
    if cfg.lp_epochs and cfg.unfreeze == "none":
        raise UsageError(f"{opt('lp_epochs')} is the linear probe before fine-tuning, but "
                         f"{opt('unfreeze', 'none')} trains the classifier only; unfreeze some "
                         "groups or drop it", param="lp_epochs")
    if cfg.train_per_class is not None and cfg.train_per_class < 1:
        raise UsageError(f"{opt('train_per_class')} must be >= 1, got {cfg.train_per_class}",
                         param="train_per_class")


@dataclass
class FinetuneResult:
    """A finished fine-tuning run: what the run record and the saved model are made of."""

    cfg: FinetuneConfig
    store: object               # the FeatureStore whose split it was trained on
    plan: Plan
    stage_names: list
    trunk_state: dict           # state_dict of the frozen, cached trunk (empty without cache)
    model: object               # the trained top (or whole) network
    train: object               # pipeline.train.loop.TrainResult
    val_proba: np.ndarray       # (n_val, n_classes)
    test_proba: np.ndarray      # (n_test, n_classes)
    use_cache: bool
    cache_seconds: float
    preprocessing: object
    weights_id: str
    skipped: list
    seconds: float
    folds: list | None = None   # cv: one pipeline.heads.crossval.FoldResult per outer fold
    selection: object = None    # pipeline.balance.Selection: metric and class weights, and why

    def model_bundle(self) -> dict:
        """What ``torch.save`` stores: enough to rebuild the network and classify."""
        return {"config": self.cfg.key_dict(), "classes": self.store.classes,
                "stage_names": self.stage_names, "cut": self.plan.cut if self.use_cache else 0,
                "trunk_state": self.trunk_state, "top_state": self.model.state_dict(),
                "preprocessing": self.preprocessing.to_dict()}


def network_from_bundle(bundle: dict):
    """The trained network of a saved :meth:`FinetuneResult.model_bundle`, in eval mode:
    normalised ``(N, 3, S, S)`` -> ``(N, n_classes)`` logits (the frozen trunk, then the
    trained top).  Every tensor comes from the bundle, so the backbone is built on the
    meta device (no random initialisation to compute) and the saved tensors assigned."""
    from ..backbones import load_backbone

    torch, nn = _torch()
    cfg, cut = bundle["config"], int(bundle["cut"])
    with torch.device("meta"):
        loaded = load_backbone(cfg["backbone"], "none")
        stages = classified_stages(loaded.stages(), loaded.spec, cfg.get("classify_at"))
        names = [n for n, _ in stages]
        if names != list(bundle["stage_names"]):
            raise UsageError(f"the saved network has stages {bundle['stage_names']} but "
                             f"{cfg['backbone']} here has {names}; it was saved by another "
                             "version")
        top = build_network(stages[cut:], len(bundle["classes"]), cfg["dropout"],
                            channels=_out_channels(stages))
        trunk = nn.Sequential(*[m for _, m in stages[:cut]])
    top.load_state_dict(bundle["top_state"], assign=True)
    trunk.load_state_dict({k.removeprefix("trunk."): v for k, v in bundle["trunk_state"].items()},
                          assign=True)
    network = nn.Sequential(trunk, top).eval()
    if any(t.is_meta for t in [*network.parameters(), *network.buffers()]):
        raise UsageError("the saved network lacks some of its tensors; it was saved by another "
                         "version")
    return network


def _datasets(cfg, store, loaded, stages, plan, pre, cache: TrunkCache):
    """``(top network, {split: dataset}, skipped, {stage: module}, cache seconds)``.

    ``cfg.train_per_class``: the training set is a draw of that many images per
    class of the training split (:func:`pipeline.data.split.draw_rows` seeded by
    ``cfg.seed``, nested across sizes); the trunk cache still holds every image,
    so runs over several sizes share it.
    """
    import torch

    from ..data.split import draw_rows
    from .datasets import ImageFolderDataset, MirroredViews

    names = [n for n, _ in stages]
    n_classes = len(store.classes)
    if uses_trunk_cache(cfg, plan):
        top = build_network(stages[plan.cut:], n_classes, cfg.dropout,
                            channels=trunk_width(loaded.spec, stages))
        data, cache_seconds = cache.splits(store, loaded, cfg, plan.cut, pre)
        sets = {}
        for s, (acts, ok, _) in data.items():
            labels = store.y(s)[ok.numpy()]
            if s == "train" and cfg.train_per_class:
                rows = draw_rows(labels, cfg.train_per_class, 1, cfg.seed)[0]
                acts, labels = acts[torch.as_tensor(rows)], labels[rows]
            sets[s] = CachedViews(acts, labels, random_view=(s == "train"),
                                  tta=cfg.tta == "flip")
        return top, sets, data["train"][2], dict(zip(names[plan.cut:], top.stages)), \
            cache_seconds
    top = build_network(stages, n_classes, cfg.dropout, channels=trunk_width(loaded.spec, stages))
    sets, skipped = {}, []
    for s in ("train", "val", "test"):
        paths, labels = store.rel_paths(s), store.y(s)
        if s == "train" and cfg.train_per_class:
            rows = draw_rows(labels, cfg.train_per_class, 1, cfg.seed)[0]
            paths, labels = [paths[i] for i in rows], labels[rows]
        ds = ImageFolderDataset(store.data_root, paths, labels, pre,
                                augment=cfg.augment if s == "train" else "none",
                                cache=len(store) <= 5000)
        if s != "train" and ds.skipped:
            raise DataError(f"{s} image(s) of the store no longer decode: {ds.skipped[:3]}")
        skipped += ds.skipped
        sets[s] = MirroredViews(ds) if s != "train" and cfg.tta == "flip" else ds
    return top, sets, skipped, dict(zip(names, top.stages)), 0.0


def _param_groups(top, plan: Plan, model_stages: dict):
    """One :class:`ParamGroup` for the classifier and one per trained block group
    (all frozen to start with: :func:`_hooks` turns them on by epoch)."""
    from .loop import ParamGroup

    group_stages = dict(plan.groups)
    groups = [ParamGroup("classifier", list(top.fc.parameters()), plan.lrs["classifier"])]
    for g in plan.trainable:
        if plan.stage_lrs is None:
            params = [p for s in group_stages[g] for p in model_stages[s].parameters()]
            groups.append(ParamGroup(g, params, plan.lrs[g]))
            continue
        for s in group_stages[g]:   # named "group:stage", so the group's start epoch applies
            groups.append(ParamGroup(f"{g}:{s}", list(model_stages[s].parameters()),
                                     plan.stage_lrs[s]))
    for p in top.parameters():
        p.requires_grad_(False)
    return groups


def _hooks(cfg, plan: Plan, param_groups, model_stages):
    """``(on_epoch_start, set_train_mode)`` for :func:`pipeline.train.loop.train`."""
    def on_epoch_start(epoch):
        for pg in param_groups:
            on = epoch >= plan.start_epoch[pg.name.split(":")[0]]
            for p in pg.params:
                p.requires_grad_(on)

    def set_train_mode(model):
        model.train()
        if cfg.bn == "frozen-eval":
            for module in model_stages.values():
                if not any(p.requires_grad for p in module.parameters()):
                    module.eval()  # a frozen stage is a fixed function: BN uses its running stats

    return on_epoch_start, set_train_mode


def _prepare(cfg: FinetuneConfig):
    """``(cfg, store, loaded backbone, stages, stage names, plan, preprocessing, selection)``;
    ``cfg`` with its backbone, weights (default: the store's, :func:`store_weights`),
    metric and class weighting resolved (``auto``: from the store's class counts,
    :class:`pipeline.balance.Selection`)."""
    from ..backbones import load_backbone
    from ..balance import Selection

    check_config(cfg)
    store = open_store(cfg.features, cfg.split_seed, cfg.groups)
    selection = Selection.resolve(cfg.metric, cfg.class_weight, store.labels, store.classes)
    backbone = cfg.backbone or store.attrs.get("backbone")
    cfg = replace(cfg, backbone=backbone, weights=cfg.weights or store_weights(store, backbone),
                  metric=selection.metric, class_weight=selection.class_weight)
    loaded = load_backbone(cfg.backbone, cfg.weights)
    stages = classified_stages(loaded.stages(), loaded.spec, cfg.classify_at)
    names = [n for n, _ in stages]
    plan = make_plan(loaded.spec, names, cfg)
    return cfg, store, loaded, stages, names, plan, _transform_pre(loaded.spec.preprocessing,
                                                                    cfg.input_size), selection


def classified_stages(stages, spec, classify_at: str | None) -> list:
    """``stages`` up to the stage of tap ``classify_at`` (the classifier reads its pooled
    output: the tap's own features), or all of them when None."""
    if classify_at is None:
        return stages
    if classify_at not in spec.tap_names:
        raise UsageError(f"{opt('classify_at', repr(classify_at))} is not a tap of {spec.name}; "
                         f"valid: {', '.join(spec.tap_names)}", param="classify_at")
    names = [n for n, _ in stages]
    return stages[:names.index(spec.tap(classify_at).stage) + 1]


def store_weights(store, backbone: str) -> str:
    """The weights fine-tuning starts from when none are given: those ``store``'s features
    were extracted with (``imagenet``, ``none`` or the file, as its ``weights_source``
    records) when ``backbone`` is the store's, else ``imagenet``.

    :class:`WeightsError` naming the file and the option when the store's weights file
    is gone or has changed since (its identity, a SHA-256, no longer matches)."""
    from ..backbones import get_backbone, weights_identity

    spec, identity = get_backbone(backbone), store.config.get("weights", "")
    if spec.name != store.attrs.get("backbone"):
        log.info("weights: imagenet (%s was extracted with another backbone, %s)",
                 store.path, store.attrs.get("backbone"))
        return "imagenet"
    source = store.attrs.get("weights_source") or (
        "none" if identity == weights_identity(spec, "none") else
        None if identity.startswith("file:") else "imagenet")   # stores before the attribute
    if source is None or (source not in ("imagenet", "none") and (
            not Path(source).is_file() or weights_identity(spec, source) != identity)):
        why = ("the store does not record which file they came from" if source is None else
               f"their file {source} " + ("has changed since" if Path(source).is_file()
                                          else "no longer exists"))
        raise WeightsError(
            f"fine-tuning starts from the weights {store.path} was extracted with "
            f"({identity}), but {why}; pass {opt('weights', 'PATH')} to that file to start "
            f"from them, or {opt('weights', 'imagenet')} or {opt('weights', 'none')} to start "
            "from other weights", param="weights")
    log.info("weights: %s (those %s was extracted with)", source, store.path)
    return source


def _train_top(cfg, plan, top, model_stages, train_set, val_set, checkpoints: bool = True,
               wise_alpha: float | None = None, probe_c: float | None = None):
    """Train ``top`` (its block groups per ``plan``) on ``train_set``, early-stopping on
    ``val_set`` (the epoch kept by ``cfg.metric``, the loss weighted by ``cfg.class_weight``
    counted on ``train_set``); with ``cfg.probe == "logreg"``, its classifier first set to
    a converged linear probe (:func:`fit_probe`, its C chosen on ``val_set``, or
    ``probe_c`` when given); with ``cfg.wise``, then mixed with the linear probe's
    weights (:func:`choose_wise`, on ``val_set``; at ``wise_alpha`` when given: a
    coefficient chosen elsewhere).  Returns :class:`pipeline.train.loop.TrainResult`
    (``extra["wise"]``: the coefficient and each one's validation figures;
    ``extra["probe"]``: the probe's C and validation score)."""
    from .loop import Schedule, TrainConfig, loss_weights, select_by_for, train

    probe_fit = (fit_probe(top, train_set, val_set, cfg, probe_c)
                 if cfg.probe == "logreg" else None)
    param_groups = _param_groups(top, plan, model_stages)
    on_epoch_start, set_train_mode = _hooks(cfg, plan, param_groups, model_stages)
    ckpt_dir = cfg.checkpoint_dir if checkpoints else None
    probe = _ProbeSnapshot(top, cfg.lp_epochs, ckpt_dir, cfg.resume) if cfg.wise else None
    tcfg = TrainConfig(
        epochs=cfg.epochs, batch_size=cfg.batch_size, optimizer="adamw",
        weight_decay=cfg.weight_decay,
        schedule=Schedule(cfg.schedule, per=cfg.schedule_per, gamma=cfg.gamma,
                          step_size=cfg.step_size, warmup_epochs=cfg.warmup_epochs),
        label_smoothing=cfg.label_smoothing, patience=cfg.patience, seed=cfg.seed,
        checkpoint_dir=ckpt_dir, resume=cfg.resume and checkpoints, stop_after=cfg.stop_after,
        class_weights=loss_weights(cfg.class_weight, train_set, top.fc.out_features),
        select_by=select_by_for(cfg.metric), mixup=cfg.mixup, cutmix=cfg.cutmix,
        ema_decay=cfg.ema)

    def epoch_start(epoch):
        if probe is not None:
            probe.take(epoch)
        on_epoch_start(epoch)

    res = train(top, param_groups, train_set, val_set, tcfg,
                on_epoch_start=epoch_start, set_train_mode=set_train_mode)
    if probe_fit is not None:
        res.extra["probe"] = probe_fit
    if probe is not None and probe.state is not None:
        res.extra["wise"] = choose_wise(top, probe.state, val_set, tcfg,
                                        (wise_alpha,) if wise_alpha is not None else WISE_ALPHAS)
    return res


def fit_probe(top, train_set, val_set, cfg, C: float | None = None) -> dict:
    """LP-FT's converged linear probe, loaded into ``top.fc``: logistic regression on
    ``top``'s pooled features (pretrained, eval mode) of the training images' centre
    crops, its C chosen by ``cfg.metric`` on ``val_set``'s centre crops over the
    ``logreg`` head's grid (``C`` when given: one chosen elsewhere) and the head fitted
    on the training images alone (validation then still judges epochs and WiSE-FT's
    mix honestly), with ``cfg.class_weight``.  The frozen-feature head of
    :mod:`pipeline.heads` on the top's own output, so fine-tuning starts where the
    frozen head ends.  ``{"C", "val_score"}``."""
    import torch

    from ..heads.selection import Choice, select_and_fit
    from .deploy import linear_head

    X_train, y_train = _pooled(top, train_set.unaugmented())
    X_val, y_val = _pooled(top, val_set.unaugmented())
    if len(np.unique(y_train)) < 2:
        raise DataError("the training images hold one class; the linear probe needs two: "
                        f"use {opt('probe', 'epochs')} or more images per class")
    fit = select_and_fit("logreg", X_train, y_train, X_val, y_val, cfg.seed,
                         grid=None if C is None else [C],
                         choice=Choice(cfg.metric, cfg.class_weight), refit=False)
    linear = linear_head(fit.model, X_train.shape[1])
    present = torch.as_tensor(fit.model.classes_)
    with torch.no_grad():   # a class absent from the training images: never predicted
        top.fc.weight.zero_()
        top.fc.bias.fill_(float(linear.bias.min()) - 10.0)
        top.fc.weight[present] = linear.weight.to(top.fc.weight.dtype)
        top.fc.bias[present] = linear.bias.to(top.fc.bias.dtype)
    score = max(r[f"val_{fit.metric}"] for r in fit.search)   # the chosen C's
    log.info("linear probe: logistic regression, C %g chosen on validation (%s %.3f)",
             fit.params["C"], fit.metric, score)
    return {"C": fit.params["C"], "val_score": score}


def _pooled(top, dataset, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """``(features (n, C) float64, labels (n,))``: ``top.features`` of ``dataset`` in eval
    mode."""
    import torch

    was_training = top.training
    top.eval()
    feats, labels = [], []
    with torch.no_grad():
        for x, y in torch.utils.data.DataLoader(dataset, batch_size=batch_size):
            feats.append(top.features(x).double().numpy())
            labels.append(y.numpy())
    top.train(was_training)
    return np.concatenate(feats), np.concatenate(labels)


class _ProbeSnapshot:
    """The top's weights when the linear probe ends (the start of epoch ``lp_epochs``):
    WiSE-FT's first endpoint.  Kept in ``checkpoint_dir`` (``probe.pt``) when given, so a
    resumed run mixes with the same weights."""

    def __init__(self, top, lp_epochs: int, checkpoint_dir, resume: bool):
        import torch

        self.top, self.lp_epochs, self.state = top, lp_epochs, None
        self.file = Path(checkpoint_dir) / "probe.pt" if checkpoint_dir else None
        if resume and self.file is not None and self.file.is_file():
            try:   # weights_only: tensors and plain containers, never code
                self.state = torch.load(self.file, map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
                raise StoreError(f"the linear probe's weights {self.file} cannot be read "
                                 f"({unsafe_load_reason(exc)}); delete {self.file.parent} and "
                                 f"run without {opt('resume')}", param="resume") from None

    def take(self, epoch: int):
        import copy

        import torch

        from ..files import atomic_path

        if epoch != self.lp_epochs or self.state is not None:
            return
        self.state = copy.deepcopy(self.top.state_dict())
        if self.file is not None:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.file) as tmp:
                torch.save(self.state, tmp)


#: The WiSE-FT mixing coefficients tried on validation (0: the linear probe, 1: fine-tuned).
WISE_ALPHAS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def mix_states(probe: dict, tuned: dict, alpha: float) -> dict:
    """``(1 - alpha) * probe + alpha * tuned`` for every floating tensor (weights and
    BatchNorm statistics); other tensors (step counts) from ``tuned``."""
    return {k: (_lerp(probe[k], v, alpha) if v.is_floating_point() else v)
            for k, v in tuned.items()}


def _lerp(a, b, alpha: float):
    if alpha == 0.0:
        return a.clone()
    if alpha == 1.0:
        return b.clone()
    return a + (b - a) * alpha


def choose_wise(top, probe: dict, val_set, tcfg, alphas=WISE_ALPHAS) -> dict:
    """Load into ``top`` the mix of ``probe`` and its own (fine-tuned) weights that scores
    best on ``val_set`` among ``alphas``: by the run's metric (accuracy when the epoch is
    chosen by validation loss; else ``tcfg.select_by``), ties to the lower validation
    loss, then the larger coefficient.  ``{"alpha", "scores": [{"alpha", "val_loss",
    "val_score"}]}``."""
    import copy

    from .loop import validate

    tuned = copy.deepcopy(top.state_dict())
    scores = []
    for alpha in alphas:
        top.load_state_dict(mix_states(probe, tuned, alpha))
        loss, acc, values, _ = validate(top, val_set, tcfg)
        value = acc if tcfg.select_by in ("val_loss", "accuracy") else values[tcfg.select_by]
        scores.append({"alpha": alpha, "val_loss": loss, "val_score": value})
    best = max(scores, key=lambda r: (r["val_score"], -r["val_loss"], r["alpha"]))
    top.load_state_dict(mix_states(probe, tuned, best["alpha"]))
    top.eval()
    log.info("WiSE-FT: alpha %.1f chosen on validation (%s)", best["alpha"],
             ", ".join(f"{r['alpha']:.1f}: {r['val_score']:.3f}" for r in scores))
    return {"alpha": best["alpha"], "scores": scores}


def _trunk_state(stages, plan, use_cache: bool) -> dict:
    return {f"trunk.{i}.{k}": v for i, (_, m) in enumerate(stages[:plan.cut])
            for k, v in m.state_dict().items()} if use_cache else {}


def finetune(cfg: FinetuneConfig, cache_dir=None) -> FinetuneResult:
    """Fine-tune per ``cfg`` on the split of the store ``cfg.features``.

    ``cache_dir``: the :class:`~pipeline.train.trunk_cache.TrunkCache` of the cached
    trunk outputs (shared with other runs of the same process: nothing is computed
    twice), or a folder that keeps them on disk (reused by later runs and by
    ``resume``), or None (kept for this run only).  Writes only checkpoints
    (``cfg.checkpoint_dir``); :mod:`pipeline.workflows.finetune` saves the run record
    and the model.
    """
    import torch

    from .loop import evaluate_model

    t_start = time.perf_counter()
    cfg, store, loaded, stages, names, plan, pre, selection = _prepare(cfg)
    torch.manual_seed(cfg.seed)
    top, sets, skipped, model_stages, cache_seconds = _datasets(cfg, store, loaded, stages,
                                                                plan, pre,
                                                                TrunkCache.of(cache_dir))
    use_cache = len(model_stages) < len(names)
    res = _train_top(cfg, plan, top, model_stages, sets["train"], sets["val"])
    _, _, val_proba = evaluate_model(top, sets["val"])
    _, _, test_proba = evaluate_model(top, sets["test"])
    return FinetuneResult(cfg, store, plan, names, _trunk_state(stages, plan, use_cache), top,
                          res, val_proba, test_proba, use_cache, cache_seconds, pre,
                          loaded.weights_id, skipped, time.perf_counter() - t_start,
                          selection=selection)


def uses_trunk_cache(cfg: FinetuneConfig, plan: Plan) -> bool:
    """Whether a run trains on cached frozen-trunk outputs: the cache on, BatchNorm of the
    frozen stages in eval mode (so they compute a fixed function) and a frozen stage."""
    return cfg.cache == "auto" and cfg.bn == "frozen-eval" and plan.cut > 0


def prefill_trunk_cache(cfgs, cache: TrunkCache) -> float:
    """Fill ``cache`` with the frozen-trunk outputs every holdout run of ``cfgs`` will read,
    runs that share a store, backbone, weights and views (an explorer grid, a ladder)
    in one pass through the trunk (:meth:`TrunkCache.prefill`), each depth under the key
    :func:`finetune` looks for, so the runs compute nothing more.  Returns the seconds
    spent computing."""
    groups = {}
    for cfg in cfgs:
        cfg, store, loaded, _, _, plan, pre, _ = _prepare(cfg)
        if uses_trunk_cache(cfg, plan):   # what the key holds besides the cut: one pass
            group = cache_key(store, cfg, 0, loaded.weights_id, pre, PER_SPLIT)
            groups.setdefault(group, [store, loaded, cfg, pre, set()])[-1].add(plan.cut)
    return sum(cache.prefill(store, loaded, cfg, sorted(cuts), pre, PER_SPLIT)
               for store, loaded, cfg, pre, cuts in groups.values())


def _check_cv_config(cfg, plan):
    if not uses_trunk_cache(cfg, plan):
        raise UsageError(f"cross-validated fine-tuning shares the frozen-trunk cache across "
                         f"folds: it needs {opt('cache', 'auto')}, {opt('bn', 'frozen-eval')} "
                         f"and a frozen trunk ({opt('unfreeze')} other than 'all'); or use "
                         f"{opt('protocol', 'holdout')}", param="protocol")
    if cfg.train_per_class:
        raise UsageError(f"{opt('train_per_class')} subsamples the holdout training split; "
                         f"use {opt('protocol', 'holdout')}", param="train_per_class")


def _require_every_image(skipped):
    if skipped:
        raise DataError(f"{len(skipped)} image(s) of the store no longer decode ({skipped[0][0]}: "
                        f"{skipped[0][1]}); every fold needs every image: restore or re-extract")


def finetune_cv(cfg: FinetuneConfig, cache_dir=None) -> FinetuneResult:
    """Fine-tune on every outer fold of the store's repeated K-fold, nested.

    The frozen trunk's outputs are computed once for every image (``views``
    each) and shared by all folds; each fold trains a fresh copy of the
    pretrained top on its training rows, the early-stopping epoch chosen on an
    inner 15% validation split of them, and predicts its test rows (centre
    crop).  The returned model is trained on every image for the folds'
    median best epoch.  Needs the trunk cache (``cache="auto"``,
    ``bn="frozen-eval"``, ``unfreeze`` other than ``"all"``); no checkpoints.
    ``cache_dir`` as for :func:`finetune`.
    """
    import copy

    import torch

    t_start = time.perf_counter()
    cfg, store, loaded, stages, names, plan, pre, selection = _prepare(cfg)
    _check_cv_config(cfg, plan)
    data, cache_seconds = TrunkCache.of(cache_dir).splits(store, loaded, cfg, plan.cut, pre,
                                                          layout=ALL_IMAGES)
    acts, _ok, skipped = data["all"]
    _require_every_image(skipped)
    y, n_classes = store.labels, len(store.classes)
    pristine = [m for _, m in stages[plan.cut:]]

    def fresh_top():
        torch.manual_seed(cfg.seed)
        top = build_network(list(zip(names[plan.cut:], copy.deepcopy(pristine))), n_classes,
                            cfg.dropout, channels=trunk_width(loaded.spec, stages))
        return top, dict(zip(names[plan.cut:], top.stages))

    def views(rows, train):
        return CachedViews(acts[torch.as_tensor(rows)], y[rows], random_view=train,
                           tta=cfg.tta == "flip", train_views=cfg.views)

    folds, epochs, histories = _train_folds(cfg, plan, store, fresh_top, views)
    top, model_stages = fresh_top()
    everything = np.arange(len(y))
    # WiSE-FT's coefficient: the folds' median (chosen on their inner validation splits),
    # never one chosen on the images the final model trains on
    # and the linear probe's C likewise (the median of a log grid, geometric)
    alphas = [f.params["wise_alpha"] for f in folds if "wise_alpha" in f.params]
    cs = [f.params["probe_C"] for f in folds if "probe_C" in f.params]
    final = _train_top(replace(cfg, epochs=max(1, int(np.median(epochs))), patience=None),
                       plan, top, model_stages, views(everything, True),
                       views(everything, False), checkpoints=False,
                       wise_alpha=float(np.median(alphas)) if alphas else None,
                       probe_c=float(np.exp(np.median(np.log(cs)))) if cs else None)
    # The record's learning curves: the first outer fold's, whose validation split is real.
    final = replace(final, history=histories[0], best_epoch=epochs[0])
    return FinetuneResult(cfg, store, plan, names, _trunk_state(stages, plan, True), top, final,
                          None, None, True, cache_seconds, pre, loaded.weights_id, skipped,
                          time.perf_counter() - t_start, folds, selection)


def _train_folds(cfg, plan, store, fresh_top, views) -> tuple[list, list, list]:
    """``(fold results, best epochs, histories)``: a fresh top per outer fold of the store's
    cv, trained on its training rows with the epoch chosen on an inner validation split
    (group-aware when the split has groups), scored on its test rows; its temperature is
    fitted on that inner validation split's predictions."""
    from ..calibration import fit_temperature
    from ..data.partition import inner_split
    from ..heads.crossval import FoldResult
    from .loop import evaluate_model

    y = store.labels
    folds, epochs, histories = [], [], []
    for r, k, train_rows, test_rows in store.cv_splits():
        tr, va = inner_split(y, train_rows, cfg.seed + r, groups=store.row_groups)
        top, model_stages = fresh_top()
        res = _train_top(cfg, plan, top, model_stages, views(tr, True), views(va, False),
                         checkpoints=False)
        _, acc, proba = evaluate_model(top, views(test_rows, False))
        _, _, val_proba = evaluate_model(top, views(va, False))
        epochs.append(res.best_epoch)
        histories.append(res.history)
        chosen = {"best_epoch": res.best_epoch,
                  **({"wise_alpha": res.extra["wise"]["alpha"]} if "wise" in res.extra else {}),
                  **({"probe_C": res.extra["probe"]["C"]} if "probe" in res.extra else {})}
        folds.append(FoldResult(r, k, test_rows, proba, chosen,
                                len(train_rows), seconds=res.seconds,
                                temperature=fit_temperature(val_proba, y[va])))
        log.info("fine-tune fold %d of repeat %d: accuracy %.3f (best epoch %d)", k + 1, r + 1,
                 acc, res.best_epoch)
    return folds, epochs, histories


def method_name(cfg: FinetuneConfig) -> str:
    if cfg.unfreeze == "none":
        return "finetune-head"
    if cfg.lp_epochs or cfg.probe == "logreg":
        return "finetune-lpft"
    if cfg.gradual:
        return "finetune-gradual"
    if cfg.lr_factor != 1.0 or cfg.layer_decay is not None:
        return "finetune-differential"
    return "finetune-top"


def describe(cfg: FinetuneConfig) -> str:
    what = {"none": "head only", "all": "all groups"}.get(cfg.unfreeze,
                                                          f"from {cfg.unfreeze}")
    parts = [f"fine-tune {what}"]
    if cfg.probe == "logreg":
        parts.append("LP-FT logreg probe" + (f" + {cfg.lp_epochs}ep" if cfg.lp_epochs else ""))
    elif cfg.lp_epochs:
        parts.append(f"LP-FT {cfg.lp_epochs}ep")
    if cfg.unfreeze != "none" and cfg.layer_decay is not None:
        parts.append(f"layer decay {cfg.layer_decay:g}")
    elif cfg.unfreeze != "none" and cfg.lr_factor != 1.0:
        parts.append(f"lr x{cfg.lr_factor:g}/group")
    if cfg.gradual:
        parts.append(f"gradual/{cfg.gradual}ep")
    parts.append(f"warm-up {cfg.warmup_epochs:g}ep + {cfg.schedule}" if cfg.warmup_epochs
                 else cfg.schedule)
    parts += [name for name, on in (
        (f"mixup {cfg.mixup:g}", cfg.mixup), (f"cutmix {cfg.cutmix:g}", cfg.cutmix),
        (f"EMA {cfg.ema or 0:g}", cfg.ema), ("WiSE-FT", cfg.wise),
        (f"{cfg.augment} aug", cfg.augment != "standard"), ("flip TTA", cfg.tta == "flip"))
        if on]
    if cfg.input_size:
        parts.append(f"{cfg.input_size}px")
    return ", ".join(parts)
