"""Transfer-learning workbench: frozen pretrained features, scikit-learn heads,
baselines, fine-tuning and an HTML comparison report (see README.md and docs/).

The public API (:mod:`pipeline.api`), imported on first use so that
``import pipeline`` loads neither torch nor scikit-learn::

    import pipeline as wb
    store = wb.extract(layers=["layer3", "layer4"])      # a FeatureStore
    X, y = store.xy("layer4", "train")
    head = wb.fit(store, layer="layer4", clf="logreg")   # a Run: record, model, files
    page = wb.report()

The package's layout follows the data (docs/module-map.md):
``data -> backbones -> store -> extraction -> heads | train -> runs -> reporting``,
and ``workflows`` join the stages; imports point one way, down that list.
"""

__version__ = "0.1.0"

__all__ = ["Run", "audit", "baseline", "export", "extract", "finetune", "fit", "open_store",
           "predict", "rank_for_labelling", "report", "track"]


def __getattr__(name):
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
