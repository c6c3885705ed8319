"""Independent fits in parallel processes: how many, and running them in order.

Cross-validation repeats one fit per outer fold (15 by default), and each of
scikit-learn's fits here runs on one BLAS thread, so one fold at a time keeps
the other cores idle.  :func:`fold_jobs` says how many worker processes a
batch of such fits gets (one per core, never more than there are fits, and
only when the batch is worth a process start); :func:`run_in_order` runs them
and returns the results in the order given, so a parallel run records exactly
what a serial one does.  (Torch networks' folds stay in one process: torch's
own threads use the cores, and a worker that imports torch again cost the
demo more than it saved.)

``WORKBENCH_JOBS`` (an environment variable) caps the processes: ``1`` runs
everything in this process (the test suite sets it when pytest-xdist already
gives every core a worker).
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

#: Environment variable capping the worker processes of :func:`fold_jobs`.
JOBS_ENV = "WORKBENCH_JOBS"


def cores() -> int:
    """The cores this process may use (its CPU affinity where the OS says)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def jobs_cap() -> int | None:
    """``WORKBENCH_JOBS`` as a whole number >= 1, or None when unset or not a number."""
    raw = os.environ.get(JOBS_ENV, "").strip()
    if not raw:
        return None
    if raw.isdigit() and int(raw) >= 1:
        return int(raw)
    log.warning("%s=%r is not a whole number >= 1; ignored", JOBS_ENV, raw)
    return None


def fold_jobs(n_tasks: int, worth_it: bool = True) -> int:
    """Worker processes for ``n_tasks`` independent fits: 1 unless ``worth_it`` (the
    batch pays for starting processes), else the cores, at most ``n_tasks`` and at
    most ``WORKBENCH_JOBS``."""
    if not worth_it or n_tasks <= 1:
        return 1
    cap = jobs_cap()
    return max(1, min(n_tasks, cores(), cap if cap is not None else n_tasks))


def run_in_order(fn, tasks: list, jobs: int) -> list:
    """``[fn(*task) for task in tasks]``, in ``jobs`` processes when ``jobs > 1``
    (joblib's loky workers, kept alive between calls); results in ``tasks`` order."""
    if jobs <= 1:
        return [fn(*task) for task in tasks]
    from joblib import Parallel, delayed

    return Parallel(n_jobs=jobs)(delayed(fn)(*task) for task in tasks)
