"""Hardening, round two (issue 24), continued: what a hostile tester found in ``predict``
and the progress bar, each a regression test on real files and processes.

18. ``predict FOLDER`` takes the formats ``extract`` takes (gif, tiff, bmp, webp, ...)
    and lists every file it leaves out with its reason: a ``.heic`` with the fix;
progress. the progress bar's final line is printed once, in a pipe and in a terminal.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import numpy as np
import pytest
from conftest import TESTS, make_folder, run_cli
from PIL import Image

from pipeline.runs.records import load_records

# ------------------------------------------------------------ 18. predict's file list


def _image_zoo(folder: Path) -> dict:
    """One image per format Pillow decodes, a HEIC Pillow cannot, a text file and a
    hidden file, in ``folder``; ``{name: colour or None}``."""
    folder.mkdir(parents=True, exist_ok=True)
    red = np.full((20, 24, 3), (240, 0, 0), np.uint8)
    zoo = {}
    for name in ("a.gif", "b.tiff", "c.TIF", "d.bmp", "e.webp", "f.png"):
        Image.fromarray(red).save(folder / name, lossless=True)   # lossless: webp's option
        zoo[name] = "red"
    # the start of a real HEIC file: an ISO-BMFF 'ftyp' box of brand 'heic'
    (folder / "g.heic").write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic"
                                    + bytes(64))
    (folder / "h.txt").write_text("not an image\n")
    (folder / ".DS_Store").write_bytes(b"\x00\x01")
    return {**zoo, "g.heic": None, "h.txt": None}


def test_extract_takes_gif_and_tiff_and_names_the_heic_fix(tmp_path):
    """``extract`` and ``predict`` take one set of formats; a HEIC says how to convert it."""
    from pipeline.configs import ExtractConfig
    from pipeline.extraction.job import run_extract
    from pipeline.store.hdf5 import FeatureStore

    folder = make_folder(tmp_path / "photos", per_class=4)
    _image_zoo(folder / "red")
    summary = run_extract(ExtractConfig(data=str(folder), backbone="toy", layers=("layer1",),
                                        out=str(tmp_path / "f"), progress=False, workers=0))
    store = FeatureStore(summary.path)
    for name in ("a.gif", "b.tiff", "c.TIF", "d.bmp", "e.webp"):
        row = store.paths.index(f"red/{name}")
        assert np.allclose(store.X("layer1")[row], [240, 0], atol=1), name
    skipped = dict(summary.skipped)
    assert "HEIC" in skipped["red/g.heic"] and "convert it" in skipped["red/g.heic"]
    assert "not an image file name" in skipped["red/h.txt"]


def test_predict_folder_lists_every_file_it_leaves_out_and_takes_gif_and_tiff(tmp_path, run):
    """``predict FOLDER`` left .gif/.tiff/.heic out silently, though ``predict x.tiff``
    worked."""
    from pipeline.workflows.predict import run_predict

    folder = make_folder(tmp_path / "photos", per_class=4)
    assert run("extract", "--data", folder, "--backbone", "toy", "--layer", "layer2",
               "--workers", 0, "--out", tmp_path / "f", "--no-progress").exit_code == 0
    assert run("fit", "--features", tmp_path / "f", "--layer", "layer2", "--protocol",
               "holdout", "--runs", tmp_path / "runs").exit_code == 0
    run_id = load_records(tmp_path / "runs")[0].run_id
    zoo = _image_zoo(tmp_path / "new")
    res = run("predict", "--model", run_id, tmp_path / "new", "--runs", tmp_path / "runs")
    assert res.exit_code == 0, res.output
    rows = {Path(ln.split()[0]).name: ln for ln in res.output.splitlines()[1:]
            if ln.strip()}
    assert sorted(rows) == sorted(zoo), res.output            # the hidden file left out
    for name, colour in zoo.items():
        if colour:
            assert rows[name].split()[1] == colour, rows[name]
    assert "SKIPPED" in rows["g.heic"] and "HEIC" in rows["g.heic"] \
        and "convert it to JPEG" in rows["g.heic"], rows["g.heic"]
    assert "SKIPPED" in rows["h.txt"] and "not an image file name" in rows["h.txt"]
    # the Python API returns the same list, each file left out with its reason
    preds = {Path(p.path).name: p for p in run_predict(run_id, [tmp_path / "new"],
                                                       tmp_path / "runs")}
    assert preds["b.tiff"].label == "red" and "HEIC" in preds["g.heic"].error
    # a folder with nothing to predict names what it left out
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "x.heic").write_bytes(b"\x00")
    res = run("predict", "--model", run_id, tmp_path / "none", "--runs", tmp_path / "runs")
    assert res.exit_code == 2 and "x.heic" in res.output and "HEIC" in res.output, res.output


# ------------------------------------------------------------ the progress bar


def _extract_cmd(tmp_path):
    folder = make_folder(tmp_path / "img", per_class=5)
    return ("extract", "--data", folder, "--backbone", "toy", "--layer", "layer1",
            "--workers", 0, "--out", tmp_path / "f")


def _in_a_terminal(*args) -> str:
    """stderr of the CLI run with a pseudo-terminal as its stderr, as the terminal got it."""
    code = (f"import sys; sys.path[:0] = [{str(TESTS)!r}, {str(TESTS.parent)!r}]; "
            "import conftest, cli; cli.main()")
    leader, follower = pty.openpty()
    # 24 rows of 120 columns: a terminal of size 0 gets an empty bar
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    try:
        proc = subprocess.Popen([sys.executable, "-c", code, *map(str, args)],
                                stdout=subprocess.DEVNULL, stderr=follower)
    finally:
        os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:                       # EIO: the process closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(timeout=120) == 0
    return b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.parametrize("where", ["pipe", "terminal"])
def test_the_progress_bar_prints_its_final_line_once(tmp_path, where):
    """``extract ... 2>&1 | cat`` showed the bar's last line twice."""
    args = _extract_cmd(tmp_path)
    if where == "pipe":
        res = run_cli(*args)
        assert res.returncode == 0, res.stderr
        err = res.stderr
    else:
        err = _in_a_terminal(*args)
    # each drawing of the bar starts with a carriage return: one line per drawing
    drawings = [d for d in re.split(r"[\r\n]", err) if "extract toy" in d]
    final = [d for d in drawings if "15/15" in d]
    assert len(final) == 1, drawings
    assert "100%" in final[0]
