"""``svm``: an RBF SVM, calibrated (sigmoid, internal K-fold) so it has probabilities."""

from __future__ import annotations

import numpy as np

from ...errors import UsageError, program
from ..registry import HeadKind, final_estimator, register_head


class Svm(HeadKind):
    name = "svm"
    param = "C"
    grid = tuple(10.0 ** e for e in np.arange(-1, 3.01, 0.5))
    estimators = ("SVC", "CalibratedClassifierCV")
    trusted = ("sklearn.calibration._CalibratedClassifier",
               "sklearn.calibration._SigmoidCalibration")

    def estimator(self, value, seed, calibrated, weight):
        """``calibrated``: ``True`` for 5 folds, or the size of the smallest class, which
        caps the folds at that size (a class of 2-4 images still calibrates; one of a
        single image leaves the SVM uncalibrated, its margins softmaxed by
        :func:`pipeline.heads.selection.predict_proba`)."""
        from sklearn.calibration import CalibratedClassifierCV
        from sklearn.svm import SVC

        folds = 5 if calibrated is True else min(5, int(calibrated))
        if calibrated and folds >= 2:
            # weighted through fit's sample weights, which reach both the SVM and the
            # sigmoid calibration (an unweighted calibration would learn the majority's prior
            # back and undo the weighting at the argmax)
            return CalibratedClassifierCV(SVC(C=value, kernel="rbf", gamma="scale",
                                              random_state=seed), cv=folds, ensemble=False)
        return SVC(C=value, kernel="rbf", gamma="scale", random_state=seed, class_weight=weight)

    def fit(self, model, X, y, class_weight="none"):
        """A calibrated SVM with balanced class weights is fitted with each row's balanced
        weight as its sample weight: the only way scikit-learn weights the calibration
        as well as the SVM."""
        from sklearn.calibration import CalibratedClassifierCV

        from ...balance import sample_weights

        step, est = model.steps[-1]
        if class_weight == "balanced" and isinstance(est, CalibratedClassifierCV):
            y = np.asarray(y)
            return model.fit(X, y, **{f"{step}__sample_weight":
                                      sample_weights(y, int(y.max()) + 1)})
        return model.fit(X, y)

    def check_export(self, model, run_id):
        if type(final_estimator(model)).__name__ == "SVC":
            raise UsageError(
                f"run {run_id}'s SVM head was left uncalibrated (a class had one image), so "
                "its probabilities are a softmax of one-vs-rest margins that ONNX's SVM "
                "operator does not compute; fit a logreg or linear-svm head on the same store "
                f"({program()} fit --clf logreg --layer TAP) and export that, or label "
                f"images with {program()} predict --model RUN", param="model_ref")


register_head(Svm)
