"""``linear-svm``: a linear SVM (one-vs-rest margins, softmaxed into probabilities)."""

from __future__ import annotations

import numpy as np

from ..registry import HeadKind, register_head


class LinearSvm(HeadKind):
    name = "linear-svm"
    param = "C"
    grid = tuple(10.0 ** e for e in np.arange(-5, 1.01, 0.5))
    estimators = ("LinearSVC",)
    export = "linear"

    def estimator(self, value, seed, calibrated, weight):
        from sklearn.svm import LinearSVC

        return LinearSVC(C=value, max_iter=20000, random_state=seed, class_weight=weight)


register_head(LinearSvm)
