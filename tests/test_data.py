"""Scanning image folders and the fixed stratified split."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_folder

from pipeline.data.manifest import scan
from pipeline.data.split import assign_split
from pipeline.errors import DataError


def _labels(counts):
    return np.repeat(np.arange(len(counts)), counts)


def test_split_is_stratified_with_exact_quotas():
    counts = [20, 40, 7]
    labels = _labels(counts)
    paths = [f"c{l}/img{i}.jpg" for i, l in enumerate(labels)]
    split = assign_split(paths, labels, seed=0)
    for c, n in enumerate(counts):
        got = np.bincount(split[labels == c], minlength=3)
        n_val, n_test = max(1, round(n * 0.15)), max(1, round(n * 0.15))
        assert got.tolist() == [n - n_val - n_test, n_val, n_test]


def test_split_is_stable_across_order_and_seed_dependent():
    labels = _labels([30, 30])
    paths = [f"c{l}/img{i}.jpg" for i, l in enumerate(labels)]
    a = assign_split(paths, labels, seed=3)
    order = np.random.default_rng(0).permutation(len(paths))
    b = assign_split([paths[i] for i in order], labels[order], seed=3)
    assert dict(zip(paths, a)) == dict(zip([paths[i] for i in order], b))
    assert not np.array_equal(a, assign_split(paths, labels, seed=4))


def test_adding_images_never_moves_a_fixed_image():
    labels = _labels([20, 20])
    paths = [f"c{l}/img{i}.jpg" for i, l in enumerate(labels)]
    first = assign_split(paths, labels, seed=0)
    previous = dict(zip(paths, first.tolist()))
    more_labels = np.concatenate([labels, _labels([10, 10])])
    more_paths = paths + [f"c{l}/new{i}.jpg" for i, l in enumerate(_labels([10, 10]))]
    second = assign_split(more_paths, more_labels, seed=0, previous=previous)
    assert second[:len(paths)].tolist() == first.tolist()
    for c in (0, 1):
        got = np.bincount(second[more_labels == c], minlength=3)
        assert got.tolist() == [21, 4, 5] or got.sum() == 30  # quotas of the enlarged class
        assert got[2] >= 4


def test_scan_skips_hidden_and_non_images(tmp_path):
    root = make_folder(tmp_path / "d", per_class=3)
    (root / "red" / ".hidden.png").write_bytes(b"x")
    (root / "red" / "notes.txt").write_text("hello")
    (root / ".git").mkdir()
    (root / "empty_class").mkdir()
    (root / "red" / "UPPER.PNG").write_bytes((root / "red" / "img_00.png").read_bytes())
    m = scan(root)
    assert m.classes == ["blue", "green", "red"]
    assert "red/notes.txt" in m.ignored
    assert not any(".hidden" in p for p in m.paths)
    assert "red/UPPER.PNG" in m.paths
    assert len(m) == 10


def test_scan_errors_are_clear(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        scan(tmp_path / "missing")
    one = make_folder(tmp_path / "one", per_class=3, colours={"only": (1, 2, 3)})
    with pytest.raises(DataError, match="at least 2"):
        scan(one)
    few = make_folder(tmp_path / "few", per_class=2)
    with pytest.raises(DataError, match="fewer than 3 images"):
        scan(few)
