"""Label tables into manifests: CSV, TSV, JSON Lines and Parquet files of path and label.

:func:`read_table` reads a table with a path column and a label column, and
optionally a ``split`` column (train / val / test) and a ``group`` column (the
patient, object or site an image belongs to), into a :class:`Manifest`.  Column
names are found case-insensitively among common spellings, or given.  Paths
are relative to the table's folder (or to ``image_root``) or absolute.

A row that cannot be used (its file missing or not a regular image file, an
empty label, an unknown split, a path listed twice) is left out and listed in
``excluded`` with its line number and the fix; nothing else is lost.  The
manifest keeps each image's line (``lines``) and the table's SHA-256, so an
edited table re-extracts only the rows whose files changed: labels, splits and
groups are not part of any vector.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import posixpath
from pathlib import Path

import numpy as np

from ..errors import DataError, opt
from ..files import sha256_file
from .manifest import (
    SPLIT_NAMES,
    Manifest,
    check_classes,
    not_an_image,
    regular_stat,
    split_folder_code,
)

log = logging.getLogger(__name__)

#: Table file suffixes and their formats.
TABLE_FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl",
                 ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}

#: Column names tried, in order and in any case, when no name is given.
COLUMN_ALIASES = {
    "path": ("path", "filepath", "file_path", "file", "filename", "file_name", "image",
             "image_path", "img", "relpath"),
    "label": ("label", "class", "class_name", "category", "target", "y"),
    "split": ("split", "subset", "set", "partition"),
    "group": ("group", "group_id", "groups"),
}

#: Split values accepted in a split column (any case), beyond the split folder names.
SPLIT_VALUES = {"training": 0, "testing": 2, "validate": 1, "validation": 1}

#: Share of rows naming missing files above which the table's paths are taken to be
#: relative to another folder (one clear error, not a list of thousands of rows).
MISSING_SHARE = 0.5


def is_table(path) -> bool:
    """Whether ``path`` names a label table (by its suffix)."""
    return Path(path).suffix.lower() in TABLE_FORMATS


def read_table(table, path_column=None, label_column=None, split_column=None,
               group_column=None, image_root=None, min_per_class: int = 3) -> Manifest:
    """The :class:`Manifest` of the images a label table lists.

    ``*_column`` name the columns (None: the first of :data:`COLUMN_ALIASES` present;
    the split and group columns are optional).  ``image_root`` is the folder relative
    paths start from (default: the table's folder).  Rows are sorted by path, so the
    table's row order does not matter.  Raises :class:`DataError` for a table that
    cannot be read at all, a named column that is not there, or no usable row.
    """
    table = Path(table)
    if not table.is_file():
        raise DataError(f"label table {str(table)!r} does not exist or is not a file; pass "
                        f"{opt('data', 'FILE')} a .csv, .tsv, .jsonl or .parquet table",
                        param="data")
    header, records = _read_rows(table)
    cols = {"path": _column(table, header, "path", path_column, required=True),
            "label": _column(table, header, "label", label_column, required=True),
            "split": _column(table, header, "split", split_column),
            "group": _column(table, header, "group", group_column)}
    root = Path(image_root) if image_root else table.parent
    if not root.is_dir():
        raise DataError(f"image root {str(root)!r} is not a folder; pass "
                        f"{opt('image_root', 'DIR')} the folder the table's paths start from",
                        param="image_root")
    rows, excluded = _rows(table, root, records, cols)
    _check_missing(table, root, records, excluded)
    if not rows:
        first = excluded[0][1] if excluded else "-"
        raise DataError(f"label table {str(table)!r} has no usable row ({len(records)} rows, "
                        f"{len(excluded)} left out; the first: {first})", param="data")
    return _manifest(table, root, cols, rows, excluded, min_per_class)


def _manifest(table: Path, root: Path, cols: dict, rows: list, excluded: list,
              min_per_class: int) -> Manifest:
    rows.sort(key=lambda r: r["path"])
    classes = sorted({r["label"] for r in rows})
    labels = np.asarray([classes.index(r["label"]) for r in rows], dtype=np.int64)
    check_classes(table, classes, labels, min_per_class)
    given = None
    if cols["split"] is not None:
        given = np.asarray([r["split"] for r in rows], dtype=np.int8)
        if (given < 0).all():
            log.warning("split column %r of %s is empty in every row: the split is drawn "
                        "by seed", cols["split"], table)
            given = None
    groups = None
    if cols["group"] is not None:
        groups = [r["group"] for r in rows]
    used = ", ".join(f"{k} from column {v!r}" for k, v in cols.items() if v is not None)
    log.info("label table %s: %d images, %d classes; %s", table, len(rows), len(classes), used)
    return Manifest(root=root, classes=classes, paths=[r["path"] for r in rows],
                    labels=labels, sizes=np.asarray([r["size"] for r in rows], dtype=np.int64),
                    mtimes=np.asarray([r["mtime"] for r in rows], dtype=np.int64),
                    excluded=excluded, layout="table", given_split=given, groups=groups,
                    source=table, source_sha256=sha256_file(table),
                    lines={r["path"]: r["line"] for r in rows},
                    notes=[f"columns: {used}"])


def _read_rows(table: Path) -> tuple[list, list]:
    """``(header, [(line, {column: value})])`` of a table; values are strings or None."""
    fmt = TABLE_FORMATS.get(table.suffix.lower())
    if fmt is None:
        raise DataError(f"{str(table)!r} is not a label table this tool reads (suffix "
                        f"{table.suffix or 'none'}); use .csv, .tsv, .jsonl or .parquet",
                        param="data")
    if fmt == "parquet":
        return _read_parquet(table)
    try:
        text = table.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise DataError(f"label table {str(table)!r} cannot be read: "
                        f"{exc.strerror or exc}", param="data") from None
    except UnicodeDecodeError as exc:
        line = table.read_bytes()[:exc.start].count(b"\n") + 1
        raise DataError(f"label table {str(table)!r} is not UTF-8 text (line {line}); save it "
                        "as UTF-8 (e.g. 'CSV UTF-8' in a spreadsheet) and run again",
                        param="data") from None
    return _read_jsonl(table, text) if fmt == "jsonl" else _read_delimited(table, text, fmt)


def _read_delimited(table: Path, text: str, fmt: str) -> tuple[list, list]:
    delimiter = "\t" if fmt == "tsv" else _sniff(text)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise DataError(f"label table {str(table)!r} is empty; it needs a header line "
                        "(e.g. path,label) and one line per image", param="data") from None
    except csv.Error as exc:
        raise DataError(f"label table {str(table)!r}: {exc}", param="data") from None
    records, line = [], reader.line_num
    try:
        for row in reader:
            start, line = line + 1, reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            records.append((start, {h: (row[k] if k < len(row) else None)
                                    for k, h in enumerate(header)}))
    except csv.Error as exc:
        raise DataError(f"label table {str(table)!r}, line {reader.line_num}: {exc}; fix "
                        "the quoting there", param="data") from None
    return header, records


def _sniff(text: str) -> str:
    """The delimiter of a CSV file: the first of , ; tab | that its header line holds."""
    first = text.split("\n", 1)[0]
    for delimiter in (",", ";", "\t", "|"):
        if delimiter in first:
            return delimiter
    return ","


def _read_jsonl(table: Path, text: str) -> tuple[list, list]:
    header, records = [], []
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise DataError(f"label table {str(table)!r}, line {line}: not JSON ({exc}); each "
                            "line holds one object such as "
                            '{"path": "a.jpg", "label": "cat"}', param="data") from None
        if not isinstance(obj, dict):
            raise DataError(f"label table {str(table)!r}, line {line}: a JSON "
                            f"{type(obj).__name__}, not an object", param="data")
        for key in obj:
            if key not in header:
                header.append(key)
        records.append((line, {k: _text(v) for k, v in obj.items()}))
    return header, records


def _read_parquet(table: Path) -> tuple[list, list]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{str(table)!r} is a Parquet table, which needs pyarrow: "
                        "pip install pyarrow (or save the table as CSV)", param="data") from None
    try:
        data = pq.read_table(table)
    except Exception as exc:  # pyarrow raises its own error types for a damaged file
        raise DataError(f"Parquet table {str(table)!r} cannot be read: {exc}",
                        param="data") from None
    header = list(data.column_names)
    rows = data.to_pylist()
    return header, [(k + 1, {h: _text(v) for h, v in row.items()}) for k, row in enumerate(rows)]


def _text(value):
    """A cell as text (numbers written plainly), or None for a missing value."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _column(table: Path, header: list, role: str, asked, required: bool = False):
    """The name of the column for ``role`` in ``header`` (None for an optional role that
    is absent); :class:`DataError` naming the columns there when it cannot be found."""
    by_lower = {h.lower(): h for h in header}
    flag = opt(f"{role}_column", "NAME")
    if asked:
        if asked in header or asked.lower() in by_lower:
            return by_lower.get(asked.lower(), asked)
        raise DataError(f"label table {str(table)!r} has no column {asked!r} (asked by "
                        f"{flag}); its columns: {', '.join(header) or 'none'}",
                        param=f"{role}_column")
    for name in COLUMN_ALIASES[role]:
        if name in by_lower:
            return by_lower[name]
    if required:
        raise DataError(f"label table {str(table)!r} has no {role} column (looked for "
                        f"{', '.join(COLUMN_ALIASES[role])}); its columns: "
                        f"{', '.join(header) or 'none'}; name it with {flag}",
                        param=f"{role}_column")
    return None


def _rows(table: Path, root: Path, records: list, cols: dict) -> tuple[list, list]:
    """``(rows, excluded)``: the usable rows as dicts, and ``(path, reason)`` of the others."""
    rows, excluded, seen, files = [], [], {}, {}
    where = table.name
    for line, rec in records:
        raw = (rec.get(cols["path"]) or "").strip()
        label = (rec.get(cols["label"]) or "").strip()
        problem, rel, st = _file_problem(root, raw)
        if problem is None and not label:
            problem = f"empty label (column {cols['label']!r}); give the image its class"
        group = None
        if cols["group"] is not None:
            group = (rec.get(cols["group"]) or "").strip() or f"(no group: line {line})"
        for what, text in (("label", label), ("group", group or "")):
            if problem is None and _unstorable(text):
                problem = f"the {what} {_safe(text)!r} holds a NUL character or is not UTF-8"
        split = -1
        if problem is None and cols["split"] is not None:
            split, problem = _split_code(rec.get(cols["split"]), cols["split"])
        if problem is None and rel in seen:
            problem = (f"lists {raw!r} again (first at line {seen[rel]}); an image has "
                       "one label: remove one of the lines")
        if problem is None and (st.st_dev, st.st_ino) in files:
            problem = (f"same file as line {files[(st.st_dev, st.st_ino)]} (a link or a "
                       "second spelling); left out so that the image has one label")
        if problem is not None:
            excluded.append((_safe(rel or raw or f"line {line}"),
                             f"line {line} of {where}: {problem}"))
            continue
        seen[rel], files[(st.st_dev, st.st_ino)] = line, line
        rows.append({"path": rel, "label": label, "split": split, "group": group,
                     "line": line, "size": st.st_size, "mtime": st.st_mtime_ns})
    _log_excluded(table, excluded)
    return rows, excluded


def _unstorable(text: str) -> bool:
    """Whether ``text`` cannot be stored as HDF5 UTF-8 text (a NUL, a lone surrogate)."""
    if "\x00" in text:
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _safe(text: str) -> str:
    """``text`` as storable, printable UTF-8: NUL and what is not UTF-8 as escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def _file_problem(root: Path, raw: str):
    """``(problem or None, path as stored, stat)`` of a table's path cell."""
    if not raw:
        return "empty path", None, None
    if _unstorable(raw):
        return "the path holds a NUL character or is not valid UTF-8 text", None, None
    # a table written on Windows: backslashes as separators (when no slash is used)
    posix = raw.replace("\\", "/") if "/" not in raw else raw
    if posixpath.isabs(posix):
        full = posix
        rel = posixpath.normpath(posix)
        try:
            rel = Path(rel).relative_to(root.resolve()).as_posix()
        except ValueError:
            pass  # outside the image root: kept as an absolute path
    else:
        rel = posixpath.normpath(posix)
        full = str(root / rel)
    why = not_an_image(full, rel)
    if why:
        return f"{raw!r} is {why}", rel, None
    if not os.path.lexists(full):
        return f"{raw!r} does not exist ({full})", rel, None
    st = regular_stat(full)
    if isinstance(st, str):
        return f"{raw!r}: {st}", rel, None
    return None, rel, st


def _split_code(value, column: str):
    """``(code, None)`` of a split cell (-1 when empty), or ``(-1, problem)``."""
    text = (value or "").strip()
    if not text:
        return -1, None
    code = split_folder_code(text)
    if code is None:
        code = SPLIT_VALUES.get(text.lower())
    if code is None:
        return -1, (f"unknown split {text!r} in column {column!r} (use "
                    f"{', '.join(SPLIT_NAMES)}, or leave it empty)")
    return code, None


def _log_excluded(table: Path, excluded: list, shown: int = 10):
    if not excluded:
        return
    lines = "; ".join(reason for _p, reason in excluded[:shown])
    more = f"; ... and {len(excluded) - shown} more" if len(excluded) > shown else ""
    log.warning("%d row(s) of %s left out: %s%s", len(excluded), table, lines, more)


def _check_missing(table: Path, root: Path, records: list, excluded: list):
    """One clear error when most rows name files that are not there: the paths are
    relative to another folder than the one they are looked for in."""
    missing = [reason for _p, reason in excluded if "does not exist" in reason
               or "cannot read file" in reason]
    if records and len(missing) > MISSING_SHARE * len(records):
        raise DataError(
            f"{len(missing)} of {len(records)} rows of {str(table)!r} name files that are not "
            f"in {str(root)!r} (e.g. {missing[0]}); paths are read relative to the table's "
            f"folder: pass {opt('image_root', 'DIR')} the folder they start from",
            param="image_root")
