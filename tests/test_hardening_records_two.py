"""Hardening, round two (issue 24), continued: what a hostile tester found in the
progress bar, a regression test on real files and processes.

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

import pytest
from conftest import TESTS, make_folder, run_cli

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
