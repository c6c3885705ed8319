"""``audit``: which given labels are likely wrong, from a store's cached features.

A frozen head (by default the one of the store's best frozen run in the runs
folder, chosen by its validation or cross-validated score, never a test figure)
is cross-validated on the first repeat of the store's fixed folds, its
hyperparameter chosen inside each fold's training rows, so every image gets
probabilities from a head that never saw it; cleanlab ranks the images by how
little that head believes their given label (:func:`pipeline.runs.audit.label_issues`).
The CSV lists the suspects, most suspect first, for a person to check: fix a label
(move the file to its class folder, or edit the label table), run ``extract`` again
(a changed label rewrites the store's index only: no forward pass) and fit again.
"""

from __future__ import annotations

import csv
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..configs import AuditConfig
from ..errors import DataError, StoreError, opt, program
from ..files import atomic_write, refuse_existing
from ..runs.records import DEFAULT_RUNS_DIR, load_records
from ..store.hdf5 import open_store

log = logging.getLogger(__name__)

#: The CSV's columns.
COLUMNS = ("rank", "path", "given_label", "suggested_label", "score", "suggested_probability",
           "flagged")


@dataclass
class AuditResult:
    """An audit: the head audited and why, the suspects (``rows``: dicts of
    :data:`COLUMNS`, most suspect first), counts, each class's estimated noise rate, and
    where the CSV went."""

    head: str
    why: str
    rows: list
    n_images: int
    n_flagged: int
    noise_rate: dict
    oof_accuracy: float
    out: Path | None
    seconds: float


def run_audit(cfg: AuditConfig = AuditConfig(),
              runs_dir=DEFAULT_RUNS_DIR) -> AuditResult:
    """Audit the labels of the store ``cfg.features`` (None or a folder: the newest store)
    and write the suspects to ``cfg.out`` (None: write nothing).

    The head: ``cfg.clf`` on ``cfg.layer``, each defaulting to the best frozen run's of
    this store in ``runs_dir`` (:func:`audited_head`); with ``cfg.ensemble``, the mean of
    its out-of-fold probabilities and three more heads' (:func:`ensemble`).  The
    out-of-fold probabilities come from the first repeat of the store's folds (a given
    test split is in no fold and is not audited); ``metric``, ``class_weight`` and
    ``groups`` choose and weight as in ``fit``.  The CSV holds the ``cfg.top`` most
    suspect images, or without it the ones confident learning flags.
    """
    from ..heads.crossval import cross_validate
    from ..heads.selection import Choice
    from ..runs.audit import label_issues
    from .fit import find_store, resolve_selection

    t0 = time.perf_counter()
    out = Path(cfg.out) if cfg.out else None
    refuse_existing(out, cfg.overwrite)
    store = open_store(find_store(cfg.features), cfg.split_seed, cfg.groups)
    clf, tap, why = audited_head(cfg, store, runs_dir)
    heads = ensemble(clf, tap, store.taps) if cfg.ensemble else [(clf, tap)]
    splits = [s for s in store.cv_splits() if s[0] == 0]
    rows = np.concatenate([test for _r, _k, _train, test in splits])  # the folds' order
    y = store.labels
    proba = 0.0
    for member_clf, member_tap in heads:
        selection = resolve_selection(store, cfg.metric, cfg.class_weight, member_clf)
        folds = cross_validate(member_clf, store.X(member_tap), y, splits, seed=cfg.seed,
                               calibrate=False, choice=Choice(selection.metric,
                                                              selection.class_weight,
                                                              store.row_groups))
        proba = proba + np.concatenate([f.proba for f in folds]) / len(heads)
    try:
        found = label_issues(y[rows], proba)
    except ValueError as exc:
        raise DataError(f"the labels of {store.path} cannot be audited: {exc}") from None
    table = suspects(store, rows, y[rows], proba, found, cfg.top)
    if out is not None:
        write_suspects(table, out)
    backbone = store.attrs.get("backbone")
    return AuditResult(
        head=" and ".join(f"{backbone} {t} + {c}" for c, t in heads), why=why, rows=table,
        n_images=len(rows), n_flagged=int(found["flagged"].sum()),
        noise_rate={c: float(r) for c, r in zip(store.classes, found["noise_rate"])},
        oof_accuracy=float(np.mean(proba.argmax(1) == y[rows])), out=out,
        seconds=time.perf_counter() - t0)


def audited_head(cfg: AuditConfig, store, runs_dir) -> tuple[str, str, str]:
    """``(clf, tap, why)``: ``cfg.clf`` and ``cfg.layer`` where given; the others from the
    frozen run of this store (same fingerprint) in ``runs_dir`` with the best selecting
    score (validation or cross-validated, :func:`pipeline.runs.groups.score`: never test);
    without one, logreg on the deepest stored tap."""
    from ..runs.groups import score

    best, best_select = None, -1.0
    if cfg.clf is None or cfg.layer is None:
        for record in load_records(runs_dir) if Path(runs_dir).is_dir() else []:
            if record.kind != "frozen" or record.layer not in store.taps or \
                    record.features.get("fingerprint") != store.fingerprint:
                continue
            select = score(record).get("select")
            if select is not None and select > best_select:
                best, best_select = record, select
    clf = cfg.clf or (best.method if best is not None else "logreg")
    tap = cfg.layer or (best.layer if best is not None else store.taps[-1])
    if tap not in store.taps:
        raise StoreError(f"{opt('layer', tap)}: the store {store.path} holds "
                         f"{', '.join(store.taps)}", param="layer")
    if best is not None:
        why = f"the best frozen run of this store in {runs_dir} ({best.run_id})"
    else:
        why = (f"no frozen run of this store in {runs_dir}: logreg on its deepest tap (run "
               f"`{program()} fit --layer all` first to audit with the best head)")
    if cfg.clf is not None and cfg.layer is not None:
        why = "as asked"
    return clf, tap, why


def ensemble(clf: str, tap: str, taps: list) -> list[tuple[str, str]]:
    """``[(clf, tap)]`` whose out-of-fold probabilities the audit averages: the audited head
    and a kNN (a logreg when it is the kNN) on its tap and on the deepest other stored tap
    (the one after it, else the one before).  Heads that err differently disagree on
    different images, so the images whose given label all of them doubt stand out: on the
    full flowers with 2% planted errors this found about 5 points more of them in the
    top 2% than the one head (docs/trust.md)."""
    other_clf = "logreg" if clf == "knn" else "knn"
    i = taps.index(tap)
    other_tap = taps[i + 1] if i + 1 < len(taps) else taps[i - 1] if i > 0 else None
    pairs = [(clf, tap), (other_clf, tap)]
    if other_tap is not None:
        pairs += [(clf, other_tap), (other_clf, other_tap)]
    return pairs


def suspects(store, rows, y, proba, found: dict, top: int | None) -> list[dict]:
    """The CSV's rows: the ``top`` most suspect images, or (None) the flagged ones, most
    suspect first."""
    order = found["order"]
    chosen = order[:top] if top is not None else [i for i in order if found["flagged"][i]]
    classes = store.classes
    root = Path(store.data_root)
    return [{"rank": k + 1, "path": str(root / store.paths[rows[i]]),
             "given_label": classes[y[i]], "suggested_label": classes[found["suggested"][i]],
             "score": round(float(found["score"][i]), 6),
             "suggested_probability": round(float(proba[i, found["suggested"][i]]), 6),
             "flagged": bool(found["flagged"][i])}
            for k, i in enumerate(chosen)]


def write_suspects(table: list[dict], out: Path) -> None:
    """``table`` as CSV at ``out`` (whole or not at all)."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(out, "w", encoding="utf-8", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(table)
    except OSError as exc:
        raise StoreError(f"cannot write {out}: {exc.strerror or exc}; pass {opt('out')} a file "
                         "in a folder you can write", param="out") from None
