"""Hardening, round two (issue 24), continued: what a hostile tester found in run records,
``predict`` and the progress bar, each a regression test on real files and processes.

9. a run record with a string where a number belongs, or ``classes`` shorter than its
   labels, is skipped with a warning naming the file and why; the report is written from
   the others (it was a traceback, and no report);
10. a record whose scores are nan, inf, 1e308 or negative (or any other hostile value: a
    string, a list, an object, a boolean, a huge or negative count, a length that does
    not match the classes) is refused on load, naming the file and the field, never
    ranked ("Best strategy ... accuracy nan%"); a record without ``classes`` is read, its
    classes named by its per-class scores;
18. ``predict FOLDER`` takes the formats ``extract`` takes (gif, tiff, bmp, webp, ...)
    and lists every file it leaves out with its reason: a ``.heic`` with the fix;
progress. the progress bar's final line is printed once, in a pipe and in a terminal.

Records are built with :func:`pipeline.runs.records.new_record` on a toy store of
flat-colour images (conftest's toy backbone), so a report takes about a second.
"""

from __future__ import annotations

import copy
import fcntl
import json
import logging
import math
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
from report_helpers import history, make_store

from pipeline.runs.records import RunInfo, load_records, new_record, save_record

RECORDS = TESTS / "data" / "records"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A toy store: three classes of 17 flat-colour images (9 test images)."""
    root = tmp_path_factory.mktemp("records_two")
    return make_store(make_folder(root / "img", per_class=17), root / "f")


def frozen(store, layer: str, right: float, **extra):
    """A run record on ``store``'s split that gets the first ``right`` fraction of the
    validation and test images right (the rest: the next class); ``extra``: more
    :class:`RunInfo`."""
    k = len(store.classes)

    def answers(y):
        pred = y.copy()
        n_wrong = len(y) - int(round(right * len(y)))
        if n_wrong:
            pred[-n_wrong:] = (pred[-n_wrong:] + 1) % k
        return pred

    pred = answers(store.y("test"))
    run = RunInfo(kind="frozen", method="logreg", label=f"logreg on {layer}", layer=layer,
                  hyperparameters={"C": 1.0}, **extra)
    return new_record(run, store, answers(store.y("val")), pred,
                      np.eye(k)[pred] * 0.9 + 0.1 / k)


def good_runs(store, runs: Path) -> list[str]:
    """Two sound records in ``runs`` (layer2 the better); their run ids."""
    return [save_record(frozen(store, layer, right), runs).stem
            for layer, right in (("layer1", 0.6), ("layer2", 0.8))]


def write_variant(runs: Path, name: str, data: dict, path: str, value) -> Path:
    """``data`` with the field at dotted ``path`` set to ``value`` (``DELETE``: removed),
    written as ``runs/<name>.json`` under its own run id; returns the file."""
    data = copy.deepcopy(data)
    data["run_id"] = name
    *parents, last = [int(k) if k.isdigit() else k for k in path.split(".")]
    node = data
    for key in parents:
        node = node[key]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    out = runs / f"{name}.json"
    out.write_text(json.dumps(data))          # nan and inf as JSON's NaN and Infinity
    return out


DELETE = object()


def warnings_of(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


def verdict(html: str) -> str:
    m = re.search(r'<section id="verdict".*?</section>', html, re.S)
    assert m, "no verdict section"
    return m.group(0)


# ------------------------------------------------------------ 9. strings, too few classes


def test_report_skips_a_record_with_a_string_score_or_too_few_classes(store, tmp_path):
    """``report`` died with UFuncNoLoopError / TypeError / IndexError and wrote nothing."""
    runs = tmp_path / "runs"
    kept = good_runs(store, runs)
    best = frozen(store, "layer3", 1.0).to_dict()
    string = write_variant(runs, "string-score", best, "metrics.test.accuracy", "0.9")
    count = write_variant(runs, "string-count", best, "metrics.test.n", "9")
    few = write_variant(runs, "two-classes", best, "classes", best["classes"][:2])
    out = tmp_path / "report.html"
    res = run_cli("report", "--runs", runs, "--out", out)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    html = out.read_text(encoding="utf-8")
    assert "logreg on layer2" in verdict(html) and "layer3" not in html
    for file, why in ((string, 'metrics.test.accuracy is "0.9", not a number in [0, 1]'),
                      (count, 'metrics.test.n is "9", not a whole number >= 0'),
                      (few, "metrics.test.confusion_matrix has 3 item(s), not 2")):
        line = next((ln for ln in res.stderr.splitlines() if str(file) in ln), None)
        assert line and why in line and "skipping it" in line, (why, res.stderr)
        assert "move it out of the runs folder" in line
    assert sorted(r.run_id for r in load_records(runs)) == sorted(kept)


# ------------------------------------------------------------ 10. scores out of range


def test_report_never_ranks_a_record_whose_accuracy_is_nan_or_huge(store, tmp_path, caplog):
    """The verdict read "Best strategy ... accuracy nan%" and "2 of 2 others significantly
    worse"."""
    import pipeline

    runs = tmp_path / "runs"
    good_runs(store, runs)
    best = frozen(store, "layer3", 1.0).to_dict()
    files = [write_variant(runs, f"acc-{name}", best, f"metrics.{part}.accuracy", value)
             for name, value in (("nan", math.nan), ("huge", 1e308), ("inf", math.inf),
                                 ("negative", -0.25))
             for part in ("test",)]
    files.append(write_variant(runs, "val-nan", best, "metrics.val.accuracy", math.nan))
    with caplog.at_level(logging.WARNING):
        page = pipeline.report(runs, tmp_path / "r.html")
    html = page.read_text(encoding="utf-8")
    text = verdict(html)
    assert "logreg on layer2" in text and "77.8%" in text, text
    assert not re.search(r"\b(nan|inf)%|e\+?3\d\d%", html, re.I)
    warned = warnings_of(caplog)
    for file in files:
        line = next((ln for ln in warned.splitlines() if str(file) in ln), "")
        assert "accuracy is" in line and "not a number in [0, 1]" in line, (file, warned)


#: Hostile values and the words the warning must hold: ``(field, value, words)``.
HOSTILE = [
    ("metrics.test.accuracy", True, "metrics.test.accuracy is true"),
    ("metrics.test.accuracy", [0.9], "metrics.test.accuracy is [0.9]"),
    ("metrics.test.accuracy", {"v": 0.9}, 'metrics.test.accuracy is {"v": 0.9}'),
    ("metrics.test.accuracy", None, "metrics.test.accuracy is null"),
    ("metrics.test.accuracy", 10 ** 30, "metrics.test.accuracy is 1000000000000000000000000000000"),
    ("metrics.test.balanced_accuracy", -math.inf, "metrics.test.balanced_accuracy is -Infinity"),
    ("metrics.test.macro_f1", 1.5, "metrics.test.macro_f1 is 1.5"),
    ("metrics.test.n", -9, "metrics.test.n is -9, not a whole number >= 0"),
    ("metrics.test.n", 9.5, "metrics.test.n is 9.5"),
    ("metrics.test.n", 10 ** 30, "metrics.test.n is 1000000000000000000000000000000"),
    ("metrics.test.n", True, "metrics.test.n is true"),
    ("metrics.test.n", DELETE, "fields missing: metrics.test.n"),
    ("metrics.test.confusion_matrix", [[3, 0, 0, 0]] * 4, "confusion_matrix has 4 item(s), not 3"),
    ("metrics.test.confusion_matrix.0.0", -3, "confusion_matrix[0][0] is -3"),
    ("metrics.test.confusion_matrix.1", "abc", 'confusion_matrix[1] is "abc", not an array'),
    ("metrics.test.confusion_matrix.0.0", 4, "adds up to 10 images, not metrics.test.n = 9"),
    ("metrics.test.per_class.white", {"precision": 1.0}, 'per_class names "white"'),
    ("metrics.test.per_class.red.recall", math.nan, "per_class.red.recall is NaN"),
    ("metrics.test.per_class.red.support", -1, "per_class.red.support is -1"),
    ("metrics.val.accuracy", "high", 'metrics.val.accuracy is "high"'),
    ("metrics.val", [1, 2], "metrics.val is [1, 2], not an object"),
    ("predictions.y_true.0", 7, "predictions.y_true[0] is 7, not a class index below 3"),
    ("predictions.y_pred.0", "red", 'predictions.y_pred[0] is "red"'),
    ("predictions.y_pred", None, "predictions.y_pred is null, not an array"),
    ("predictions.paths", ["a.png"], "predictions.paths has 1 item(s), not 9"),
    ("predictions.proba.0", [0.5, 0.5], "predictions.proba[0] has 2 item(s), not 3"),
    ("predictions.proba.0.0", math.inf, "predictions.proba[0][0] is Infinity"),
    ("classes", ["blue", "green", "red", "white"], "has 3 item(s), not 4"),
    ("classes", ["blue", "blue", "red"], "classes has a name twice"),
    ("classes.0", 5, "classes[0] is 5, not a string"),
    ("created", 5, "created (a JSON string, not int)"),
    ("method", ["logreg"], "method (a JSON string, not list)"),
    ("seed", True, "seed (a JSON integer, not bool)"),
    ("seed", -1, "seed is -1, not a whole number >= 0"),
    ("fit_seconds", "1.5", "fit_seconds (a JSON number, not str)"),
    ("fit_seconds", math.nan, "fit_seconds is NaN"),
    ("trainable_params", -5, "trainable_params is -5"),
    ("protocol", ["holdout"], "protocol (['holdout']; valid: holdout, cv)"),
    ("features.images_per_second", "fast", 'features.images_per_second is "fast"'),
    ("features.path", {"p": 1}, 'features.path is {"p": 1}, not a string'),
    ("split_sizes.train", -33, "split_sizes.train is -33"),
    ("split.class_sizes.red", [11, 3], "split.class_sizes.red has 2 item(s), not 3"),
    ("split.seed", "zero", 'split.seed is "zero"'),
    ("class_counts", {"red": "many"}, 'class_counts.red is "many"'),
    ("history", [{"epoch": "1"}], 'history[0].epoch is "1"'),
    ("history", [{"epoch": 1, "train_accuracy": 7}], "history[0].train_accuracy is 7"),
    ("history", [{"epoch": 1, "lr": 0.01}], "history[0].lr is 0.01, not an object"),
    ("history", [{"epoch": 1, "val_loss": "low"}], 'history[0].val_loss is "low"'),
    ("finetune", {"best_epoch": "last"}, 'finetune.best_epoch is "last"'),
]
#: The same for a cross-validated record (tests/data/records/schema1-cv.json).
HOSTILE_CV = [
    ("cv.fold_scores.0", math.nan, "cv.fold_scores[0] is NaN"),
    ("cv.fold_scores", [], "cv.fold_scores is empty"),
    ("cv.fold_n_test.0", -4, "cv.fold_n_test[0] is -4, not a whole number >= 1"),
    ("cv.fold_n_train", [16] * 14, "cv.fold_n_train has 14 item(s), not 15"),
    ("cv.fold_metrics.macro_f1.3", 2.0, "cv.fold_metrics.macro_f1[3] is 2.0"),
    ("cv.fold_ids.0", [0], "cv.fold_ids[0] has 1 item(s), not 2"),
    ("cv.ci", [1.0, 0.5], "its low end above its high end"),
    ("cv.mean", 1e308, "cv.mean is 1e+308"),
    ("cv.mean", DELETE, "fields missing: cv.mean"),
    ("cv.fold_n_train", DELETE, "fields missing: cv.fold_n_train"),
    ("metrics.oof.accuracy", math.inf, "metrics.oof.accuracy is Infinity"),
    ("predictions.y_pred_repeats.1.0", 2, "predictions.y_pred_repeats[1][0] is 2, not a "
                                          "class index below 2"),
]


def test_hostile_record_values_are_each_refused_naming_the_file_and_the_field(
        store, tmp_path, caplog, run):
    """Every variant is skipped on load with a warning naming its file and field; the
    report (CLI in a real process, CLI in this one, Python API) is the sound records'."""
    import pipeline

    runs = tmp_path / "runs"
    kept = good_runs(store, runs)
    best = frozen(store, "layer3", 1.0).to_dict()
    cv = json.loads((RECORDS / "schema1-cv.json").read_text())
    files = {write_variant(runs, f"hostile-{i:02d}", best, path, value): words
             for i, (path, value, words) in enumerate(HOSTILE)}
    files.update({write_variant(runs, f"hostile-cv-{i:02d}", cv, path, value): words
                  for i, (path, value, words) in enumerate(HOSTILE_CV)})
    with caplog.at_level(logging.WARNING):
        assert sorted(r.run_id for r in load_records(runs)) == sorted(kept)
    warned = warnings_of(caplog).splitlines()
    for file, words in files.items():
        line = next((ln for ln in warned if f"{file}" in ln), "")
        assert words in line and "skipping it" in line, (file.name, words, line)
    res = run_cli("report", "--runs", runs, "--out", tmp_path / "cli.html")
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr[-3000:]
    res = run("report", "--runs", runs, "--out", tmp_path / "runner.html")
    assert res.exit_code == 0, res.output
    html = pipeline.report(runs, tmp_path / "api.html").read_text(encoding="utf-8")
    assert "logreg on layer2" in verdict(html) and "77.8%" in verdict(html)
    assert not re.search(r"\b(nan|inf)%", html)


def test_records_this_version_writes_pass_the_value_checks(store, tmp_path):
    """The checks refuse nothing a run writes: cv and holdout, with history, class counts."""
    runs = tmp_path / "runs"
    rec = frozen(store, "layer1", 0.5, history=history(3, trap=True),
                 extra={"finetune": {"best_epoch": 2}, "class_counts": {"blue": 17}})
    save_record(rec, runs)
    for name in ("schema1-holdout.json", "schema1-cv.json"):
        (runs / name).write_text((RECORDS / name).read_text())
    assert len(load_records(runs)) == 3


def test_a_record_without_classes_is_reported_with_the_names_it_has(store, tmp_path):
    """A record without ``classes`` (deleted, empty or null) is read: its classes are named
    by its per-class scores (the confusion tables indexed ``classes[0]`` and failed)."""
    runs = tmp_path / "runs"
    good_runs(store, runs)
    for file, value in zip(sorted(runs.glob("*.json")), (DELETE, [])):
        data = json.loads(file.read_text())
        write_variant(runs, data["run_id"], data, "classes", value)
    res = run_cli("report", "--runs", runs, "--out", tmp_path / "r.html")
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr[-2000:]
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    confusion = re.search(r'<section id="confusion".*?</section>', page, re.S).group(0)
    assert "<th>green</th>" in confusion
    assert all(not r.classes and r.class_names() == ["blue", "green", "red"]
               for r in load_records(runs))


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


#: Every step of the bar drawn, however fast the toy extraction (tqdm takes its defaults
#: from ``TQDM_*`` variables): without it, whether the step that finishes the bar is drawn
#: depends on the time it took.
EVERY_STEP = {**os.environ, "TQDM_MININTERVAL": "0"}


def _in_a_terminal(*args) -> str:
    """stderr of the CLI run with a pseudo-terminal as its stderr, as the terminal got it."""
    code = (f"import sys; sys.path[:0] = [{str(TESTS)!r}, {str(TESTS.parent)!r}]; "
            "import conftest, cli; cli.main()")
    leader, follower = pty.openpty()
    # 24 rows of 120 columns: a terminal of size 0 gets an empty bar
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    try:
        proc = subprocess.Popen([sys.executable, "-c", code, *map(str, args)],
                                stdout=subprocess.DEVNULL, stderr=follower, env=EVERY_STEP)
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
        res = run_cli(*args, env=EVERY_STEP)
        assert res.returncode == 0, res.stderr
        err = res.stderr
    else:
        err = _in_a_terminal(*args)
    # each drawing of the bar starts with a carriage return: one line per drawing
    drawings = [d for d in re.split(r"[\r\n]", err) if "extract toy" in d]
    final = [d for d in drawings if "15/15" in d]
    assert len(final) == 1, drawings
    assert "100%" in final[0]
