"""Fault injection over every command that writes: fit, baseline, finetune, report,
predict (extract's own faults are in test_resume.py and test_hostile_inputs.py).

The contract, checked after every fault: the next run either finishes with the
result of an uninterrupted run, or fails with a message (exit 1, no
traceback); and no output completed before the fault is lost or changed.

Faults: SIGKILL at a random moment of a real process; a full disk (ENOSPC
injected where every file of this package is committed, ``fsync``, and a real
small tmpfs when running as root); an output folder that cannot be written (a
read-only tmpfs as root, chmod 555 otherwise); corrupt inputs (the store, a
record, a head, a checkpoint, the trunk cache).
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import IS_ROOT, TESTS, assert_clean, make_folder, run_cli

import cli
from pipeline.extraction.job import ExtractConfig, run_extract

FT = ["--backbone", "resnet18", "--weights", "none", "--input-size", "32", "--epochs", "3",
      "--batch-size", "8", "--views", "1", "--patience", "3", "--unfreeze", "layer4"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A toy store and one completed fit run (the output no fault may touch)."""
    root = tmp_path_factory.mktemp("faults")
    make_folder(root / "photos", per_class=8, size=(40, 36))
    run_extract(ExtractConfig(data=str(root / "photos"), backbone="toy",
                              layers=("layer1", "layer2"), out=str(root / "feat"),
                              progress=False, workers=0))
    res = CliRunner().invoke(cli.cli, ["fit", "--features", str(root / "feat"), "--layer",
                                       "layer2", "--clf", "knn", "--protocol", "holdout",
                                       "--runs", str(root / "done")])
    assert res.exit_code == 0, res.output
    return root


def commands(study: Path, work: Path) -> dict:
    """Each command's arguments, writing under ``work``."""
    store, runs = str(study / "feat"), str(work / "runs")
    return {
        "fit": ["fit", "--features", store, "--layer", "all", "--clf", "logreg",
                "--protocol", "holdout", "--runs", runs],
        "baseline": ["baseline", "--kind", "pixels", "--features", store,
                     "--protocol", "holdout", "--runs", runs],
        "finetune": ["finetune", "--features", store, *FT, "--protocol", "holdout",
                     "--runs", runs, "--checkpoint-dir", str(work / "ck")],
        "report": ["report", "--runs", runs, "--out", str(work / "report.html")],
        "predict": ["predict", "--model", newest_record(work / "runs"),
                    "--runs", runs, "--out", str(work / "pred.csv"), str(study / "photos")],
    }


def newest_record(runs: Path) -> str:
    records = sorted(runs.glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
    return str(records[-1]) if records else "none"


def prepare(study: Path, work: Path, command: str):
    """``work`` holding the completed runs (and, for report/predict, a fit run to read)."""
    shutil.copytree(study / "done", work / "runs")
    if command in ("report", "predict"):
        res = CliRunner().invoke(cli.cli, commands(study, work)["fit"])
        assert res.exit_code == 0, res.output
    return {p.name: p.read_bytes() for p in (work / "runs").iterdir()}


def outcome(work: Path, command: str, before: dict):
    """What the command produced, comparable between two folders."""
    if command == "report":
        html = (work / "report.html").read_text()
        return [html.count('<section id="'), "<html" in html, html.rstrip().endswith("</html>")]
    if command == "predict":
        return (work / "pred.csv").read_text().splitlines()[1:]
    new = sorted((json.loads(p.read_text()) for p in (work / "runs").glob("*.json")
                  if p.name not in before), key=lambda r: r["created"])
    latest = {(r["method"], r.get("layer"), r.get("seed")): r for r in new}
    return sorted((key, r["predictions"]["y_pred"], r["predictions"]["proba"])
                  for key, r in latest.items())


def assert_kept(work: Path, before: dict):
    """Every file completed before the fault is still there, byte for byte."""
    for name, data in before.items():
        assert (work / "runs" / name).read_bytes() == data, name


def cli_command(args):
    code = (f"import sys; sys.path[:0] = [{str(TESTS)!r}, {str(TESTS.parent)!r}]; "
            "import conftest, cli; cli.main()")
    return [sys.executable, "-c", code, *[str(a) for a in args]]


# ------------------------------------------------------------------ SIGKILL


@pytest.mark.parametrize("command", ["fit", "finetune", "report"])   # baseline: save_run as fit
def test_killed_at_a_random_moment_the_next_run_gives_the_uninterrupted_result(
        study, tmp_path, command):
    ref = tmp_path / "ref"
    before = prepare(study, ref, command)
    t0 = time.monotonic()
    res = subprocess.run(cli_command(commands(study, ref)[command]), capture_output=True,
                         text=True, timeout=300)
    seconds = time.monotonic() - t0
    assert res.returncode == 0, res.stderr
    expected = outcome(ref, command, before)

    work = tmp_path / "work"
    before = prepare(study, work, command)
    args = commands(study, work)[command]
    if command == "report":
        (work / "report.html").write_text("<html>the previous report</html>")
    moment = random.Random(command).uniform(0.35, 0.95) * seconds
    proc = subprocess.Popen(cli_command(args), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    time.sleep(moment)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert_kept(work, before)
    if command == "report":            # the old page or the new one, never half of either
        html = (work / "report.html").read_text()
        assert html == "<html>the previous report</html>" or html.rstrip().endswith("</html>")
        args = [*args, "--overwrite"]
    if command == "finetune" and list((work / "ck").rglob("last.pt")):
        args = [*args, "--resume"]
    res = subprocess.run(cli_command(args), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"killed after {moment:.1f} s of {seconds:.1f}: {res.stderr}"
    assert outcome(work, command, before) == expected
    assert_kept(work, before)


# ------------------------------------------------------------------ full disk


@pytest.mark.parametrize("command", ["fit", "baseline", "finetune", "report", "predict"])
def test_full_disk_gives_a_message_and_the_next_run_finishes(study, tmp_path, monkeypatch,
                                                             command):
    """ENOSPC where every file is committed (its fsync): as a full disk shows on a
    write-back file system.  Freeing the space (lifting the fault) and re-running
    finishes with the result of a run that never met the fault."""
    ref = tmp_path / "ref"
    before = prepare(study, ref, command)
    res = CliRunner().invoke(cli.cli, commands(study, ref)[command])
    assert res.exit_code == 0, res.output
    expected = outcome(ref, command, before)

    work = tmp_path / "work"
    before = prepare(study, work, command)
    args = commands(study, work)[command]

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as m:
        m.setattr(os, "fsync", full)
        res = CliRunner().invoke(cli.cli, args)
    assert_clean(res, "No space left on device", str(work))
    assert_kept(work, before)
    assert not [p for p in work.rglob("*") if ".tmp" in p.name], "a temporary file was left"
    res = CliRunner().invoke(cli.cli, args)
    assert res.exit_code == 0, res.output
    assert outcome(work, command, before) == expected


def test_a_real_full_disk_under_the_runs_folder(study, tmp_path, tmpfs):
    disk = tmpfs(tmp_path / "disk", "size=1m")
    runs = disk / "runs"
    shutil.copytree(study / "done", runs)
    before = {p.name: p.read_bytes() for p in runs.iterdir()}
    (disk / "ballast").write_bytes(b"\0" * (shutil.disk_usage(disk).free - 4096))
    res = run_cli("fit", "--features", study / "feat", "--layer", "all", "--clf", "logreg",
                  "--protocol", "holdout", "--runs", runs)
    assert_clean(res, "No space left on device", "--runs")
    assert all((runs / n).read_bytes() == b for n, b in before.items())
    (disk / "ballast").unlink()
    tmpfs(disk, "size=8m", remount=True)
    res = run_cli("fit", "--features", study / "feat", "--layer", "all", "--clf", "logreg",
                  "--protocol", "holdout", "--runs", runs)
    assert res.returncode == 0, res.stderr


# ------------------------------------------------------------------ read-only outputs


@pytest.fixture
def read_only(tmp_path, tmpfs):
    """``read_only(folder)`` makes an existing folder refuse writes (as root: a read-only
    tmpfs mounted over a copy of it; otherwise chmod 555)."""
    made = []

    def make(folder: Path):
        if IS_ROOT:
            keep = tmp_path / f"{folder.name}-copy"
            shutil.copytree(folder, keep)
            tmpfs(folder, "size=8m")
            shutil.copytree(keep, folder, dirs_exist_ok=True)
            tmpfs(folder, "ro", remount=True)
        else:
            folder.chmod(0o555)
            made.append(folder)
        return folder

    yield make
    for folder in made:
        folder.chmod(0o755)


@pytest.mark.parametrize("command", ["fit", "baseline", "finetune", "report", "predict"])
def test_read_only_output_folder_gives_a_message(study, tmp_path, read_only, command):
    work = tmp_path / "work"
    before = prepare(study, work, command)
    args = commands(study, work)[command]
    if command in ("report", "predict"):
        target = work / "out"
        target.mkdir()
        args[args.index("--out") + 1] = str(target / Path(args[args.index("--out") + 1]).name)
    else:
        target = work / "runs"
    read_only(target)
    res = run_cli(*args)
    out = assert_clean(res, str(target))
    assert "read-only" in out.lower() or "permission denied" in out.lower()
    assert_kept(work, before)


# ------------------------------------------------------------------ corrupt inputs


def _damage(path: Path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


@pytest.mark.parametrize("command, victim", [
    ("fit", "store"), ("baseline", "store"), ("finetune", "store"), ("report", "record"),
    ("predict", "record"), ("predict", "head"), ("finetune", "checkpoint")])
def test_corrupt_inputs_give_a_message_naming_the_file(study, tmp_path, command, victim):
    work = tmp_path / "work"                    # a private copy of the store to damage
    shutil.copytree(study / "feat", work / "feat")
    (work / "photos").symlink_to(study / "photos")
    (work / "done").symlink_to(study / "done")
    prepare(work, work, command)
    args = commands(work, work)[command]
    if victim == "store":
        target = next((work / "feat").glob("*.h5"))
    elif victim == "record":
        target = Path(newest_record(work / "runs"))
    elif victim == "head":
        target = Path(newest_record(work / "runs")).with_suffix(".skops")
    else:                                                   # a fine-tuning run to resume
        res = CliRunner().invoke(cli.cli, args)
        assert res.exit_code == 0, res.output
        target = next((work / "ck").rglob("last.pt"))
        args = [*args, "--resume"]
    _damage(target)
    res = run_cli(*args)
    if command == "report":        # one bad record: skipped with a warning, the page is made
        assert res.returncode == 0 and target.name in res.stderr, res.stderr
        return
    assert_clean(res, target.name)
