"""Which given labels are likely wrong: confident learning on out-of-fold probabilities.

:func:`label_issues` hands the labels and out-of-fold predicted probabilities
(every image scored by a head that never saw it: a cross-validated run's
``predictions``, or :func:`pipeline.workflows.audit.run_audit`'s folds) to
cleanlab (Northcutt, Jiang and Chuang 2021, "Confident learning: estimating
uncertainty in dataset labels"):

- ``cleanlab.filter.find_label_issues`` (``prune_by_noise_rate``) flags the images
  whose given label confident learning counts among the estimated errors;
- ``cleanlab.rank.get_label_quality_scores`` (self-confidence: the probability the
  head gives the *given* label) orders every image, most suspect first;
- ``cleanlab.count.estimate_joint`` estimates the joint distribution of given and
  true labels, whose rows give each class's estimated noise rate (the share of
  images given that label whose true class is another).

Pure function of arrays: no model, no file.  The suggested label is the head's
most probable class.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np

log = logging.getLogger(__name__)

#: What ranks the images (cleanlab's name), said in the CSV, the report and the docs.
RANKED_BY = "self_confidence"


def label_issues(y, proba) -> dict:
    """cleanlab's verdict on labels ``y`` ``(n,)`` given out-of-fold ``proba`` ``(n, k)``.

    Returns ``{"order": (n,) every image, most suspect first; "score": (n,) label
    quality in [0, 1] (low: suspect); "flagged": (n,) bool, the images confident
    learning counts as label errors; "suggested": (n,) the most probable class;
    "noise_rate": (k,) estimated share of each given class that is mislabelled;
    "joint": (k, k) estimated joint of given (rows) and true labels}``.  Raises
    ``ValueError`` (cleanlab's reason) when the data cannot be audited, e.g. a class
    with fewer than two images.
    """
    from cleanlab.count import estimate_joint
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    y = np.asarray(y, dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    proba = proba / np.clip(proba.sum(axis=1, keepdims=True), 1e-12, None)
    counts = np.bincount(y, minlength=proba.shape[1])
    if len(y) == 0 or counts.min() < 2:
        raise ValueError("every class needs at least two images to be audited; "
                         f"the smallest has {int(counts.min()) if len(y) else 0}")
    with warnings.catch_warnings():   # cleanlab warns on tiny classes; the caller says why
        warnings.simplefilter("ignore")
        score = get_label_quality_scores(y, proba, method=RANKED_BY)
        flagged = find_label_issues(y, proba, filter_by="prune_by_noise_rate", n_jobs=1)
        joint = estimate_joint(y, proba)
    order = np.lexsort((np.arange(len(y)), score))   # ties: store order
    rows = joint.sum(axis=1)
    noise = np.where(rows > 0, 1.0 - np.diag(joint) / np.where(rows > 0, rows, 1.0), 0.0)
    return {"order": order, "score": np.asarray(score, dtype=np.float64),
            "flagged": np.asarray(flagged, dtype=bool), "suggested": proba.argmax(axis=1),
            "noise_rate": noise, "joint": joint}
