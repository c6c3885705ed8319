"""Heads on cached features: scikit-learn heads and their model selection
(:mod:`.selection`), the SGD head (:mod:`.sgd`) and its streaming fit (:mod:`.streaming`).
No module here imports torch."""


def __getattr__(name):
    # Heads saved before the package layout pickled pipeline.heads.SoftmaxSGD.
    if name == "SoftmaxSGD":
        from .sgd import SoftmaxSGD

        return SoftmaxSGD
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
