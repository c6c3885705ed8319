"""The Python API: the same product as the CLI, for a notebook.

Every function here joins the same workflows the CLI runs, writes the same
files (a store under ``out``, run records under ``runs_dir``), and returns
objects: :func:`extract` a :class:`~pipeline.store.hdf5.FeatureStore`
(``store.xy("layer4", "train")`` gives ``(X, y)``), :func:`fit`,
:func:`baseline` and :func:`finetune` a :class:`Run` (its record, its model,
where both were saved), :func:`report` the path of the page.  ``import
pipeline`` re-exports these lazily, so importing the package stays light.

Example::

    import pipeline as wb
    store = wb.extract(layers=["layer3", "layer4"])          # the bundled flowers
    X, y = store.xy("layer4", "train")                       # (n, 320) float32, (n,)
    head = wb.fit(store, layer="layer4", clf="logreg")
    print(head.label, head.accuracy)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .configs import (
    DEFAULT_EXPERIMENT,
    AuditConfig,
    BaselineConfig,
    ExtractConfig,
    FinetuneConfig,
    FitConfig,
)
from .options import DEFAULT_DIVERSITY
from .runs.records import DEFAULT_RUNS_DIR, RunRecord


@dataclass
class Run:
    """One run: its ``record`` (a :class:`~pipeline.runs.records.RunRecord`, as saved),
    the ``model`` it trained, and the files.

    ``model`` is the fitted scikit-learn pipeline of a frozen head or pixel
    baseline, or the trained torch network of an MLP, CNN or fine-tuning run.
    """

    record: RunRecord
    path: Path | None = None
    model: object = None

    @property
    def run_id(self) -> str:
        return self.record.run_id

    @property
    def label(self) -> str:
        return self.record.label

    @property
    def protocol(self):
        """The :class:`~pipeline.runs.protocol.Protocol` it was judged under (equal to its
        name, ``"holdout"`` or ``"cv"``)."""
        return self.record.protocol

    @property
    def accuracy(self) -> float:
        """Test accuracy (holdout) or the cross-validated mean (cv)."""
        from .runs.groups import score

        return score(self.record, "accuracy")["value"]

    @property
    def interval(self) -> tuple[float, float]:
        """95% interval of :attr:`accuracy` (Wilson, or corrected resampled t under cv)."""
        from .runs.groups import score

        sc = score(self.record, "accuracy")
        return sc["low"], sc["high"]

    @property
    def metric(self) -> str:
        """The selection metric the run was chosen by (accuracy, balanced_accuracy, macro_f1)."""
        from .runs.groups import record_metric

        return record_metric(self.record)

    @property
    def score(self) -> float:
        """The run's figure in :attr:`metric`: test (holdout) or cross-validated mean (cv)."""
        from .runs.groups import score

        return score(self.record)["value"]

    def predict_proba(self, X):
        """Class probabilities ``(n, n_classes)`` of a frozen head for features ``X`` ``(n, C)``."""
        from .heads.selection import predict_proba

        return predict_proba(self.model, X)

    def predict(self, X):
        """Predicted label indices ``(n,)`` of a frozen head for features ``X`` ``(n, C)``."""
        return self.predict_proba(X).argmax(axis=1)

    def __repr__(self):
        what = f"{self.protocol.short} accuracy"
        low, high = self.interval
        return f"Run({self.label!r}, {what} {self.accuracy:.3f} [{low:.3f}, {high:.3f}])"


def open_store(path, split_seed: int | None = None, groups: str | None = None):
    """The feature store at ``path`` (an ``.h5`` file written by :func:`extract`), seen with
    the split of ``split_seed`` and group rule ``groups`` (None: the stored ones)."""
    from .store.hdf5 import open_store as _open

    return _open(path, split_seed, groups)


def extract(data=None, *, backbone: str = ExtractConfig.backbone,
            layers=ExtractConfig.layers, out=ExtractConfig.out, **options):
    """Extract the images of ``data`` (default: the bundled flowers) into a store; return it.

    ``layers`` are tap names (default: layer2-4, those the backbone has; ``["all"]``
    for every tap); ``options`` are the other fields of
    :class:`pipeline.configs.ExtractConfig` (``weights``, ``pool``, ``runtime``,
    ``batch_size``, ``seed``, ...); ``pool="auto"`` (the default) is the backbone's
    own pooling, so every backbone extracts with the defaults.  A second call with
    the same options does no forward pass.  The store's ``summary`` says what this
    call did (``summary.resolved``: the pooling and taps used, and why).
    """
    from .extraction.shards import launch_extract

    summary = launch_extract(ExtractConfig(data=None if data is None else str(data),
                                           backbone=backbone, layers=tuple(layers),
                                           out=str(out), **options))
    store = open_store(summary.path)
    store.summary = summary
    return store


def _store_path(store) -> str:
    return str(getattr(store, "path", store))


def fit(store, layer: str = FitConfig.layer, clf: str = FitConfig.clf, *,
        runs_dir=DEFAULT_RUNS_DIR, seed: int = FitConfig.seed,
        protocol: str = FitConfig.protocol, split_seed: int | None = FitConfig.split_seed,
        groups: str | None = FitConfig.groups, metric: str = FitConfig.metric,
        class_weight: str = FitConfig.class_weight):
    """Fit head ``clf`` on tap ``layer`` of ``store`` (a store or its path); a :class:`Run`.

    ``layer="all"`` fits every tap of the store and returns a list of runs.
    ``protocol`` as in the CLI: ``holdout`` (C chosen on validation, scored
    on test), ``cv`` (repeated K-fold, nested) or ``auto`` (cv on small data).
    ``split_seed`` and ``groups`` judge on another split or group rule than the store's
    (no forward pass), as ``--split-seed`` and ``--groups``.
    ``metric`` (accuracy, balanced_accuracy, macro_f1) chooses C; ``class_weight``
    (none, balanced) weights the loss; ``auto`` for both decides by the class balance.
    """
    from .heads.persist import load_head
    from .workflows.fit import run_fit

    cfg = FitConfig(features=_store_path(store), layer=layer, clf=clf, seed=seed,
                    protocol=protocol, split_seed=split_seed, groups=groups, metric=metric,
                    class_weight=class_weight)
    runs = []
    for record, path in run_fit(cfg, runs_dir):
        runs.append(Run(record, path, load_head(record.model_file)["model"]))
    return runs if layer == "all" else runs[0]


def audit(store, layer: str | None = AuditConfig.layer, clf: str | None = AuditConfig.clf, *,
          out: str | None = AuditConfig.out, top: int | None = AuditConfig.top,
          overwrite: bool = AuditConfig.overwrite, ensemble: bool = AuditConfig.ensemble,
          runs_dir=DEFAULT_RUNS_DIR, seed: int = AuditConfig.seed):
    """Which given labels of ``store`` (a store or its path) look wrong: a
    :class:`pipeline.workflows.audit.AuditResult` whose ``rows`` are the suspects, most
    suspect first (path, given and suggested label, score, flagged), also written to
    ``out`` as CSV (None: not written).  The head: ``clf`` on ``layer``, by default the
    best frozen run's of this store in ``runs_dir``; cross-validated on the store's folds,
    so every image is judged by a head that never saw it (cleanlab's confident learning).
    ``top``: that many rows instead of the flagged images; ``ensemble``: average with three
    more heads (:func:`pipeline.workflows.audit.ensemble`), as ``audit`` does by default."""
    from .workflows.audit import run_audit

    cfg = AuditConfig(features=_store_path(store), layer=layer, clf=clf, out=out, top=top,
                      overwrite=overwrite, ensemble=ensemble, seed=seed)
    return run_audit(cfg, runs_dir)


def baseline(store, kind: str = BaselineConfig.kind, *, runs_dir=DEFAULT_RUNS_DIR,
             seed: int = BaselineConfig.seed, epochs: int | None = BaselineConfig.epochs,
             protocol: str = BaselineConfig.protocol,
             split_seed: int | None = BaselineConfig.split_seed,
             groups: str | None = BaselineConfig.groups, metric: str = BaselineConfig.metric,
             class_weight: str = BaselineConfig.class_weight, **options) -> Run:
    """Baseline ``kind`` (pixels, mlp, cnn) on ``store``; a :class:`Run`.

    ``epochs`` and ``options`` override :data:`pipeline.train.baselines.DEFAULTS`
    (``size``, ``hidden``, ...); ``metric`` and ``class_weight`` as for :func:`fit`;
    ``runs_dir=None`` writes nothing.
    """
    from .runs.records import save_run
    from .train.baselines import model_writer
    from .workflows.baseline import baseline_run

    record, fit, store = baseline_run(BaselineConfig(
        features=_store_path(store), kind=kind, seed=seed, epochs=epochs, protocol=protocol,
        split_seed=split_seed, groups=groups, metric=metric, class_weight=class_weight,
        options=options))
    path = save_run(record, runs_dir, *model_writer(kind, fit, store)) if runs_dir else None
    return Run(record, path, fit.model)


def finetune(store, *, runs_dir=DEFAULT_RUNS_DIR, cache_dir=None,
             protocol: str = FinetuneConfig.protocol, preset: str = "none", **options) -> Run:
    """Fine-tune the store's backbone; a :class:`Run` with the trained network.

    ``options`` are the fields of :class:`pipeline.configs.FinetuneConfig`
    (``unfreeze``, ``lr``, ``lr_factor``, ``epochs``, ``schedule``, ``gradual``,
    ``lp_epochs``, ``probe``, ``classify_at``, ``wise``, ``ema``, ``mixup``, ``tta``,
    ``metric``, ...), on top of ``preset`` (:data:`pipeline.configs.PRESETS`:
    ``recommended`` is the ladder's strongest rung);
    ``runs_dir=None`` writes nothing.  ``cache_dir`` keeps the frozen trunk's outputs:
    a folder, or a :class:`pipeline.train.trunk_cache.TrunkCache` to pass to several
    calls so that they compute them once.
    """
    from .configs import preset_config
    from .workflows.finetune import finetune_run, save_finetune

    record, result = finetune_run(preset_config(preset, features=_store_path(store),
                                                protocol=protocol, **options), cache_dir)
    path = save_finetune(record, result, runs_dir) if runs_dir else None
    return Run(record, path, result.model)


def predict(model, images, *, runs_dir=DEFAULT_RUNS_DIR, top_k: int = 3,
            rank: str | None = None, rank_top: int = 20, rank_out=None,
            diversity: str = DEFAULT_DIVERSITY, **options):
    """Label image files or folders with any run's model: a :class:`Run`, a run id, a
    saved model (``.skops``, ``.pt``) or an exported ``.onnx`` (ONNX Runtime, no torch).

    Returns a list of :class:`pipeline.workflows.predict.Prediction`.  ``rank``
    (``margin``, ``entropy``, ``least-confident``) also ranks what to label next: the
    ``rank_top`` first get ``rank`` 1, 2, ... (``diversity``: ``kmeans``, ``kcenter`` or ``none``;
    ``rank_out`` writes the list as CSV), as ``predict --rank``
    (:func:`rank_for_labelling` on arrays).
    """
    from .workflows.predict import run_predict

    ref = model.record.model_file if isinstance(model, Run) else str(model)
    return run_predict(ref, [str(i) for i in ([images] if isinstance(images, (str, Path))
                                              else images)],
                       runs_dir, top_k=top_k, rank=rank, rank_top=rank_top, rank_out=rank_out,
                       diversity=diversity, **options)


def rank_for_labelling(proba, k: int, score: str = "margin", vectors=None, labelled=None,
                       diversity: str = DEFAULT_DIVERSITY):
    """The ``k`` rows of probabilities ``proba`` ``(n, n_classes)`` to label next: a
    :class:`pipeline.heads.ranking.Ranking` (``.order``: row indices, first to label
    first; ``.scores``: ``(n,)`` uncertainty).  ``vectors`` ``(n, d)`` (e.g.
    ``store.X("layer4")`` rows) spread the batch by greedy k-center among the most
    uncertain, away from ``labelled`` ``(m, d)``; ``diversity="none"`` takes the most
    uncertain."""
    from .heads.ranking import rank_for_labelling as _rank

    return _rank(proba, k, score, vectors, labelled, diversity)


def export(model, out="model.onnx", *, runs_dir=DEFAULT_RUNS_DIR, overwrite: bool = False):
    """Write ``model`` (a :class:`Run` or run id) as one ONNX classifier at ``out``: uint8
    RGB ``(N, S, S, 3)`` -> probabilities; class names and the resize/crop rule in its
    metadata.  Returns :class:`pipeline.workflows.export.ExportResult` (``.path``,
    ``.metadata``)."""
    from .workflows.export import run_export

    ref = model.record.model_file if isinstance(model, Run) else str(model)
    return run_export(ref, out, runs_dir, overwrite=overwrite)


def report(runs_dir=DEFAULT_RUNS_DIR, out="reports/report.html", *, overwrite: bool = False,
           metric: str = "auto"):
    """Write the HTML report of every run in ``runs_dir`` to ``out``; returns its path.
    ``metric`` ranks and tests the runs (``auto``: the one they were selected by)."""
    from .workflows.report import build_report

    return build_report(runs_dir, out, overwrite=overwrite, metric=metric)


def track(runs_dir=DEFAULT_RUNS_DIR, *, tracking_uri: str | None = None,
          experiment: str = DEFAULT_EXPERIMENT, report: str | None = "auto"):
    """Log every run record of ``runs_dir`` to MLflow (``pip install
    'transfer-workbench[mlflow]'``), one MLflow run each, a record already logged to the
    experiment not twice; returns :class:`pipeline.workflows.track.TrackResult`
    (``.logged`` ``{run id: MLflow run id}``, ``.already``, ``.tracking_uri``).

    ``tracking_uri``: any MLflow tracking URI (default: ``MLFLOW_TRACKING_URI``, else
    ``sqlite:///mlflow.db`` in the current folder); ``report``: an HTML file logged with
    each new run, ``"auto"`` (``report.html`` beside the runs folder, when there) or
    ``"none"``.  Names and values: docs/tracking.md."""
    from .workflows.track import run_track

    return run_track(runs_dir, tracking_uri, experiment, report)
