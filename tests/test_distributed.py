"""Extraction in shards (torchrun ranks) merged into one store equal to a single-process run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import make_folder
from PIL import Image

from pipeline.errors import StoreError, UsageError
from pipeline.extraction import shards as dist
from pipeline.extraction.job import ExtractConfig, run_extract
from pipeline.store.hdf5 import FeatureStore

ROOT = Path(__file__).resolve().parents[1]
#: Datasets whose content must be equal bit for bit between the two routes.
DATASETS = ("paths", "labels", "split", "classes", "sha256", "size", "mtime_ns",
            "skipped/paths", "skipped/sha256", "skipped/reasons")
#: Attributes that describe the content (timestamps and throughput differ between runs).
CONTENT_ATTRS = ("config", "config_key", "fingerprint", "taps", "n_images", "n_skipped",
                 "backbone", "weights", "pooling", "dtype", "precision", "runtime", "dataset",
                 "data_root", "split_seed", "split_fractions", "preprocessing")


def _cfg(folder, out, **kw):
    cfg = dict(data=str(folder), backbone="toy", layers=("layer1", "layer2"), out=str(out),
               progress=False, batch_size=4, workers=0)
    cfg.update(kw)
    return ExtractConfig(**cfg)


def assert_same_store(a: Path, b: Path):
    """Every dataset, tap and content attribute of two stores equal, bit for bit."""
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        for name in DATASETS:
            assert fa[name].dtype == fb[name].dtype, name
            np.testing.assert_array_equal(fa[name][()], fb[name][()], err_msg=name)
        assert sorted(fa["taps"]) == sorted(fb["taps"])
        for tap in fa["taps"]:
            x, y = fa[f"taps/{tap}"], fb[f"taps/{tap}"]
            assert x.dtype == y.dtype and x.shape == y.shape, tap
            assert x[()].tobytes() == y[()].tobytes(), f"tap {tap} differs"
        for key in CONTENT_ATTRS:
            assert fa.attrs[key] == fb.attrs[key], key


def _varied_folder(root: Path, per_class: int = 5) -> Path:
    """Flat colours with a different brightness per image, and classes of unequal size."""
    make_folder(root, per_class=per_class)
    make_folder(root, per_class=per_class + 2, colours={"blue": (0, 0, 200)})
    return root


def test_parse_shard_and_errors():
    assert dist.parse_shard("1/4") == (1, 4)
    assert dist.parse_shard(" 0 / 1 ") == (0, 1)
    for bad in ("4/4", "1", "a/b", "-1/2", "0/0"):
        with pytest.raises(UsageError, match="RANK/WORLD"):
            dist.parse_shard(bad)


def test_shard_manifest_rows_are_disjoint_and_cover_everything(tmp_path):
    from pipeline.data.manifest import scan

    manifest = scan(_varied_folder(tmp_path / "img"))   # 17 images
    parts = [dist.shard_manifest(manifest, k, 3, block=2) for k in range(3)]
    got = [p for part in parts for p in part.paths]
    assert sorted(got) == sorted(manifest.paths) and len(got) == len(set(got))
    # batches of 2: rank 1 takes batches 1, 4, 7 = rows 2-3, 8-9, 14-15
    rows = [2, 3, 8, 9, 14, 15]
    assert parts[1].paths == [manifest.paths[i] for i in rows]
    np.testing.assert_array_equal(parts[1].labels, manifest.labels[rows])
    assert [len(p) for p in parts] == [6, 6, 5]   # rank 2 also has batch 8 = row 16
    assert dist.shard_manifest(manifest, 1, 3).paths == manifest.paths[1::3]


def test_shards_merged_equal_single_process(tmp_path):
    folder = _varied_folder(tmp_path / "img")
    (folder / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    single = run_extract(_cfg(folder, tmp_path / "single"))
    cfg = _cfg(folder, tmp_path / "dist")
    shards = [dist.extract_shard(cfg, k, 3) for k in range(3)]
    # 18 files (blue 7, green 5, red 5 + 1 unreadable) in batches of 4: rank 0 takes
    # batches 0 and 3, rank 1 batches 1 and 4 (the remainder of 2), rank 2 batch 2
    assert [s.n_extracted + len(s.skipped) for s in shards] == [8, 6, 4]
    assert sum(s.n_extracted for s in shards) == 17 == single.n_extracted
    assert sum(len(s.skipped) for s in shards) == 1
    merged = dist.merge_shards(cfg, 3)
    assert merged.path == tmp_path / "dist" / single.path.name
    assert [p for p, _ in merged.skipped] == ["red/broken.jpg"]
    assert_same_store(merged.path, single.path)
    assert not Path(str(merged.path) + ".shards").exists()   # shards deleted once merged


def test_killed_shard_resumes_alone_and_finished_shard_is_kept(tmp_path, monkeypatch):
    import pipeline.extraction.features as ex

    folder = _varied_folder(tmp_path / "img", per_class=8)   # 10 + 8 + 8 = 26 images
    single = run_extract(_cfg(folder, tmp_path / "single"))
    cfg = _cfg(folder, tmp_path / "dist")
    assert dist.extract_shard(cfg, 0, 2).n_extracted == 14   # batches 0, 2, 4, 6 (4+4+4+2)

    real = ex.iter_features

    def dies_after_two_batches(*args, **kw):
        for i, res in enumerate(real(*args, **kw)):
            if i == 2:
                raise KeyboardInterrupt("rank killed")
            yield res

    monkeypatch.setattr(ex, "iter_features", dies_after_two_batches)
    with pytest.raises(KeyboardInterrupt):
        dist.extract_shard(cfg, 1, 2)
    monkeypatch.setattr(ex, "iter_features", real)
    with pytest.raises(StoreError, match="1/2 are not finished"):
        dist.merge_shards(cfg, 2)

    again = dist.extract_shard(cfg, 0, 2)
    assert again.up_to_date and again.n_extracted == 0        # finished shard: no forward pass
    rest = dist.extract_shard(cfg, 1, 2)
    assert rest.n_resumed == 8 and rest.n_extracted == 4      # 2 of its 3 batches kept
    assert_same_store(dist.merge_shards(cfg, 2).path, single.path)


def test_added_images_after_merge_are_all_the_shards_extract(tmp_path):
    folder = _varied_folder(tmp_path / "img")
    cfg = _cfg(folder, tmp_path / "dist")
    for k in range(2):
        dist.extract_shard(cfg, k, 2)
    first = FeatureStore(dist.merge_shards(cfg, 2).path)
    split_before = dict(zip(first.paths, first.split_codes))
    make_folder(folder, per_class=7)           # two new images in green and red
    runs = [dist.extract_shard(cfg, k, 2) for k in range(2)]
    assert sum(r.n_extracted for r in runs) == 4 and sum(r.n_reused for r in runs) == 17
    merged = dist.merge_shards(cfg, 2)
    store = FeatureStore(merged.path)
    assert len(store) == 21
    for p, code in split_before.items():
        assert store.split_codes[store.paths.index(p)] == code
    # Vectors equal a fresh single-process run; the split of an incremental store
    # depends on its history (old images keep theirs), as for one process.
    single = FeatureStore(run_extract(_cfg(folder, tmp_path / "single")).path)
    np.testing.assert_array_equal(store.X("layer2"), single.X("layer2"))


def test_merge_refuses_shards_of_other_configurations(tmp_path):
    folder = _varied_folder(tmp_path / "img")
    dist.extract_shard(_cfg(folder, tmp_path / "d"), 0, 2)
    dist.extract_shard(_cfg(folder, tmp_path / "d", layers=("layer1",)), 1, 2)
    with pytest.raises(StoreError, match="another configuration or other taps"):
        dist.merge_shards(_cfg(folder, tmp_path / "d"), 2)


def test_cli_shard_and_merge_options(tmp_path):
    from cli import cli

    folder = _varied_folder(tmp_path / "img")
    base = ["extract", "--data", str(folder), "--backbone", "toy", "--layer", "layer1",
            "--out", str(tmp_path / "f"), "--workers", "0", "--no-progress"]
    runner = CliRunner()
    for k in range(2):
        res = runner.invoke(cli, base + ["--shard", f"{k}/2"])
        assert res.exit_code == 0, res.output
        assert f"rank-{k}of2.h5" in res.output
    res = runner.invoke(cli, base + ["--merge-shards", "2"])
    assert res.exit_code == 0, res.output
    assert len(FeatureStore(tmp_path / "f" / "img_toy_avg.h5")) == 17
    res = runner.invoke(cli, base + ["--shard", "2/2"])
    assert res.exit_code == 2 and "RANK/WORLD" in res.output


def test_torchrun_env_detection():
    assert dist.torchrun_env({}) is None
    env = dist.torchrun_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1",
                             "LOCAL_WORLD_SIZE": "2"})
    assert env == dist.TorchrunEnv(rank=3, world=4, local_rank=1, local_world=2)
    assert dist._rank_device("cpu", 1) == "cpu"
    assert dist._rank_device("cuda", 1) == "cuda:1"


# ------------------------------------------------------------ real torchrun


def _noise_folder(root: Path, per_class=(4, 4, 4)) -> Path:
    """Small random-noise images (every image different), three classes."""
    rng = np.random.default_rng(0)
    for name, n in zip(("a", "b", "c"), per_class):
        (root / name).mkdir(parents=True)
        for i in range(n):
            arr = rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / name / f"{i:02d}.png")
    return root


def _run(args, tmp_path, name):
    env = dict(os.environ)
    # Same intra-op thread count in both routes: float sums depend on it (about 1e-6).
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    (tmp_path / f"{name}.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.mark.slow
def test_torchrun_two_ranks_gloo_equals_single_process(tmp_path):
    """2 ranks on CPU (gloo) under the real torchrun, real backbone (random init).

    24 images in batches of 16: one process runs a batch of 16 and one of 8, and so
    must the ranks: CPU convolutions switch kernels between batches of 12 and 16
    (last bits differ, measured), so 12 rows per rank would not match."""
    folder = _noise_folder(tmp_path / "noise", per_class=(8, 8, 8))
    opts = ["extract", "--data", str(folder), "--backbone", "efficientnet_lite0",
            "--weights", "none", "--layer", "layer2", "--layer", "head", "--batch-size", "16",
            "--workers", "0", "--device", "cpu", "--no-progress"]
    _run([sys.executable, "cli.py", *opts, "--out", str(tmp_path / "single")], tmp_path, "single")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node=2"]
    proc = _run([*torchrun, "cli.py", *opts, "--out", str(tmp_path / "dist")], tmp_path, "dist")
    name = "noise_efficientnet_lite0_avg.h5"
    merged = tmp_path / "dist" / name
    assert str(merged) in proc.stdout
    assert not (tmp_path / "dist" / (name + ".shards")).exists()
    assert_same_store(merged, tmp_path / "single" / name)
    store = FeatureStore(merged)
    assert len(store) == 24 and store.taps == ["layer2", "head"]

    # A rank re-run alone, then the torchrun command again: nothing is extracted twice.
    shutil.copy(merged, tmp_path / "before.h5")
    _run([sys.executable, "cli.py", *opts, "--out", str(tmp_path / "dist"), "--shard", "1/2"],
         tmp_path, "alone")
    again = _run([*torchrun, "cli.py", *opts, "--out", str(tmp_path / "dist")], tmp_path, "again")
    assert "up to date: 24 images, no forward pass" in again.stdout
    assert_same_store(merged, tmp_path / "before.h5")


@pytest.mark.slow
def test_torchrun_failed_rank_fails_all_and_rerun_keeps_finished_shard(tmp_path):
    """Rank 1 cannot write its shard: every rank exits with an error naming it, no merge;
    the re-run extracts rank 1's shard only."""
    from pipeline.store.lock import write_lock

    folder = _noise_folder(tmp_path / "noise")
    opts = ["extract", "--data", str(folder), "--backbone", "efficientnet_lite0",
            "--weights", "none", "--layer", "layer2", "--batch-size", "4", "--workers", "0",
            "--device", "cpu", "--no-progress", "--out", str(tmp_path / "dist")]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node=2", "cli.py", *opts]
    store = tmp_path / "dist" / "noise_efficientnet_lite0_avg.h5"
    shard1 = dist.shard_store_path(store, 1, 2)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    with write_lock(shard1):   # as if another process were writing rank 1's shard
        proc = subprocess.run(torchrun, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=600)
    assert proc.returncode != 0
    assert "rank(s) 1: StoreError" in proc.stderr and "being written by" in proc.stderr, proc.stderr
    assert dist.shard_store_path(store, 0, 2).is_file() and not store.exists()
    again = _run(torchrun, tmp_path, "rerun")
    # 12 images in batches of 4: rank 0 has batches 0 and 2, rank 1 batch 1
    assert "rank-0of2.h5 is up to date (8 images)" in again.stderr   # no forward pass
    assert "extracted 4 images" in again.stdout and "rank-1of2.h5" in again.stdout  # rank 1
    assert "reused 8" in again.stdout                                         # rank 0's totals
    assert len(FeatureStore(store)) == 12
