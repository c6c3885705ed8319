"""Which layout a dataset comes in, and its manifest: one entry point for every reader.

:func:`load` reads ``--data`` as one of:

* ``classes``: a folder with one sub-folder per class (:func:`.manifest.scan`);
* ``splits``: a folder of split folders, each with one sub-folder per class
  (``train/<class>/``, ``val/<class>/``, ``test/<class>/``;
  :func:`.manifest.scan_split_folders`);
* ``table``: a label table of paths and labels (:func:`.table.read_table`).

``auto`` (:func:`detect`) takes a file for a table, and a folder whose
sub-folders are all split names for split folders; a folder that mixes split
folders and class folders is refused, since either reading of it would be
silently wrong for some images.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError, UsageError, opt
from ..options import LAYOUTS
from .manifest import Manifest, scan, scan_split_folders, split_folder_code
from .table import is_table, read_table

log = logging.getLogger(__name__)

#: What each layout is called in messages.
LAYOUT_NAMES = {"classes": "one folder per class", "splits": "split folders",
                "table": "label table"}


@dataclass(frozen=True)
class TableColumns:
    """The column names of a label table (None: found among the usual spellings)."""

    path: str | None = None
    label: str | None = None
    split: str | None = None
    group: str | None = None
    image_root: str | None = None


def detect(data) -> tuple[str, str]:
    """``(layout, why)`` of ``data`` (a folder or a table file)."""
    data = Path(data)
    if data.is_file() or is_table(data):
        return "table", f"{data.name} is a file: read as a label table"
    if not data.is_dir():
        raise DataError(f"image folder {str(data)!r} does not exist or is not a folder; "
                        f"pass {opt('data', 'DIR')} a folder with one sub-folder per class, a "
                        "folder of train/val/test folders, or a label table (.csv, .tsv, "
                        ".jsonl, .parquet)", param="data")
    subs = [d for d in sorted(data.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    splits = [d.name for d in subs if split_folder_code(d.name) is not None]
    others = [d.name for d in subs if split_folder_code(d.name) is None]
    if splits and others:
        raise DataError(
            f"{str(data)!r} mixes split folders ({', '.join(splits)}) and other folders "
            f"({', '.join(others[:5])}{', ...' if len(others) > 5 else ''}): move the class "
            f"folders into the split folders (train/<class>/), or pass "
            f"{opt('layout', 'classes')} to read every sub-folder (the split folders "
            "included) as a class", param="data")
    if splits:
        return "splits", (f"sub-folders {', '.join(splits)} are split names: read as split "
                          "folders, each holding one folder per class")
    nested = [f"{d.name}/{s.name}/" for d in subs for s in _subfolders(d)
              if split_folder_code(s.name) is not None]
    if nested:
        log.warning("class folders hold split folders (%s%s): every image below a class "
                    "folder is taken as that class and those split folders are not used as a "
                    "split; to use them, arrange the data as train/<class>/, test/<class>/",
                    ", ".join(nested[:4]), ", ..." if len(nested) > 4 else "")
    return "classes", "read as one sub-folder per class"


def _subfolders(folder: Path) -> list:
    try:
        return [s for s in sorted(folder.iterdir()) if s.is_dir()]
    except OSError:  # unreadable: the scan lists it with its reason
        return []


def load(data, layout: str = "auto", columns: TableColumns | None = None) -> Manifest:
    """The manifest of ``data`` read as ``layout`` (``auto``: :func:`detect`); the layout
    and why it was chosen are in ``manifest.layout`` and its first note."""
    if layout not in LAYOUTS:
        raise UsageError(f"unknown layout {layout!r}; valid: {', '.join(LAYOUTS)}",
                         param="layout")
    columns = columns or TableColumns()
    named = [v for v in (columns.path, columns.label, columns.split, columns.group,
                         columns.image_root) if v is not None]
    if layout == "auto":
        layout, why = detect(data)
    else:
        why = f"read as {LAYOUT_NAMES[layout]} ({opt('layout', layout)})"
    if layout != "table" and Path(data).is_file():
        raise UsageError(f"{str(data)!r} is a file, not a folder: read it as a label table "
                         f"({opt('layout', 'table')} or {opt('layout', 'auto')})",
                         param="layout")
    if named and layout != "table":
        raise UsageError("the column and image-root options are for a label table; "
                         f"{str(data)!r} is read as {LAYOUT_NAMES[layout]}", param="layout")
    if layout == "table":
        manifest = read_table(data, columns.path, columns.label, columns.split, columns.group,
                              columns.image_root)
    elif layout == "splits":
        manifest = scan_split_folders(data)
    else:
        manifest = scan(data)
    manifest.notes.insert(0, f"layout: {LAYOUT_NAMES[layout]} ({why})")
    return manifest
