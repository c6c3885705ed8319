"""Hostile folders, files and disks: each gives a clean message or a listed skip, never a
traceback, a hang or a crash.

Aliases (a class folder linked to another, a file reached twice), entries that
are not regular readable files (FIFOs, sockets, devices, broken links, link
loops, names that are not UTF-8), a data folder whose name is too long for a
store name, a full disk (real ENOSPC on a small tmpfs, and an injected one),
corrupt stores, and output folders that cannot be written.  Anything that
could block runs the real CLI in a subprocess with a timeout.  Everything runs
on the toy backbone of conftest.
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import IS_ROOT, assert_clean, make_folder, run_cli
from PIL import Image

from pipeline.errors import DataError
from pipeline.extraction.job import ExtractConfig, run_extract
from pipeline.store.hdf5 import FeatureStore

ROOT = Path(__file__).resolve().parents[1]
N_GOOD = 18
STORE = "photos_toy_avg.h5"


@pytest.fixture
def folder(tmp_path):
    return make_folder(tmp_path / "photos")


def _extract(folder, out, **kw):
    return run_extract(ExtractConfig(
        data=str(folder), backbone="toy", layers=("layer1", "layer2"), out=str(out),
        progress=False, batch_size=4, workers=0, **kw))




def _toy_args(folder, out, *extra):
    return ("extract", "--data", folder, "--backbone", "toy", "--layer", "layer1",
            "--layer", "layer2", "--batch-size", 4, "--workers", 0, "--out", out,
            "--no-progress", *extra)


def skipped_of(summary) -> dict:
    return dict(summary.skipped)


# ------------------------------------------------------------ 1. aliases


@pytest.mark.parametrize("target", ["red", "."])
def test_class_folder_linked_inside_the_data_folder_is_refused(folder, tmp_path, target):
    """A class folder that is a link to another class (or to the data folder itself)
    would give the same images two labels: refused, naming both and the fix."""
    os.symlink(target, folder / "rouge")
    with pytest.raises(DataError) as err:
        _extract(folder, tmp_path / "f")
    msg = str(err.value)
    assert "'rouge'" in msg and "link" in msg and "remove" in msg
    assert (str(folder / "red") if target == "red" else str(folder)) in msg
    assert not (tmp_path / "f" / STORE).exists()


def test_file_reached_twice_is_kept_once_and_the_copy_listed(folder, tmp_path):
    os.link(folder / "blue" / "img_00.png", folder / "red" / "dup.png")          # hard link
    os.symlink("../red/img_01.png", folder / "blue" / "alias.png")               # file link
    os.symlink("../green", folder / "blue" / "more")                             # folder link
    summary = _extract(folder, tmp_path / "f")
    store = FeatureStore(summary.path)
    assert len(store) == N_GOOD
    skipped = skipped_of(summary)
    assert "same file as 'blue/img_00.png'" in skipped["red/dup.png"]
    # The link is the copy, though it sorts first: the file stays in its own class.
    assert "same file as 'red/img_01.png'" in skipped["blue/alias.png"]
    assert "red/img_01.png" in store.paths
    assert store.labels[store.paths.index("red/img_01.png")] == store.classes.index("red")
    assert "link to 'green/'" in skipped["blue/more/"]
    assert not any(p.startswith("blue/more/") for p in store.paths)
    assert _extract(folder, tmp_path / "f").up_to_date


def test_class_folder_linked_outside_the_data_folder_still_works(folder, tmp_path):
    outside = make_folder(tmp_path / "elsewhere", per_class=3, colours={"violet": (90, 0, 200)})
    os.symlink(outside / "violet", folder / "violet")
    os.symlink(outside / "violet", folder / "red" / "also-violet")   # reached twice: listed
    summary = _extract(folder, tmp_path / "f")
    store = FeatureStore(summary.path)
    assert store.classes == ["blue", "green", "red", "violet"]
    assert len(store) == N_GOOD + 3 and "violet/img_00.png" in store.paths
    assert "already scanned" in skipped_of(summary)["red/also-violet/"]


# ------------------------------------------------------------ 2. not regular files


def test_fifo_socket_device_and_broken_links_are_listed_and_never_opened(folder, tmp_path,
                                                                        monkeypatch):
    red = folder / "red"
    os.mkfifo(red / "pipe.jpg")                            # opening it would block forever
    monkeypatch.chdir(red)                                 # short socket path (108-byte limit)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind("sock.png")
    os.symlink("/dev/zero", red / "zero.jpg")              # a device: endless bytes
    os.symlink("nowhere.jpg", red / "gone.jpg")            # broken link
    os.symlink("loop2.jpg", red / "loop1.jpg")             # link loop
    os.symlink("loop1.jpg", red / "loop2.jpg")
    (red / "folder.jpg").mkdir()                           # a folder named like an image
    try:
        res = run_cli(*_toy_args(folder, tmp_path / "f"), cwd=tmp_path, timeout=150)
    finally:
        sock.close()
    out = res.stdout + res.stderr
    assert res.returncode == 0 and "Traceback" not in out, out
    summary = FeatureStore(tmp_path / "f" / STORE)
    skipped = dict(summary.skipped)
    assert len(summary) == N_GOOD
    assert "FIFO" in skipped["red/pipe.jpg"] and "not a regular file" in skipped["red/pipe.jpg"]
    assert "socket" in skipped["red/sock.png"]
    assert "device" in skipped["red/zero.jpg"]
    assert "broken link" in skipped["red/gone.jpg"] and "nowhere.jpg" in skipped["red/gone.jpg"]
    assert "loop" in skipped["red/loop1.jpg"] and "loop" in skipped["red/loop2.jpg"]
    for rel in ("red/pipe.jpg", "red/sock.png", "red/zero.jpg", "red/gone.jpg"):
        assert f"  {rel}: " in res.stdout             # listed like the other skipped files


@pytest.mark.skipif(IS_ROOT, reason="running as root: chmod 000 does not stop root reading "
                    "the file, and user nobody cannot run this virtualenv's python (it links "
                    "into /root), so there is no unreadable file to test with")
def test_unreadable_file_is_listed(folder, tmp_path):
    secret = folder / "red" / "secret.png"
    secret.write_bytes((folder / "red" / "img_00.png").read_bytes() + b"x")
    secret.chmod(0)
    summary = _extract(folder, tmp_path / "f")
    assert "cannot read file" in skipped_of(summary)["red/secret.png"]
    assert "Permission denied" in skipped_of(summary)["red/secret.png"]
    assert len(FeatureStore(summary.path)) == N_GOOD


def test_names_that_are_not_utf8_are_listed_not_a_crash(folder, tmp_path):
    red = os.fsencode(folder / "red")
    Image.new("RGB", (24, 20), (240, 0, 0)).save(red + b"/caf\xe9.png", format="PNG")
    with open(red + b"/notes-\xff.txt", "wb") as fh:
        fh.write(b"x")
    os.mkdir(red + b"/sub-\xe9")
    Image.new("RGB", (24, 20), (240, 0, 0)).save(red + b"/sub-\xe9/a.png", format="PNG")
    summary = _extract(folder, tmp_path / "f")
    skipped = skipped_of(summary)
    assert len(FeatureStore(summary.path)) == N_GOOD
    assert "not valid UTF-8" in skipped["red/caf\\xe9.png"]
    assert "rename" in skipped["red/caf\\xe9.png"]
    assert "red/notes-\\xff.txt" in skipped
    assert "not valid UTF-8" in skipped["red/sub-\\xe9/"]
    assert _extract(folder, tmp_path / "f").up_to_date


def test_class_folder_name_that_is_not_utf8_is_refused(folder, tmp_path):
    os.rename(folder / "red", os.fsencode(folder) + b"/rouge-\xe9")
    with pytest.raises(DataError) as err:
        _extract(folder, tmp_path / "f")
    assert "rouge-\\xe9" in str(err.value) and "UTF-8" in str(err.value)
    assert "rename" in str(err.value)


# ------------------------------------------------------------ 3. long names


def test_data_folder_name_too_long_for_a_store_name(run, tmp_path):
    folder = make_folder(tmp_path / ("p" * 250), per_class=3)
    res = run(*_toy_args(folder, tmp_path / "f"))
    out = assert_clean(res, "too long", "--out", "p" * 20)
    assert ".h5" in out


# ------------------------------------------------------------ 4. full disk


def _same_store(a: Path, b: Path):
    fa, fb = FeatureStore(a), FeatureStore(b)
    assert fa.fingerprint == fb.fingerprint and fa.paths == fb.paths
    assert list(fa.split_codes) == list(fb.split_codes)
    np.testing.assert_array_equal(fa.folds, fb.folds)
    for tap in fa.taps:
        np.testing.assert_array_equal(fa.X(tap), fb.X(tap))
    assert fa.skipped == fb.skipped


def test_disk_full_while_journalling_keeps_the_old_store_and_resumes(folder, tmp_path, run,
                                                                     monkeypatch):
    from pipeline.store import journal as journal_mod

    out, ref = tmp_path / "f", tmp_path / "uninterrupted"
    assert run(*_toy_args(folder, out)).exit_code == 0
    assert run(*_toy_args(folder, ref)).exit_code == 0
    old = (out / STORE).read_bytes()
    for name in ("blue", "green", "red"):       # 9 new images: 3 batches of 4, 4, 1
        for i in range(3):
            Image.new("RGB", (24, 20), (10 * i, 50, 90)).save(folder / name / f"new_{i}.png")
    real, calls = journal_mod.atomic_write, []

    def full_after_one(path, *a, **kw):
        if path.name.startswith("batch-"):
            calls.append(path)
            if len(calls) > 1:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, *a, **kw)

    monkeypatch.setattr(journal_mod, "atomic_write", full_after_one)
    res = run(*_toy_args(folder, out))
    msg = assert_clean(res, "No space left", str(out), "run the same command again")
    assert "MB" in msg or "kB" in msg
    assert (out / STORE).read_bytes() == old                     # the old store is intact
    assert len(list((out / (STORE + ".partial")).glob("batch-*.npz"))) == 1
    monkeypatch.setattr(journal_mod, "atomic_write", real)
    res = run(*_toy_args(folder, out))
    assert res.exit_code == 0 and "resumed 4" in res.output, res.output
    assert run(*_toy_args(folder, ref)).exit_code == 0      # the same, never interrupted
    _same_store(out / STORE, ref / STORE)


def test_disk_full_on_a_real_small_file_system_resumes(folder, tmp_path, tmpfs):
    """A real ENOSPC (tmpfs): no traceback, no segfault, and the next run resumes."""
    disk = tmpfs(tmp_path / "disk", "size=16k")
    args = _toy_args(folder, disk / "f")
    res = run_cli(*args, cwd=tmp_path)
    assert res.returncode != -11 and res.returncode != 139, res.stderr
    msg = assert_clean(res, "No space left", str(disk))
    assert "run the same command again" in msg
    tmpfs(disk, "size=64k", remount=True)    # room for the journal, not for the store
    res = run_cli(*args, cwd=tmp_path)
    assert res.returncode not in (-11, 139), res.stderr
    msg = assert_clean(res, "not enough free space", str(disk / "f"), "needs about")
    assert (disk / "f" / (STORE + ".partial")).is_dir()
    tmpfs(disk, "size=8m", remount=True)
    res = run_cli(*args, cwd=tmp_path)
    assert res.returncode == 0 and "resumed" in res.stdout, res.stdout + res.stderr
    assert "resumed 0" not in res.stdout
    _same_store(disk / "f" / STORE, _extract(folder, tmp_path / "uninterrupted").path)


# ------------------------------------------------------------ 5. corrupt stores


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _zero_header(path):
    with open(path, "r+b") as fh:
        fh.write(b"\0" * 512)


def _drop_dataset(path):
    with h5py.File(path, "a") as f:
        del f["sha256"]


CORRUPTIONS = {"truncated": _truncate, "header zeroed": _zero_header,
               "dataset missing": _drop_dataset}


@pytest.mark.parametrize("corrupt", CORRUPTIONS)
def test_corrupt_store_is_named_and_overwrite_moves_it_aside(folder, tmp_path, run, corrupt,
                                                             caplog):
    out = tmp_path / "f"
    assert run(*_toy_args(folder, out)).exit_code == 0
    CORRUPTIONS[corrupt](out / STORE)
    bad = (out / STORE).read_bytes()
    msg = assert_clean(run(*_toy_args(folder, out)), str(out / STORE), "corrupt",
                       "--overwrite")
    assert "Error:" in msg
    for cmd in (("fit", "--features", out / STORE, "--layer", "layer1"),
                ("baseline", "--kind", "pixels", "--features", out / STORE)):
        assert_clean(run(*cmd), str(out / STORE), "corrupt", "extract")
    res = run(*_toy_args(folder, out, "--overwrite"))
    assert res.exit_code == 0, res.output
    aside = list(out.glob(STORE + ".corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == bad
    # Said in the log (on stderr under the CLI; pytest captures the log here).
    assert "moved it aside" in caplog.text and aside[0].name in caplog.text
    assert len(FeatureStore(out / STORE)) == N_GOOD


def test_report_over_a_run_whose_store_became_corrupt(folder, tmp_path, run, caplog):
    out = tmp_path / "f"
    assert run(*_toy_args(folder, out)).exit_code == 0
    assert run("fit", "--features", out / STORE, "--layer", "layer1", "--runs",
               tmp_path / "runs", "--protocol", "holdout").exit_code == 0
    _drop_dataset(out / STORE)
    res = run("report", "--runs", tmp_path / "runs", "--out", tmp_path / "r.html")
    assert res.exit_code == 0 and (tmp_path / "r.html").is_file(), res.output
    assert "corrupt or incomplete" in caplog.text and "sha256" in caplog.text


# ------------------------------------------------------------ 6. outputs that cannot be written


def test_out_is_an_existing_regular_file(folder, tmp_path, run):
    (tmp_path / "notes").write_text("mine")
    out = assert_clean(run(*_toy_args(folder, tmp_path / "notes")), str(tmp_path / "notes"),
                       "not a folder", "--out")
    assert "Error:" in out and (tmp_path / "notes").read_text() == "mine"


def test_read_only_out_folder(folder, tmp_path, run, tmpfs):
    if IS_ROOT:      # chmod does not stop root: a read-only mount does
        ro = tmpfs(tmp_path / "ro", "ro,size=64k")
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
    res = run(*_toy_args(folder, ro / "features"))
    assert_clean(res, str(ro), "cannot write", "--out")
