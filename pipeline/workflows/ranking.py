"""``predict --rank``: which of the predicted images to label next, and the list written.

:class:`RankRequest` holds the options (``--rank``, ``--rank-top``,
``--rank-out``, ``--diversity``), checked before any forward pass; after
``predict`` has the probabilities, :meth:`RankRequest.apply` asks
:func:`pipeline.heads.ranking.rank_for_labelling` for the order, sets each
:class:`~pipeline.workflows.predict.Prediction`'s ``uncertainty`` and ``rank``
and writes the list as CSV.  The diversity step's vectors are what the model
kind gives (:meth:`pipeline.models.base.TrainedModel.proba_and_vectors`): a
frozen head's input features at its tap (``kcenter`` keeps away from its run's
store: every image already labelled); other kinds, their probabilities, with no
labelled vectors.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UsageError, opt
from ..files import atomic_write, refuse_existing
from ..heads.ranking import rank_for_labelling
from ..options import DEFAULT_DIVERSITY, DIVERSITY_STEPS, UNCERTAINTY_SCORES

__all__ = ["RANK_COLUMNS", "RankRequest"]

log = logging.getLogger(__name__)

#: The columns of the ``--rank-out`` CSV, one row per image to label, first to label first.
RANK_COLUMNS = ("rank", "path", "label", "probability", "uncertainty")


@dataclass(frozen=True)
class RankRequest:
    """What ``predict --rank`` was asked: the uncertainty ``score``, how many images to list
    (``top``), the CSV to write (``out``, or None) and the ``diversity`` step."""

    score: str
    top: int = 20
    out: str | None = None
    diversity: str = DEFAULT_DIVERSITY

    @classmethod
    def checked(cls, rank, rank_top, rank_out, diversity, overwrite=False):
        """The request, or None without ``rank``; bad options raise a one-line error."""
        if rank is None:
            if rank_out:
                raise UsageError(f"{opt('rank_out', rank_out)} lists the images to label "
                                 f"next: pass {opt('rank', 'margin')} too", param="rank_out")
            return None
        if rank not in UNCERTAINTY_SCORES:
            raise UsageError(f"{opt('rank', rank)} is not one of "
                             f"{', '.join(UNCERTAINTY_SCORES)}", param="rank")
        if diversity not in DIVERSITY_STEPS:
            raise UsageError(f"{opt('diversity', diversity)} is not one of "
                             f"{', '.join(DIVERSITY_STEPS)}", param="diversity")
        if isinstance(rank_top, bool) or not isinstance(rank_top, (int, np.integer)) \
                or rank_top < 1:
            raise UsageError(f"{opt('rank_top', rank_top)} must be a whole number >= 1 "
                             "(how many images to list)", param="rank_top")
        refuse_existing(rank_out, overwrite, "rank_out")
        return cls(rank, int(rank_top), str(rank_out) if rank_out else None, diversity)

    def apply(self, preds, proba, vectors, space: str, labelled=None):
        """Rank the predictions that have probabilities (``proba`` ``(n_ok, n_classes)``,
        ``vectors`` ``(n_ok, d)`` in ``space``, rows in the order of ``preds`` without an
        error); ``labelled()`` gives the ``(m, d)`` vectors of labelled images or None
        (asked only by ``kcenter``, the step that uses them: a frozen head reads its
        whole store).  Sets ``uncertainty`` and ``rank`` (1 = label first, 0 = not
        listed) of each; writes :attr:`out`.  Returns the
        :class:`~pipeline.heads.ranking.Ranking`."""
        ok = [p for p in preds if not p.error]
        labelled = labelled() if labelled is not None and self.diversity == "kcenter" else None
        if labelled is not None and np.shape(labelled)[1:] != np.shape(vectors)[1:]:
            labelled = None
        ranking = rank_for_labelling(proba, self.top, self.score, vectors, labelled,
                                     self.diversity)
        for p, value in zip(ok, ranking.scores):
            p.uncertainty = float(value)
        for r, i in enumerate(ranking.order, 1):
            ok[i].rank = r
        log.info("ranked %d of %d images by %s, diversity %s on %s%s", len(ranking.order),
                 len(ok), self.score, ranking.diversity, space,
                 f", away from {len(labelled)} labelled" if labelled is not None
                 and ranking.diversity != "none" else "")
        if self.out:
            self.write([ok[i] for i in ranking.order])
        return ranking

    def write(self, ranked):
        Path(self.out).parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.out, "w", encoding="utf-8", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(RANK_COLUMNS)
            for p in ranked:
                w.writerow([p.rank, p.path, p.label, f"{p.probability:.6f}",
                            f"{p.uncertainty:.6f}"])
