"""Crash safety of ``python cli.py extract``, with real processes.

A run killed with SIGKILL in the middle resumes from its journal when the
same command is run again, and its final store equals, bit for bit, the store
of a run that was never interrupted (eager runtime, same batch size).  Two
runs started together on the same output: one extracts, the other exits at
once with a message naming the first, and the store is intact.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline.data.manifest import bundled_data_root

ROOT = Path(__file__).resolve().parents[1]
STORE = "photos_efficientnet_lite0_avg.h5"
#: Datasets that must be equal bit for bit (the taps are compared too).
DATASETS = ("paths", "labels", "split", "classes", "sha256", "size", "mtime_ns",
            "skipped/paths", "skipped/sha256", "skipped/reasons")
CONTENT_ATTRS = ("config", "config_key", "fingerprint", "taps", "n_images", "n_skipped",
                 "runtime", "precision", "dtype")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """40 real photos (8 per class) copied from the bundled flowers."""
    root = tmp_path_factory.mktemp("resume") / "photos"
    src = bundled_data_root()
    for cls in sorted(p.name for p in src.iterdir() if p.is_dir()):
        (root / cls).mkdir(parents=True)
        for f in sorted((src / cls).glob("*.jpg"))[:8]:
            shutil.copy2(f, root / cls / f.name)
    return root


def _command(photos, out):
    return [sys.executable, "cli.py", "extract", "--data", str(photos), "--out", str(out),
            "--runtime", "eager", "--device", "cpu", "--batch-size", "2", "--no-progress"]


def _start(photos, out):
    return subprocess.Popen(_command(photos, out), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))


def _finish(proc, timeout=600):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def reference(photos, tmp_path_factory):
    """The store of an uninterrupted run."""
    out = tmp_path_factory.mktemp("reference")
    code, stdout, stderr = _finish(_start(photos, out))
    assert code == 0, stdout + stderr
    return out / STORE


def assert_same_store(a: Path, b: Path):
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        for name in DATASETS:
            np.testing.assert_array_equal(fa[name][()], fb[name][()], err_msg=name)
        assert sorted(fa["taps"]) == sorted(fb["taps"]) == ["layer2", "layer3", "layer4"]
        for tap in fa["taps"]:
            x, y = fa[f"taps/{tap}"][()], fb[f"taps/{tap}"][()]
            assert x.dtype == y.dtype and x.shape == y.shape == (40, x.shape[1])
            assert x.tobytes() == y.tobytes(), f"tap {tap} differs"
        for key in CONTENT_ATTRS:
            assert fa.attrs[key] == fb.attrs[key], key


def _kill_group(proc):
    """SIGKILL whatever is left of the process group (DataLoader workers)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def test_sigkill_mid_run_then_same_command_resumes_to_the_same_store(photos, reference,
                                                                     tmp_path):
    out = tmp_path / "out"
    journal = out / (STORE + ".partial")
    proc = _start(photos, out)
    try:
        deadline = time.monotonic() + 300
        while len(list(journal.glob("batch-*.npz"))) < 3:
            assert proc.poll() is None, "extract ended before it could be killed: " + \
                proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "no journal batches after 300 s"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)  # kill -9, in the middle of the run
        proc.wait(timeout=60)
    finally:
        _kill_group(proc)
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    done = len(list(journal.glob("batch-*.npz")))
    assert not (out / STORE).exists()          # no half-written store was left behind
    assert 3 <= done < 20                      # killed mid-run: 20 batches of 2 in all

    code, stdout, stderr = _finish(_start(photos, out))
    assert code == 0, stdout + stderr
    m = re.search(r"extracted (\d+) images .* reused (\d+), resumed (\d+)", stdout)
    assert m, stdout
    extracted, reused, resumed = map(int, m.groups())
    assert resumed >= 2 * done and extracted == 40 - resumed and reused == 0
    assert not journal.exists()                # the journal goes once the store is written
    assert_same_store(out / STORE, reference)


def test_two_runs_on_one_output_one_waits_out_with_a_clear_message(photos, reference,
                                                                   tmp_path):
    """The second run starts while the first holds the store (paused with SIGSTOP once its
    journal has a batch, so the overlap does not depend on how busy the machine is)."""
    out = tmp_path / "out"
    journal = out / (STORE + ".partial")
    first = _start(photos, out)
    procs = [first]
    try:
        deadline = time.monotonic() + 300
        while not list(journal.glob("batch-*.npz")):
            assert first.poll() is None, "extract ended before the second could start: " + \
                first.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "no journal batch after 300 s"
            time.sleep(0.01)
        os.killpg(first.pid, signal.SIGSTOP)      # holds its lock, does nothing more
        procs.append(_start(photos, out))
        second = _finish(procs[1])
        os.killpg(first.pid, signal.SIGCONT)
        results = [_finish(first), second]
    finally:
        for p in procs:
            _kill_group(p)
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 1], results
    winner = next(p for p, (code, _, _) in zip(procs, results) if code == 0)
    _, _, message = next(r for r in results if r[0] == 1)
    assert f"is being written by pid {winner.pid}" in message
    assert "Traceback" not in message
    assert_same_store(out / STORE, reference)
