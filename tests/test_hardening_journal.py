"""Hardening, round two (issue 24): the journal of ``extract`` and the weights of ``finetune``.

8. ``extract --device cuda`` on a machine without CUDA is refused before the journal exists,
   and a journal holding no batch never blocks a run with another configuration.

Everything runs on the toy backbone of conftest (fine-tuning: a small resnet18 at random
initialisation on 32-px inputs), with real files, real processes and a real small tmpfs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import assert_clean, make_folder

from pipeline.configs import ExtractConfig
from pipeline.extraction.job import run_extract
from pipeline.store.hdf5 import FeatureStore

STORE = "photos_toy_avg.h5"


def _toy(folder, out, *extra):
    return ("extract", "--data", folder, "--backbone", "toy", "--layer", "layer1",
            "--layer", "layer2", "--batch-size", 4, "--workers", 0, "--out", out,
            "--no-progress", *extra)


def _extract(folder, out, **kw):
    return run_extract(ExtractConfig(data=str(folder), backbone="toy", layers=("layer1", "layer2"),
                                     out=str(out), progress=False, batch_size=4, workers=0, **kw))


def _same_store(a: Path, b: Path):
    fa, fb = FeatureStore(a), FeatureStore(b)
    assert fa.fingerprint == fb.fingerprint and fa.paths == fb.paths
    assert list(fa.split_codes) == list(fb.split_codes)
    for tap in fa.taps:
        np.testing.assert_array_equal(fa.X(tap), fb.X(tap))
    assert fa.skipped == fb.skipped


# ------------------------------------------------------------ 8. a device there is not


def test_a_missing_cuda_device_leaves_no_journal_and_an_empty_one_never_blocks(tmp_path, run):
    """``extract --device cuda`` (no CUDA) left ``<store>.partial/config.json``, and the
    corrected run was refused: "holds an interrupted extraction with a different
    configuration; rerun that configuration", which cannot run."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    folder = make_folder(tmp_path / "photos", per_class=4)
    out = tmp_path / "f"
    journal = out / (STORE + ".partial")
    assert_clean(run(*_toy(folder, out, "--device", "cuda")), "--device cuda", "--device cpu")
    assert not journal.exists(), list(journal.iterdir())
    # a journal of another configuration holding no batch (a run stopped before its first
    # batch) is discarded: nothing was extracted under it
    journal.mkdir(parents=True)
    (journal / "config.json").write_text('{"config_key": "another configuration"}')
    res = run(*_toy(folder, out))
    assert res.exit_code == 0, res.output
    assert not journal.exists()
    _same_store(out / STORE, _extract(folder, tmp_path / "uninterrupted").path)
