"""The head registry: each kind of scikit-learn head is one :class:`HeadKind`, registered once.

A head kind holds everything the other layers ask about a head: its name (``fit --clf``),
the final estimator it builds (a head is ``Pipeline(StandardScaler(), estimator)``), the
one hyperparameter searched and its grid, whether it weights classes, how ``export``
writes it and which types its saved file holds beyond skops' defaults.  Model
selection (:mod:`.selection`), nested cross-validation (:mod:`.crossval`), saving
(:mod:`.persist`), class balance (:mod:`pipeline.balance`), ``fit`` and ``export``
ask it; no other module compares head names.

The built-in kinds are the modules of :mod:`pipeline.heads.kinds`, registered when
:mod:`pipeline.heads` is first imported.  A new head is one more module there, listed
in its ``__init__``, or a :func:`register_head` call anywhere (tests/test_extending.py
registers a head of its own in the test file itself).  This module imports only
the standard library, and a kind imports scikit-learn only when it builds an estimator:
the CLI builds ``--clf`` from :func:`list_heads` without loading scikit-learn.
"""

from __future__ import annotations

from typing import ClassVar

from ..errors import UsageError, opt
from ..registry import Registry


class HeadKind:
    """One kind of head: subclass it, set the class attributes, implement :meth:`estimator`.

    - ``name``: what ``fit --clf`` and run records call it;
    - ``param``, ``grid``: the hyperparameter searched (a keyword of the estimator) and
      its values (the built-in grids are numpy float64s: numpy promotes float32
      features by them, so a grid of Python floats would fit a little differently);
      ``larger_is_stronger``: larger values regularise more (``alpha``,
      ``k``), so the search goes from large to small and ties go to the larger;
      ``counts_rows``: the value is a number of training rows (``k``), capped by the
      rows a fit sees and recorded as an int;
    - ``unweighted``: empty when the estimator takes ``class_weight``, else why it
      cannot (``class_weight="balanced"`` is then refused, ``auto`` resolves to none);
    - ``estimators``: class names of the final estimators it builds (how a saved head
      is recognised: a head file holds the fitted model, not the kind's name);
    - ``export``: ``"linear"`` when its probabilities are the softmax of an affine
      decision function (written as one ``nn.Linear``, :func:`pipeline.train.deploy.linear_head`),
      else ``"skl2onnx"`` (converted by skl2onnx and joined to the trunk);
    - ``trusted``: types its saved head holds beyond skops' defaults
      (:mod:`pipeline.heads.persist` trusts exactly these);
    - ``streaming``: ``fit`` (holdout) streams the store's blocks instead of loading a tap.
    """

    name: ClassVar[str]
    param: ClassVar[str]
    grid: ClassVar[tuple]
    larger_is_stronger: ClassVar[bool] = False
    counts_rows: ClassVar[bool] = False
    unweighted: ClassVar[str] = ""
    estimators: ClassVar[tuple[str, ...]] = ()
    export: ClassVar[str] = "skl2onnx"
    trusted: ClassVar[tuple[str, ...]] = ()
    streaming: ClassVar[bool] = False

    def __repr__(self):
        return f"<head {self.name}>"

    def estimator(self, value, seed: int, calibrated: bool | int, weight: str | None):
        """The unfitted final estimator with ``param = value``; ``weight`` is None or
        ``"balanced"`` (only asked of kinds that weight classes); ``calibrated`` as in
        :meth:`make`."""
        raise NotImplementedError

    # ---------------------------------------------------------------- building and fitting

    def make(self, value, seed: int = 0, calibrated: bool | int = False,
             class_weight: str = "none"):
        """An unfitted ``Pipeline(StandardScaler(), estimator)``; ``class_weight``: none or
        balanced (refused, naming the fix, when the kind takes no class weights)."""
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        if class_weight not in ("none", "balanced"):
            raise UsageError(f"{opt('class_weight', repr(class_weight))} is not valid here; "
                             "valid: none, balanced (resolve auto first: "
                             "pipeline.balance.resolve_class_weight)", param="class_weight")
        if class_weight == "balanced" and self.unweighted:
            raise UsageError(self.class_weight_refusal(), param="class_weight")
        weight = "balanced" if class_weight == "balanced" else None
        return make_pipeline(StandardScaler(), self.estimator(value, seed, calibrated, weight))

    def fit(self, model, X, y, class_weight: str = "none"):
        """Fit a :meth:`make` pipeline on ``X`` ``(n, C)``, ``y`` ``(n,)``; returns it.  The
        estimator carries its class weights itself unless a kind says otherwise."""
        return model.fit(X, y)

    def search(self, X_train, y_train, X_val, values, seed: int = 0,
               class_weight: str = "none") -> list:
        """Predictions ``(n_val,)`` on ``X_val`` of the head fitted on ``X_train`` with each
        of ``values``, in order (a kind may share work along the grid)."""
        return [self.fit(self.make(v, seed, class_weight=class_weight), X_train, y_train,
                         class_weight).predict(X_val) for v in values]

    # ---------------------------------------------------------------- the grid

    def values(self, n_rows: int, grid=None) -> list:
        """The grid (or ``grid``), strongest regularisation first, keeping only values a
        fit on ``n_rows`` rows can take (``k <= n_rows``, at least ``[1]``)."""
        values = list(self.grid if grid is None else grid)
        if self.counts_rows:
            values = [v for v in values if v <= max(1, n_rows)] or [1]
        return sorted(values, reverse=self.larger_is_stronger)

    def plain(self, value):
        """``value`` as a record keeps it: an int for a count of rows, else a float."""
        return int(value) if self.counts_rows else float(value)

    # ---------------------------------------------------------------- questions

    @property
    def class_weights(self) -> bool:
        """Whether the head weights classes (``class_weight="balanced"``)."""
        return not self.unweighted

    def class_weight_refusal(self) -> str:
        """Why ``class_weight="balanced"`` is refused for this head, and what to do."""
        weighted = [name for name in list_heads() if get_head(name).class_weights]
        others = f"{opt('clf', weighted[0])}, {', '.join(weighted[1:])}" if weighted else "none"
        return (f"{opt('class_weight', 'balanced')} is not possible with "
                f"{opt('clf', self.name)}: {self.unweighted}; use "
                f"{opt('class_weight', 'none')}, or a head that weights classes ({others})")

    def check_export(self, model, run_id: str) -> None:
        """Raise :class:`UsageError` (with the alternatives) when this fitted ``model``
        cannot be written as ONNX; a kind whose every head exports says nothing."""


_HEADS = Registry("classifier", param="clf")


def register_head(kind: HeadKind | type, replace: bool = False) -> HeadKind:
    """Register a head kind (an instance or a :class:`HeadKind` subclass); returns it."""
    kind = kind() if isinstance(kind, type) else kind
    if not isinstance(kind, HeadKind):
        raise TypeError(f"{kind!r} is not a HeadKind")
    if kind.export not in ("linear", "skl2onnx"):
        raise ValueError(f"head {kind.name!r}: export must be 'linear' or 'skl2onnx', "
                         f"not {kind.export!r}")
    return _HEADS.add(kind.name, kind, replace)


def unregister_head(name: str) -> None:
    """Forget head ``name`` (a test's own head, once the test is done)."""
    _HEADS.remove(name)


def list_heads() -> list[str]:
    """Names of the registered heads, in the order they were registered."""
    return _HEADS.names()


def get_head(name) -> HeadKind:
    """The head kind called ``name`` (or ``name`` itself when it is one);
    :class:`UsageError` listing the valid names."""
    return name if isinstance(name, HeadKind) else _HEADS.get(name)


def final_estimator(model):
    """The last step of a fitted head pipeline (or ``model`` itself)."""
    return model.steps[-1][1] if hasattr(model, "steps") else model


def head_name(model) -> str:
    """Class name of a head's final estimator (``LogisticRegression``, ``SVC`` ...)."""
    return type(final_estimator(model)).__name__


def head_of_model(model) -> HeadKind | None:
    """The registered kind that builds ``model``'s final estimator, or None."""
    name = head_name(model)
    return next((k for k in _HEADS.items() if name in k.estimators), None)


def trusted_types() -> tuple[str, ...]:
    """Every type a saved head of a registered kind may hold beyond skops' defaults."""
    return tuple(sorted({t for k in _HEADS.items() for t in k.trusted}))


def linear_heads() -> list[str]:
    """Names of the heads ``export`` writes as one linear layer."""
    return [k.name for k in _HEADS.items() if k.export == "linear"]
