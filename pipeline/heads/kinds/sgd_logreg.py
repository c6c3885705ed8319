"""``sgd-logreg``: multinomial logistic regression by averaged SGD, streamed from the store.

``fit`` (holdout) trains it block by block (:mod:`pipeline.heads.streaming`), which
sets ``eta0`` from the store and maps logreg's C grid onto ``alpha``.
"""

from __future__ import annotations

import numpy as np

from ..registry import HeadKind, register_head


class SgdLogReg(HeadKind):
    name = "sgd-logreg"
    # alpha = 1 / (C * n_train); large to small, so ties go to the stronger regularisation
    param = "alpha"
    grid = tuple(10.0 ** e for e in np.arange(0, -5.01, -0.5))
    larger_is_stronger = True
    estimators = ("SoftmaxSGD",)
    export = "linear"
    trusted = ("pipeline.heads.sgd.SoftmaxSGD",)
    streaming = True

    def estimator(self, value, seed, calibrated, weight):
        from ..sgd import SoftmaxSGD

        return SoftmaxSGD(alpha=value, random_state=seed, class_weight=weight)


register_head(SgdLogReg)
