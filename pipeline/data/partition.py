"""Splits and folds from a manifest, a seed and a group rule: never from the vectors.

A :class:`SplitSpec` (seed, group rule, fractions) and the images' paths,
labels, the split their layout gives (split folders, a table's split column)
and their groups (a table's group column) decide a :class:`Partition`: the
holdout split (0 train, 1 val, 2 test) and the repeated K-fold folds of
cross-validation.  Nothing here reads a feature, so another seed, another
split or another group rule costs no forward pass.

* No split given: the stratified, hash-ordered split of :mod:`.split` (images
  already assigned keep their split when images are added), or with groups a
  stratified group split (:class:`sklearn.model_selection.StratifiedGroupKFold`:
  one fold is test, one validation), so no group is on two sides.
* A split given: it is kept.  Without a validation part, validation is drawn
  from the training part (by the same rules); with validation but no test
  part, the given validation images are the test split (they are the held-out
  images the data came with) and validation is drawn from training.  Rows of a
  table with an empty split cell are training images.
* Cross-validation folds every image, or, when the test split is given, only
  the train + val images (test rows are in no fold: fold id -1), stratified,
  and with groups by :class:`~sklearn.model_selection.StratifiedGroupKFold`.

Group rules: ``none``; ``table`` (the label table's group column);
``name:REGEX`` or ``path:REGEX`` (a regular expression searched in each file
name, or in its path relative to the data folder; its first capture group, or
the whole match, names the group).
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import numpy as np

from ..errors import DataError, UsageError, opt
from .split import (
    CV_FOLDS,
    CV_REPEATS,
    DEFAULT_FRACTIONS,
    assign_folds,
    assign_split,
    inner_validation_split,
)

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "val", "test")


# ------------------------------------------------------------------ groups


def parse_group_rule(rule: str) -> tuple[str, re.Pattern | None]:
    """``(kind, compiled pattern or None)`` of a group rule; :class:`UsageError` if bad."""
    rule = (rule or "none").strip()
    if rule in ("none", "table"):
        return rule, None
    kind, sep, pattern = rule.partition(":")
    if not sep or kind not in ("name", "path") or not pattern:
        raise UsageError(f"{opt('groups', rule)} is not a group rule; use none, table (the "
                         "label table's group column), name:REGEX (searched in each file "
                         "name) or path:REGEX (in its path), e.g. 'name:^(patient\\d+)_'",
                         param="groups")
    try:
        return kind, re.compile(pattern)
    except re.error as exc:
        raise UsageError(f"{opt('groups', rule)}: the regular expression does not compile "
                         f"({exc}); fix it", param="groups") from None


def group_ids(rule: str, paths, stored=None) -> list | None:
    """One group name per path under ``rule`` (None for ``none``).

    ``stored`` is the table's group column (required by ``table``).  A regular
    expression that finds no match in a path raises :class:`DataError` naming the
    paths: an image silently left ungrouped could sit on both sides.
    """
    kind, pattern = parse_group_rule(rule)
    if kind == "none":
        return None
    if kind == "table":
        if stored is None:
            raise UsageError(f"{opt('groups', 'table')}: the store has no group column (it was "
                             "not extracted from a label table with a group column); use "
                             "name:REGEX or path:REGEX", param="groups")
        return list(stored)
    out, unmatched = [], []
    for p in paths:
        text = PurePosixPath(p).name if kind == "name" else p
        m = pattern.search(text)
        if m is None:
            unmatched.append(p)
            continue
        out.append(m.group(1) if m.groups() and m.group(1) is not None else m.group(0))
    if unmatched:
        raise DataError(f"{opt('groups', rule)} matches no group in {len(unmatched)} of "
                        f"{len(paths)} images (e.g. {', '.join(unmatched[:3])}); every image "
                        "needs a group: widen the expression", param="groups")
    return out


# ------------------------------------------------------------------ the partition


@dataclass(frozen=True)
class SplitSpec:
    """How to split: the seed of every draw, the group rule and the holdout fractions."""

    seed: int = 0
    groups: str = "none"
    fractions: tuple = DEFAULT_FRACTIONS

    def to_dict(self) -> dict:
        return {"seed": int(self.seed), "groups": self.groups,
                "fractions": [float(f) for f in self.fractions]}


@dataclass(frozen=True)
class PreviousCodes:
    """The codes a store fixed earlier under the same spec, by path: ``split`` maps a path
    to its split code, ``folds`` to its fold ids (one per repeat).  Images found here keep
    them (ungrouped draws), so adding images never moves an earlier one.  None: nothing
    fixed earlier."""

    split: dict | None = None
    folds: dict | None = None


@dataclass
class Partition:
    """The holdout split and the cross-validation folds of a set of images.

    ``split`` is ``(n,)`` int8 (0 train, 1 val, 2 test); ``folds`` ``(n, n_repeats)``
    int8 fold ids, -1 for rows in no fold (a given test split).
    """

    split: np.ndarray
    folds: np.ndarray
    source: str                      # how the split was made, in words
    test_given: bool = False         # the test split comes with the data (kept out of cv)
    n_groups: int | None = None
    notes: list = field(default_factory=list)
    groups_apart: bool = True        # no group has images on two sides of the split

    def describe(self) -> dict:
        sizes = {name: int((self.split == k).sum()) for k, name in enumerate(SPLIT_NAMES)}
        return {"source": self.source, "test_given": self.test_given,
                "n_groups": self.n_groups, "groups_apart": self.groups_apart,
                "sizes": sizes, "notes": list(self.notes),
                "n_folds": int(self.folds.max()) + 1 if self.folds.size else 0,
                "in_cv": int((self.folds[:, 0] >= 0).sum()) if self.folds.size else 0}


def partition(paths, labels, spec: SplitSpec, given=None, groups=None,
              previous: PreviousCodes = PreviousCodes(), n_folds: int = CV_FOLDS,
              n_repeats: int = CV_REPEATS) -> Partition:
    """The :class:`Partition` of images ``paths`` with ``labels`` (``(n,)``) under ``spec``.

    ``given``: ``(n,)`` split codes from the layout (-1: none), or None.  ``groups``:
    one name per image, or None.  ``previous``: the split codes and fold ids a store
    fixed earlier under the same spec, by path (:class:`PreviousCodes`; ungrouped draws
    keep them).
    """
    labels = np.asarray(labels)
    paths = list(paths)
    groups = None if groups is None else np.asarray(groups, dtype=object)
    notes = []
    split, source, test_given = _holdout(paths, labels, spec, given, groups, previous.split,
                                         notes)
    cv_rows = np.flatnonzero(split != 2) if test_given else np.arange(len(paths))
    folds = np.full((len(paths), n_repeats), -1, dtype=np.int8)
    if len(cv_rows):
        folds[cv_rows] = _folds([paths[i] for i in cv_rows], labels[cv_rows],
                                None if groups is None else groups[cv_rows], spec.seed,
                                previous.folds, n_folds, n_repeats, notes)
    n_groups = None if groups is None else len(set(groups.tolist()))
    apart = groups is None or _check_groups_apart(split, groups, notes,
                                                  given_split=given is not None)
    return Partition(split, folds, source, test_given, n_groups, notes, apart)


def _holdout(paths, labels, spec, given, groups, previous, notes):
    """``(split codes, source, test given)`` (see the module docstring)."""
    n = len(paths)
    if given is None or (np.asarray(given) < 0).all():
        how = "stratified group split" if groups is not None else "stratified split"
        return (_draw(paths, labels, np.arange(n), spec, groups, previous, spec.fractions,
                      notes), f"{how} (seed {spec.seed})", False)
    split = np.asarray(given, dtype=np.int8).copy()
    split[split < 0] = 0            # empty split cells of a table: training images
    present = set(split.tolist())
    if 0 not in present:
        raise DataError("the data's split has no training images (only "
                        f"{', '.join(SPLIT_NAMES[c] for c in sorted(present))}); add a train "
                        "folder or train rows", param="data")
    source = "given"
    if 2 not in present and 1 in present:
        split[split == 1] = 2
        present = {0, 2}
        notes.append("the data has no test split: its validation images are the test split, "
                     "and validation is drawn from its training images")
    test_given = 2 in present
    if 1 not in present:
        train = np.flatnonzero(split == 0)
        frac = spec.fractions
        if 2 in present:  # validation only, from the training images
            share = frac[1] / (frac[0] + frac[1])
            fractions = (1.0 - share, share, 0.0)
            what = "validation"
        else:
            fractions, what = frac, "validation and test"
        old = {p: c for p, c in (previous or {}).items() if c in (0, 1) or 2 not in present}
        drawn = _draw(paths, labels, train, spec, groups, old, fractions, notes)
        split[train] = drawn[train]
        source = f"given, {what} drawn from its training images (seed {spec.seed})"
    return split, source, test_given


def _draw(paths, labels, rows, spec, groups, previous, fractions, notes) -> np.ndarray:
    """Split codes for ``rows`` (others -1): hash-ordered per class, or by groups."""
    split = np.full(len(paths), -1, dtype=np.int8)
    if groups is None:
        sub = assign_split([paths[i] for i in rows], labels[rows], seed=spec.seed,
                           fractions=fractions, previous=previous)
        split[rows] = sub
        return split
    split[rows] = _group_holdout(labels[rows], groups[rows], spec.seed, fractions, notes)
    return split


def _group_holdout(labels, groups, seed: int, fractions, notes) -> np.ndarray:
    """Split codes keeping each group on one side: folds of a stratified group K-fold,
    one fold test (when asked) and one validation, the rest training."""
    parts = [k for k in (2, 1) if fractions[k] > 0]
    smallest = min(fractions[k] for k in parts)
    want = max(len(parts) + 1, int(round(1.0 / smallest)))
    fold, k = _group_kfold(labels, groups, want, seed)
    if k < len(parts) + 1:
        raise DataError(f"a split by groups needs at least {len(parts) + 1} groups, and "
                        f"these images have {len(set(groups.tolist()))}; use more groups "
                        f"or {opt('groups', 'none')}", param="groups")
    if k < want:
        notes.append(f"only {k} groups: each of train, validation and test holds about 1/{k} "
                     "of the groups instead of the asked fractions")
    split = np.zeros(len(labels), dtype=np.int8)
    for code, f in zip(parts, range(len(parts))):
        split[fold == f] = code
    return split


def _group_kfold(labels, groups, n_splits: int, seed: int) -> tuple[np.ndarray, int]:
    """``(fold id per row, folds)`` of a shuffled stratified group K-fold (fewer folds
    when there are fewer groups)."""
    from sklearn.model_selection import StratifiedGroupKFold

    k = min(n_splits, len(set(groups.tolist())))
    fold = np.zeros(len(labels), dtype=np.int8)
    if k < 2:
        return fold, k
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed % 2**32)
    with warnings.catch_warnings():
        # "The least populated class has only N members": stratification is best effort
        warnings.simplefilter("ignore", UserWarning)
        for f, (_, test) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
            fold[test] = f
    return fold, k


def _folds(paths, labels, groups, seed, previous, n_folds, n_repeats, notes) -> np.ndarray:
    """Fold ids ``(n, n_repeats)`` of the rows given: hash-dealt per class, or by groups."""
    if groups is None:
        return assign_folds(paths, labels, n_folds, n_repeats, seed=seed, previous=previous)
    out = np.zeros((len(paths), n_repeats), dtype=np.int8)
    for r in range(n_repeats):
        out[:, r], k = _group_kfold(labels, groups, n_folds, _repeat_seed(seed, r))
        if k < 2:
            raise DataError(f"cross-validation by groups needs at least 2 groups, and these "
                            f"images have {k}; use more groups or {opt('groups', 'none')}",
                            param="groups")
    if k < n_folds:
        notes.append(f"only {k} groups: cross-validation uses {k} folds per repeat")
    return out


def inner_split(labels, rows, seed: int = 0, fraction: float = 0.15, groups=None):
    """``rows`` split into ``(training rows, validation rows)`` for early stopping inside
    an outer cross-validation training fold: stratified
    (:func:`pipeline.data.split.inner_validation_split`), and with ``groups`` (one name per
    store row) by a stratified group K-fold, so no group is on both sides.  Both sorted."""
    rows = np.asarray(rows)
    if groups is None:
        return inner_validation_split(labels, rows, seed, fraction)
    sub = np.asarray(groups, dtype=object)[rows]
    fold, k = _group_kfold(np.asarray(labels)[rows], sub, max(2, int(round(1 / fraction))),
                           seed)
    if k < 2:
        raise DataError(f"the training rows of a fold hold {k} group(s): nothing to validate "
                        f"on apart from them; use more groups or {opt('groups', 'none')}",
                        param="groups")
    return np.sort(rows[fold != 0]), np.sort(rows[fold == 0])


def _repeat_seed(seed: int, repeat: int) -> int:
    return int(np.random.SeedSequence([seed, repeat]).generate_state(1)[0])


def _check_groups_apart(split, groups, notes, given_split: bool) -> bool:
    """Whether every group is on one side of ``split``; else a note: only a given split
    can put a group on two sides, and then the test figures may be inflated."""
    sides = {}
    for g, code in zip(groups.tolist(), split.tolist()):
        sides.setdefault(g, set()).add(code)
    crossing = sorted(g for g, s in sides.items() if len(s) > 1)
    if not crossing:
        return True
    note = (f"{len(crossing)} of {len(sides)} groups have images in more than one split "
            f"(e.g. {', '.join(map(str, crossing[:3]))})"
            + (": the data's own split puts them there, so test figures may be inflated; "
               "move each group's images into one split" if given_split else ""))
    notes.append(note)
    return False
