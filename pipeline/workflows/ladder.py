"""The course ladder: every strategy on one store's split, one table.

:func:`run_ladder` returns one :class:`LadderRow` per rung, its metrics named as a run
record's (``accuracy``, ``balanced_accuracy``, ``macro_f1``, ``fit_seconds``,
``trainable_params``, ``protocol``); :meth:`LadderRow.to_dict` is its JSON.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from ..configs import (
    LADDER_EPOCHS,
    LADDER_HEAD_EPOCHS,
    BaselineConfig,
    FinetuneConfig,
    FitConfig,
    LadderConfig,
    preset_config,
)
from ..errors import UsageError
from ..runs.groups import collapse_of, majority_reference, record_metric, score, test_metrics
from ..runs.protocol import resolve_protocol
from ..runs.records import DEFAULT_RUNS_DIR, as_record
from ..store.hdf5 import open_store
from .finetune import run_finetune_seeds

log = logging.getLogger(__name__)


#: The ladder's strongest fine-tuning rung: :data:`pipeline.configs.PRESETS` ``recommended``.
PRESET_RUNG = "recommended preset"


def ladder_configs(features, epochs: int = LADDER_EPOCHS, views: int = 3,
                   head_epochs: int = LADDER_HEAD_EPOCHS) -> list[tuple[str, FinetuneConfig]]:
    """The fine-tuning rungs of the ladder, with the defaults we tuned (see docs/results.md),
    the last the recommended preset (its own epochs; the ladder's views, so it reads the
    same trunk cache as the other rungs).

    Their trunk caches are filled in one pass (:func:`share_trunk_cuts`): the head-only
    rung reads the whole backbone's pooled output (its epochs then train the classifier
    alone: on 250 MRI scans under cv the rung took 98 s when it ran layer4 and the
    head, frozen, every epoch), the others layer3's."""
    base = FinetuneConfig(features=features, epochs=epochs, views=views, cache_at="layer3")
    return [
        ("fine-tune head only", replace(base, unfreeze="none", lr=3e-3, cache_at=None,
                                        epochs=head_epochs)),
        ("fine-tune top groups", replace(base, unfreeze="layer4", lr=1e-3, lr_factor=1.0)),
        ("differential LR", replace(base, unfreeze="layer4", lr=3e-3, lr_factor=0.3)),
        ("gradual unfreezing", replace(base, unfreeze="layer4", lr=3e-3, lr_factor=0.3,
                                       gradual=1)),
        (PRESET_RUNG, preset_config("recommended", features=features, views=views)),
    ]


@dataclass(kw_only=True)
class LadderRow:
    """One rung of the ladder (a group of runs, one per seed) or the majority-class
    reference, with its metrics named as a run record's.

    ``accuracy``, ``balanced_accuracy``, ``macro_f1``: the scored figures (test split
    under holdout; under cv ``accuracy`` is the cross-validated mean over folds, the
    other two those of the out-of-fold predictions), mean over the seeds;
    ``accuracy_std`` the seeds' s.d. of ``accuracy``; ``val_accuracy`` on validation
    (holdout) or the cross-validated mean (cv).  The same in the selection ``metric``:
    ``score``, ``val_score``, ``score_std``, and ``ci``, the 95% interval of the first
    seed's ``score`` (corrected resampled t under cv).  ``fit_seconds`` and
    ``trainable_params`` as in the records; ``protocol`` the runs' protocol name;
    ``collapsed`` what a run that answers one class does (None when none does);
    ``reference`` marks the majority-class row (no runs, ``n_seeds`` 0, no validation
    figures).
    """

    label: str
    protocol: str
    metric: str
    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    score: float
    ci: tuple
    n_seeds: int = 1
    accuracy_std: float = 0.0
    score_std: float = 0.0
    val_accuracy: float | None = None
    val_score: float | None = None
    trainable_params: int | None = None
    fit_seconds: float = 0.0
    collapsed: str | None = None
    reference: bool = False
    run_ids: list = field(default_factory=list)

    def to_dict(self) -> dict:
        """The row as a JSON object (``ci`` a list)."""
        return {**asdict(self), "ci": list(self.ci)}


def _std(values: list) -> float:
    """The seeds' sample s.d. (0 for one seed)."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def summarise_group(records, metric: str | None = None) -> LadderRow:
    """The :class:`LadderRow` of a group of records (one per seed): means over the seeds
    and their spread, in accuracy and in the selection ``metric`` (default: the one
    the runs were selected by)."""
    records = [as_record(r) for r in records]
    metric = metric or record_metric(records[0])
    accuracy = [score(r, "accuracy") for r in records]
    scores = [score(r, metric) for r in records]
    test = [sc["value"] for sc in accuracy]
    values = [sc["value"] for sc in scores]
    return LadderRow(
        label=records[0].label, n_seeds=len(records), protocol=records[0].protocol.name,
        metric=metric, ci=(scores[0]["low"], scores[0]["high"]),
        trainable_params=records[0].trainable_params,
        fit_seconds=float(np.mean([r.fit_seconds for r in records])),
        val_accuracy=float(np.mean([sc["select"] for sc in accuracy])),
        accuracy=float(np.mean(test)), accuracy_std=_std(test),
        val_score=float(np.mean([sc["select"] for sc in scores])),
        score=float(np.mean(values)), score_std=_std(values),
        balanced_accuracy=float(np.mean([test_metrics(r)["balanced_accuracy"]
                                         for r in records])),
        macro_f1=float(np.mean([test_metrics(r)["macro_f1"] for r in records])),
        collapsed=next((c["text"] for c in map(collapse_of, records) if c), None),
        run_ids=[r.run_id for r in records])


def reference_row(record, metric: str) -> LadderRow | None:
    """The majority-class reference (:func:`pipeline.runs.groups.majority_reference`) on
    ``record``'s scored images, as a :class:`LadderRow` (``reference=True``)."""
    record = as_record(record)
    ref = majority_reference(record, metric)
    if ref is None:
        return None
    return LadderRow(label=ref["name"], n_seeds=0, protocol=record.protocol.name,
                     metric=metric, ci=(ref["low"], ref["high"]), trainable_params=0,
                     accuracy=ref["accuracy"], balanced_accuracy=ref["balanced_accuracy"],
                     macro_f1=ref["macro_f1"], score=ref["value"], reference=True)


def _check_rungs(rungs, known: set):
    if rungs is not None and set(rungs) - known:
        raise UsageError(f"unknown rung(s) {', '.join(sorted(set(rungs) - known))}; "
                         f"valid: {', '.join(sorted(known))}", param="rungs")


def _frozen_row(fitted: list, protocol) -> tuple[LadderRow, object]:
    """``(row, record)`` of the frozen rung: logreg on the tap chosen without test data
    (one that learned before a collapsed one), from ``fitted`` ``[(record, path)]``."""
    best = max((r for r, _ in fitted), key=lambda r: (collapse_of(r) is None,
                                                       score(r)["select"]))
    row = replace(summarise_group([best]),
                  label=f"frozen {best.label} (best tap on {protocol.select_short})")
    return row, best


def share_trunk_cuts(configs, store, cache) -> list:
    """Tell ``cache`` every depth at which the fine-tuning ``configs`` (of the store
    ``store``, one backbone) read the frozen trunk, so the first rung's pass through it
    fills them all (:meth:`~pipeline.train.trunk_cache.TrunkCache.share_cuts`).  Returns
    the cuts (stage counts)."""
    import torch

    from ..backbones import get_backbone, load_backbone
    from ..train.finetune import classified_stages, make_plan, uses_trunk_cache

    backbones = {c.backbone or store.attrs.get("backbone") for c in configs}
    if len(backbones) != 1:
        return []
    name = backbones.pop()
    with torch.device("meta"):   # the stage names only: no weights, no initialisation
        stages = load_backbone(name, "none").stages()
    spec = get_backbone(name)
    plans = [(c, make_plan(spec, [n for n, _ in classified_stages(stages, spec, c.classify_at)],
                           c)) for c in configs]
    cuts = sorted({p.cut for c, p in plans if uses_trunk_cache(c, p)})
    cache.share_cuts(name, cuts)
    return cuts


def _rung_names(rungs) -> list | None:
    """The rungs asked for: names, or one comma-separated string of them; None: all."""
    if isinstance(rungs, str):
        return [r.strip() for r in rungs.split(",") if r.strip()] or None
    return list(rungs) if rungs else None


def run_ladder(cfg: LadderConfig, runs_dir=DEFAULT_RUNS_DIR,
               cache_dir=None) -> list[LadderRow]:
    """Every rung of the course ladder on one store's split; one :class:`LadderRow` per rung.

    Rungs: pixels, MLP, scratch CNN, frozen logreg on the tap with the best
    validation accuracy, then the fine-tuning rungs of :func:`ladder_configs`,
    each repeated for ``cfg.seeds`` seeds (the MLP and scratch CNN for
    ``cfg.baseline_seeds``; pixels and frozen heads are deterministic given the
    split: one run each).  ``cfg.rungs`` restricts to a subset of
    rung names.  The last row is the majority-class reference (``reference``).
    Every rung runs under one ``protocol`` (resolved once, ``auto`` by size) and
    one selection ``metric`` and
    ``class_weight`` (resolved once from the store's classes; ``auto``: balanced
    accuracy and balanced weights when they are imbalanced), on one split
    (``split_seed`` and ``groups``: the store's when None).  The fine-tuning rungs
    share one :class:`~pipeline.train.trunk_cache.TrunkCache` (``cache_dir``: the
    caller's, or the folder of a new one), so a trunk two rungs cut alike is computed
    once.
    """
    from ..train.trunk_cache import TrunkCache
    from .fit import find_store, resolve_selection, run_fit

    features = str(find_store(cfg.features))
    rungs = _rung_names(cfg.rungs)
    # each rung resolves the same store the same way, and its record keeps why (auto: ...)
    shared = {"split_seed": cfg.split_seed, "groups": cfg.groups, "metric": cfg.metric,
              "class_weight": cfg.class_weight}
    configs = [(name, replace(c, label=name, **shared))
               for name, c in ladder_configs(features, cfg.epochs, cfg.views, cfg.head_epochs)]
    _check_rungs(rungs, {"pixels", "mlp", "cnn", "frozen"} | {name for name, _ in configs})
    store = open_store(features, cfg.split_seed, cfg.groups)
    protocol = resolve_protocol(cfg.protocol, store)
    log.info("ladder protocol: %s", protocol.why)
    selection = resolve_selection(store, cfg.metric, cfg.class_weight)   # checked up front
    shared.update(features=features, protocol=protocol.name)
    cache = TrunkCache.of(cache_dir)
    share_trunk_cuts([c for name, c in configs if rungs is None or name in rungs], store,
                     cache)
    rows, last = [], None
    for kind in ("pixels", "mlp", "cnn"):
        if rungs is None or kind in rungs:
            recs = _baseline_rung(kind, cfg, shared, protocol, runs_dir)
            rows.append(summarise_group(recs))
            last = recs[0]
    if rungs is None or "frozen" in rungs:
        fitted = run_fit(FitConfig(layer="all", clf="logreg", **shared), runs_dir)
        row, last = _frozen_row(fitted, protocol)
        rows.append(row)
    for name, c in configs:
        if rungs is None or name in rungs:
            recs = [r for r, _ in run_finetune_seeds(replace(c, protocol=protocol.name),
                                                     cfg.seeds, runs_dir, cache)]
            rows.append(summarise_group(recs))
            last = recs[0]
    reference = reference_row(last, selection.metric) if last else None
    return rows + ([reference] if reference else [])


def _baseline_rung(kind: str, cfg: LadderConfig, shared: dict, protocol, runs_dir) -> list:
    """The records of baseline rung ``kind`` (one per seed; pixels: one) under ``protocol``."""
    from .baseline import run_baseline

    epochs = cfg.cnn_epochs if kind == "cnn" else None
    # under cv the CNN is fitted once per fold: a narrower one (LADDER_CV_CNN_WIDTH)
    options = protocol.pick(holdout={}, cv={"width": cfg.cnn_cv_width}) if kind == "cnn" \
        else {}
    return [run_baseline(BaselineConfig(kind=kind, seed=s, epochs=epochs, options=options,
                                        **shared), runs_dir)[0]
            for s in range(cfg.baseline_seeds if kind != "pixels" else 1)]
