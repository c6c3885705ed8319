"""Data as users bring it: split folders, label tables, groups, and splits apart from vectors.

Real flower photos (the bundled subset, copied into ``tmp_path`` in the layout
under test) go through ``extract``; the toy backbone keeps most cases fast,
and one case runs the real efficientnet_lite0.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline.data.layouts import detect, load
from pipeline.data.manifest import bundled_data_root
from pipeline.data.partition import SplitSpec, group_ids, partition
from pipeline.errors import DataError, UsageError
from pipeline.extraction.job import ExtractConfig, run_extract
from pipeline.store.hdf5 import FeatureStore, open_store

FLOWERS = bundled_data_root()
CLASSES = sorted(p.name for p in FLOWERS.iterdir() if p.is_dir())


def _photos(cls: str, n: int | None = None) -> list[Path]:
    return sorted((FLOWERS / cls).glob("*.jpg"))[:n]


def split_folders(root: Path, names=("train", "val", "test"), per=(12, 4, 4)) -> Path:
    """``root/<split>/<class>/`` with the bundled photos, ``per`` photos per split."""
    for cls in CLASSES:
        photos = _photos(cls)
        start = 0
        for name, n in zip(names, per):
            (root / name / cls).mkdir(parents=True, exist_ok=True)
            for p in photos[start:start + n]:
                shutil.copy(p, root / name / cls / p.name)
            start += n
    return root


def _extract(data, out, **kw):
    cfg = dict(data=str(data), backbone="toy", layers=("layer1", "layer2"), out=str(out),
               progress=False, batch_size=8, workers=0)
    cfg.update(kw)
    return run_extract(ExtractConfig(**cfg))


# ------------------------------------------------------------------ split folders


def test_split_folders_give_the_flower_classes_and_the_folders_split(tmp_path):
    root = split_folders(tmp_path / "ds", names=("Train", "valid", "TEST"))
    assert detect(root)[0] == "splits"
    summary = _extract(root, tmp_path / "f")
    store = FeatureStore(summary.path)
    assert store.classes == CLASSES                    # never a class named train or test
    assert not {"train", "test", "Train", "TEST"} & set(store.classes)
    folder_code = {"Train": 0, "valid": 1, "TEST": 2}
    for path, code, given in zip(store.paths, store.split_codes, store.given_split):
        assert code == given == folder_code[path.split("/")[0]]
    assert store.split_sizes() == {"train": 60, "val": 20, "test": 20}
    # cross-validation folds train + val; the given test split is in no fold
    test = store.split_codes == 2
    assert (store.folds[test] == -1).all() and (store.folds[~test] >= 0).all()
    for _r, _k, train_rows, test_rows in store.cv_splits():
        assert not test[train_rows].any() and not test[test_rows].any()
    assert summary.describe()[0].startswith("layout: split folders")


def test_train_and_test_only_draws_validation_from_train(tmp_path):
    root = split_folders(tmp_path / "ds", names=("train", "test"), per=(16, 4))
    store = FeatureStore(_extract(root, tmp_path / "f").path)
    test_paths = {p for p, c in zip(store.paths, store.split_codes) if c == 2}
    assert test_paths == {p for p in store.paths if p.startswith("test/")}
    val = [p for p, c in zip(store.paths, store.split_codes) if c == 1]
    assert val and all(p.startswith("train/") for p in val)
    assert "validation drawn from its training images" in store.split_info["source"]


def test_mixed_root_is_refused_and_the_override_reads_every_folder_as_a_class(tmp_path):
    root = split_folders(tmp_path / "ds", names=("train", "test"), per=(4, 3))
    shutil.copytree(FLOWERS / "daisy", root / "daisy")
    with pytest.raises(DataError, match="mixes split folders") as err:
        load(root)
    assert "--layout" in str(err.value.render({"layout": "--layout"}))
    manifest = load(root, layout="classes")
    assert manifest.classes == ["daisy", "test", "train"]


def test_a_class_missing_from_a_split_is_named(tmp_path, caplog):
    root = split_folders(tmp_path / "ds", per=(6, 3, 3))
    shutil.rmtree(root / "test" / "roses")
    summary = _extract(root, tmp_path / "f")
    warnings = [line for line in summary.describe() if line.startswith("WARNING")]
    assert any("roses" in w and "test/" in w for w in warnings), warnings
    assert "roses" in caplog.text


# ------------------------------------------------------------------ label tables


def _table(tmp_path, name="labels.csv", extra_rows=(), delimiter=","):
    """A table of the bundled photos copied into ``tmp_path/t/img``: columns file, Class,
    split (every fifth photo test), patient (a group of three photos of one class)."""
    root = tmp_path / "t"
    (root / "img").mkdir(parents=True)
    rows = []
    for cls in CLASSES:
        for i, p in enumerate(_photos(cls, 15)):
            shutil.copy(p, root / "img" / p.name)
            rows.append({"file": f"img/{p.name}", "Class": cls,
                         "split": "test" if i % 5 == 4 else "",
                         "patient": f"{cls}-{i // 3}"})
    rows += list(extra_rows)
    with open(root / name, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["file", "Class", "split", "patient"],
                           delimiter=delimiter)
        w.writeheader()
        w.writerows(rows)
    return root / name


def test_table_with_split_and_group_columns_drives_extract_fit_and_cv(tmp_path):
    from pipeline.configs import FitConfig
    from pipeline.workflows.fit import run_fit

    table = _table(tmp_path)
    summary = _extract(table, tmp_path / "f", group_column="patient")
    assert summary.path.name == "t_labels_toy_avg.h5"
    store = FeatureStore(summary.path)
    assert store.classes == CLASSES and len(store) == 75
    assert store.attrs["layout"] == "table" and store.groups[0].startswith(store.classes[0])
    assert store.split_info["groups"] == "table" and store.split_info["n_groups"] == 25
    listed = list(csv.DictReader(open(table, encoding="utf-8")))
    assert {p for p, c in zip(store.paths, store.split_codes) if c == 2} == \
        {r["file"] for r in listed if r["split"] == "test"}
    cfg = FitConfig(features=summary.path, layer="layer2")
    (cv, _), = run_fit(replace(cfg, protocol="cv"), tmp_path / "runs")
    (ho, _), = run_fit(replace(cfg, protocol="holdout"), tmp_path / "runs")
    assert cv["split"]["groups"] == "table" and ho["split"]["n_groups"] == 25
    # cv scored train + val only: the table's test rows are in no fold
    assert len(cv["predictions"]["paths"]) == int((store.split_codes != 2).sum())
    assert set(ho["predictions"]["paths"]) == {p for p, c in zip(store.paths,
                                                                 store.split_codes) if c == 2}


def test_bad_rows_are_listed_with_their_line_numbers_and_the_rest_kept(tmp_path):
    bad = [{"file": "img/missing.jpg", "Class": "daisy", "split": "", "patient": "x"},
           {"file": f"img/{_photos('daisy')[0].name}", "Class": "roses", "split": "",
            "patient": "x"},
           {"file": f"img/{_photos('roses')[0].name}", "Class": "", "split": "", "patient": "x"},
           {"file": f"img/{_photos('tulips')[0].name}", "Class": "tulips", "split": "holdout",
            "patient": "x"},
           {"file": "notes.txt", "Class": "daisy", "split": "", "patient": "x"}]
    table = _table(tmp_path, extra_rows=bad)
    (table.parent / "notes.txt").write_text("not an image")
    manifest = load(table)
    assert len(manifest) == 75          # the bad rows are extra lines: every photo stays
    reasons = dict(manifest.excluded)
    lines = {k: v.split(":")[0] for k, v in reasons.items()}
    assert lines["img/missing.jpg"] == "line 77 of labels.csv"
    assert "does not exist" in reasons["img/missing.jpg"]
    assert "again (first at line 2)" in reasons[f"img/{_photos('daisy')[0].name}"]
    assert "empty label" in reasons[f"img/{_photos('roses')[0].name}"]
    assert "unknown split 'holdout'" in reasons[f"img/{_photos('tulips')[0].name}"]
    assert "not an image file name" in reasons["notes.txt"]
    summary = _extract(table, tmp_path / "f")
    assert len([s for s in summary.skipped if "line " in s[1]]) == 5


@pytest.mark.parametrize("fmt", ["tsv", "jsonl", "parquet"])
def test_tsv_jsonl_and_parquet_tables_read_the_same(tmp_path, fmt):
    csv_table = _table(tmp_path)
    rows = list(csv.DictReader(open(csv_table, encoding="utf-8")))
    out = csv_table.with_suffix(f".{fmt}")
    if fmt == "tsv":
        with open(out, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]), delimiter="\t")
            w.writeheader()
            w.writerows(rows)
    elif fmt == "jsonl":
        out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    else:
        pa = pytest.importorskip("pyarrow")
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), out)
    a, b = load(csv_table), load(out)
    assert (a.paths, a.labels.tolist(), a.given_split.tolist()) == \
        (b.paths, b.labels.tolist(), b.given_split.tolist())


def test_columns_absolute_paths_and_image_root(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    lines = ["name\tkind"]
    for cls in CLASSES[:2]:
        for p in _photos(cls, 4):
            shutil.copy(p, root / p.name)
            lines.append(f"{root / p.name}\t{cls}")
    table = tmp_path / "meta" / "t.tsv"
    table.parent.mkdir()
    table.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="no path column .*columns: name, kind"):
        load(table)
    m = load(table, columns=_cols(path="name", label="kind"))
    assert len(m) == 8 and all(Path(p).is_absolute() for p in m.paths)
    rel = tmp_path / "meta" / "rel.csv"
    rel.write_text("path,label\n" + "".join(f"{Path(line.split(chr(9))[0]).name},"
                                            f"{line.split(chr(9))[1]}\n"
                                            for line in lines[1:]))
    with pytest.raises(DataError, match="image.root"):
        load(rel)
    m = load(rel, columns=_cols(image_root=str(root)))
    assert len(m) == 8 and m.root == root and not Path(m.paths[0]).is_absolute()


def _cols(**kw):
    from pipeline.data.layouts import TableColumns

    return TableColumns(**kw)


def test_edited_table_rewrites_the_index_without_a_forward_pass(tmp_path, monkeypatch):
    table = _table(tmp_path)
    first = _extract(table, tmp_path / "f")
    text = table.read_text().replace(",daisy,", ",roses,", 2)
    table.write_text(text)
    calls = _count_forward(monkeypatch)
    again = _extract(table, tmp_path / "f")
    assert calls == [] and again.n_extracted == 0 and not again.up_to_date
    store = FeatureStore(again.path)
    assert store.class_counts()["roses"] == FeatureStore(first.path).class_counts()["roses"]
    assert store.class_counts() == {**{c: 15 for c in CLASSES}, "daisy": 13, "roses": 17}


# ------------------------------------------------------------------ groups


def test_no_group_is_on_both_sides_of_the_holdout_split_or_of_any_fold():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], [60, 45, 15])
    paths = [f"c{lab}/patient{rng.integers(0, 30):02d}_{i}.jpg" for i, lab in enumerate(labels)]
    groups = group_ids(r"name:^(patient\d+)_", paths)
    for seed in (0, 1, 7):
        part = partition(paths, labels, SplitSpec(seed=seed, groups="name:x"), groups=groups)
        side = {}
        for g, code in zip(groups, part.split):
            side.setdefault(g, set()).add(int(code))
        assert all(len(s) == 1 for s in side.values())
        assert set(part.split.tolist()) == {0, 1, 2}
        for r in range(part.folds.shape[1]):
            for k in range(part.folds[:, r].max() + 1):
                inside = {g for g, f in zip(groups, part.folds[:, r]) if f == k}
                outside = {g for g, f in zip(groups, part.folds[:, r]) if f != k}
                assert not inside & outside
    with pytest.raises(DataError, match="matches no group"):
        group_ids(r"name:^(patient\d+)_", paths + ["c0/other.jpg"])
    with pytest.raises(UsageError, match="does not compile"):
        group_ids("name:(", paths)


def test_group_rule_on_a_store_keeps_each_group_on_one_side(tmp_path):
    root = tmp_path / "d"
    for cls in CLASSES:
        (root / cls).mkdir(parents=True)
        for i, p in enumerate(_photos(cls, 18)):
            shutil.copy(p, root / cls / f"{cls}{i // 3:02d}_{p.name}")
    store = open_store(_extract(root, tmp_path / "f").path, groups=r"name:^([a-z]+\d+)_")
    names = [Path(p).name.split("_")[0] for p in store.paths]
    for code in range(3):
        mine = {n for n, c in zip(names, store.split_codes) if c == code}
        others = {n for n, c in zip(names, store.split_codes) if c != code}
        assert mine and not mine & others
    assert store.split_info["n_groups"] == 30 and not store.split_info["stored"]


# ------------------------------------------------------------------ splits apart from vectors


def _count_forward(monkeypatch) -> list:
    """Calls of the one feature function (the real one still runs)."""
    import pipeline.extraction.features as features

    calls, real = [], features.extract_features

    def counted(*args, **kw):
        calls.append(args[1])
        return real(*args, **kw)

    monkeypatch.setattr(features, "extract_features", counted)
    return calls


def test_another_seed_protocol_or_group_rule_costs_no_forward_pass(tmp_path, monkeypatch):
    from pipeline.configs import FitConfig, LadderConfig
    from pipeline.workflows.ladder import run_ladder

    root = tmp_path / "d"
    for cls in CLASSES:
        (root / cls).mkdir(parents=True)
        for i, p in enumerate(_photos(cls, 12)):
            shutil.copy(p, root / cls / f"s{i // 2}_{p.name}")
    calls = _count_forward(monkeypatch)
    path = _extract(root, tmp_path / "f").path
    assert len(calls) == 1
    before = path.read_bytes()
    from pipeline.workflows.fit import run_fit

    tests = set()
    for kw in ({"split_seed": 1}, {"split_seed": 2, "protocol": "cv"},
               {"groups": r"name:^(s\d+)_", "protocol": "holdout"}):
        (rec, _), = run_fit(FitConfig(features=path, layer="layer2", **kw), tmp_path / "runs")
        tests.add(rec["split_fingerprint"])
    rows = run_ladder(LadderConfig(features=str(path), rungs=["pixels", "frozen"],
                                   protocol="holdout", split_seed=5, groups=r"name:^(s\d+)_"),
                      tmp_path / "runs")
    assert len([r for r in rows if not r.reference]) == 2 and len(tests) == 3
    again = _extract(root, tmp_path / "f")
    assert again.up_to_date and len(calls) == 1 and path.read_bytes() == before


def test_extract_seed_rewrites_the_stored_split_only(tmp_path, monkeypatch):
    root = split_folders(tmp_path / "ds", names=("train",), per=(20,))
    path = _extract(root, tmp_path / "f").path
    old = FeatureStore(path).split_codes.copy()
    calls = _count_forward(monkeypatch)
    again = _extract(root, tmp_path / "f", seed=3)
    store = FeatureStore(again.path)
    assert calls == [] and again.n_extracted == 0
    assert store.stored_spec.seed == 3 and not np.array_equal(store.split_codes, old)


def test_a_store_of_the_former_key_is_reused_without_a_forward_pass(tmp_path, monkeypatch):
    from pipeline.data.manifest import scan

    root = split_folders(tmp_path / "ds", names=("train",), per=(10,))
    path = _extract(root / "train", tmp_path / "f").path
    with h5py.File(path, "r+") as f:  # the key stores had before the split left it
        config = json.loads(f.attrs["config"])
        config.update(classes=scan(root / "train").classes,
                      split={"seed": 0, "fractions": [0.7, 0.15, 0.15]})
        f.attrs["config"] = json.dumps(config, sort_keys=True)
        for name in ("layout", "partition", "group_rule", "source", "source_sha256"):
            f.attrs.pop(name, None)
    old = FeatureStore(path)
    assert old.split_info["source"].startswith("stratified split")
    calls = _count_forward(monkeypatch)
    again = _extract(root / "train", tmp_path / "f")
    assert calls == [] and again.n_reused == 50
    assert np.array_equal(FeatureStore(path).split_codes, old.split_codes)


def test_split_folders_with_the_real_backbone(tmp_path):
    """The real efficientnet_lite0 on a train/val/test layout: five flower classes."""
    root = split_folders(tmp_path / "flowers", per=(6, 2, 2))
    summary = run_extract(ExtractConfig(data=str(root), out=str(tmp_path / "f"),
                                        layers=("layer4",), progress=False))
    store = FeatureStore(summary.path)
    assert store.classes == CLASSES and store.split_sizes() == {"train": 30, "val": 10,
                                                                "test": 10}
    assert store.X("layer4").shape == (50, 320)


# ------------------------------------------------------------------ hostile tables


def test_hostile_tables_give_a_message_or_a_listed_row_never_a_traceback(tmp_path, run):
    from conftest import assert_clean

    photo = _photos("daisy", 1)[0]
    img = tmp_path / "img"
    img.mkdir()
    for cls in CLASSES[:2]:
        for p in _photos(cls, 3):
            shutil.copy(p, img / p.name)
    good = "".join(f"img/{p.name},{cls}\n" for cls in CLASSES[:2] for p in _photos(cls, 3))
    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)
    cases = {
        "binary.csv": (b"\xff\xfe\x00garbage\x00\n", "not UTF-8"),
        "nul.csv": ("path,label\n" + good + "img/a\x00b.jpg,daisy\n", "NUL"),
        "deep.jsonl": ("[" * 100000 + "\n", "not JSON"),
        "huge.csv": ("path,label\n" + good + "\"" + "x" * 200000 + "\",daisy\n", "field larger"),
        "empty.csv": ("", "empty"),
        "nocolumn.csv": ("file_name_x,kind\n" + good, "no path column"),
    }
    for name, (content, words) in cases.items():
        table = tmp_path / name
        table.write_bytes(content if isinstance(content, bytes) else content.encode())
        res = run("extract", "--data", table, "--backbone", "toy", "--layer", "layer1",
                  "--out", tmp_path / "f", "--no-progress")
        if res.exit_code == 0:  # the bad line was left out and listed, the rest extracted
            assert "line " in res.output, (name, res.output)
        else:
            assert_clean(res, words)
    res = run("extract", "--data", fifo, "--out", tmp_path / "f")
    assert_clean(res, "not a file")
    dev = tmp_path / "dev.csv"
    dev.write_text("path,label\n" + good + "/dev/zero.jpg,daisy\n/dev/null,daisy\n")
    manifest = load(dev)
    assert len(manifest) == 6 and len(manifest.excluded) == 2
    jsonl = tmp_path / "odd.jsonl"
    jsonl.write_text(json.dumps({"path": "img/\ud800.jpg", "label": "daisy"}) + "\n"
                     + "".join(json.dumps({"path": f"img/{p.name}", "label": c}) + "\n"
                               for c in CLASSES[:2] for p in _photos(c, 3)))
    manifest = load(jsonl)
    assert len(manifest) == 6 and "UTF-8" in manifest.excluded[0][1]
    assert photo.exists()


def test_the_trunk_cache_of_a_holdout_run_is_keyed_by_the_split_in_use(tmp_path):
    """Fine-tuning caches trunk outputs per split part: another split seed must not read
    the parts cut for the stored split (cv caches every image: one key for any split)."""
    from types import SimpleNamespace

    from pipeline.configs import FinetuneConfig
    from pipeline.train.trunk_cache import cache_key

    root = split_folders(tmp_path / "ds", names=("train",), per=(10,))
    path = _extract(root, tmp_path / "f").path
    cfg = FinetuneConfig(features=str(path), backbone="toy", runtime="eager")
    pre = SimpleNamespace(to_dict=lambda: {"size": 16})

    def key(layout, **split):
        return cache_key(open_store(path, **split), cfg, 1, "w", pre, layout)

    assert key("holdout") == key("holdout", split_seed=0)
    assert key("holdout") != key("holdout", split_seed=1)
    assert key("cv") == key("cv", split_seed=1)


def test_inner_folds_that_choose_hyperparameters_or_epochs_keep_groups_apart():
    from pipeline.data.partition import inner_split
    from pipeline.heads.crossval import _inner_folds, cross_validate
    from pipeline.heads.selection import Choice

    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], [40, 20])
    groups = np.asarray([f"g{i // 4}" for i in range(60)], dtype=object)
    X = rng.normal(size=(60, 5)) + y[:, None]
    for tr, va in _inner_folds(X, y, 3, 0, groups):
        assert not set(groups[tr]) & set(groups[va])
    rows = np.arange(10, 60)
    tr, va = inner_split(y, rows, seed=3, groups=groups)
    assert len(va) and not set(groups[tr]) & set(groups[va])
    assert sorted(np.concatenate([tr, va]).tolist()) == rows.tolist()
    part = partition([f"{g}_{i}.jpg" for i, g in enumerate(groups)], y,
                     SplitSpec(groups="name:x"), groups=list(groups))
    splits = [(r, k, np.flatnonzero((part.folds[:, r] != k) & (part.folds[:, r] >= 0)),
               np.flatnonzero(part.folds[:, r] == k))
              for r in range(3) for k in range(part.folds[:, r].max() + 1)]
    folds = cross_validate("logreg", X, y, splits, choice=Choice(groups=groups))
    assert len(folds) == len(splits) and all(f.search for f in folds)
