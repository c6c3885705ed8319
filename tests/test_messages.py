"""Inputs that used to end in a traceback or a misleading message: seeds, tiny
classes, a folder given as --features, Ctrl-C and SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import make_folder

import cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def three_per_class(tmp_path_factory):
    """Three images per class: the smallest class ``extract`` accepts."""
    root = tmp_path_factory.mktemp("three")
    folder = make_folder(root / "img", per_class=3)
    res = CliRunner().invoke(cli.cli, ["extract", "--data", str(folder), "--backbone", "toy",
                                       "--layer", "layer1", "--out", str(root / "feat"),
                                       "--no-progress"])
    assert res.exit_code == 0, res.output
    return root


@pytest.mark.parametrize("seed", ["-1", str(2**32), "99999999999999999999"])
@pytest.mark.parametrize("command", ["extract", "fit", "baseline", "finetune"])
def test_out_of_range_seeds_are_refused_by_every_command(three_per_class, command, seed):
    args = [command, "--seed", seed]
    if command == "extract":
        args += ["--data", str(three_per_class / "img"), "--backbone", "toy"]
    else:
        args += ["--features", str(three_per_class / "feat")]
    res = CliRunner().invoke(cli.cli, args)
    assert res.exit_code == 2, res.output
    assert "Invalid value for '--seed'" in res.output and "4294967295" in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)


def test_seeds_running_past_the_largest_seed_are_refused(three_per_class):
    res = CliRunner().invoke(cli.cli, ["finetune", "--features", str(three_per_class / "feat"),
                                       "--seed", str(2**32 - 1), "--seeds", "2"])
    assert res.exit_code == 2 and "goes past 4294967295" in res.output, res.output


@pytest.mark.parametrize("protocol", ["holdout", "cv"])
def test_svm_fits_classes_of_three_images(three_per_class, tmp_path, protocol):
    """The calibrated SVM's internal folds adapt to the smallest class."""
    res = CliRunner().invoke(cli.cli, ["fit", "--features", str(three_per_class / "feat"),
                                       "--layer", "layer1", "--clf", "svm", "--protocol",
                                       protocol, "--runs", str(tmp_path / "runs")])
    assert res.exit_code == 0, res.output
    assert "svm" in res.output and len(list((tmp_path / "runs").glob("*.skops"))) == 1


def test_features_may_name_the_folder_that_holds_the_store(three_per_class, tmp_path):
    res = CliRunner().invoke(cli.cli, ["fit", "--features", str(three_per_class / "feat"),
                                       "--layer", "layer1", "--protocol", "holdout",
                                       "--runs", str(tmp_path / "runs")])
    assert res.exit_code == 0, res.output
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(cli.cli, ["fit", "--features", str(tmp_path / "empty")])
    assert res.exit_code == 1
    assert "no feature store (*.h5) in" in res.output and "does not exist" not in res.output


# ------------------------------------------------------------------ signals

SLOW_COMMAND = """
import sys, time
sys.path.insert(0, {root!r})
import {module} as wf
def slow(*args, **kwargs):
    print("started", flush=True)
    time.sleep(60)
wf.{function} = slow
import cli
cli.cli([{args}])
"""


def _interrupt(tmp_path, sig, module, function, args):
    """Run a CLI command whose work blocks, deliver ``sig`` once it started, return
    ``(exit code, stderr)``.  The signal and the CLI's handling are real."""
    script = SLOW_COMMAND.format(root=str(ROOT), module=module, function=function,
                                 args=", ".join(repr(a) for a in args))
    # Ctrl-C's default action in the child whatever the suite inherited: a shell starts a
    # background job ('... &') with SIGINT ignored, and Python then keeps it ignored, so
    # the signal would never arrive (the user's own Ctrl-C reaches a foreground command)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stdout.readline().strip() == "started"
    time.sleep(0.2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    return proc.returncode, err


@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "Interrupted"),
                                             (signal.SIGTERM, 143, "Terminated (SIGTERM)")])
def test_fit_interrupted_says_what_was_kept(tmp_path, sig, code, word):
    rc, err = _interrupt(tmp_path, sig, "pipeline.workflows.fit", "run_fit",
                         ["fit", "--features", "x.h5"])
    assert rc == code, err
    assert word in err and "Traceback" not in err
    assert "batches" not in err and "unfinished one wrote nothing" in err


def test_extract_terminated_points_at_the_resume(tmp_path):
    make_folder(tmp_path / "img", per_class=3)
    rc, err = _interrupt(tmp_path, signal.SIGTERM, "pipeline.extraction.shards",
                         "launch_extract",
                         ["extract", "--data", "img"])
    assert rc == 143 and "journal" in err and "resume" in err, err
