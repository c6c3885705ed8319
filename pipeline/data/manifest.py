"""Image folders into manifests: the ImageFolder scan and the bundled subset.

:func:`scan` turns a folder (one sub-folder per class) into a :class:`Manifest`
(relative paths, integer labels, class names, file identities, and every
entry left out with its reason); :func:`stratified_head` takes a proportional
subset of it (benchmarks, ``limit``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import DataError, opt

log = logging.getLogger(__name__)


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass
class Manifest:
    """The images of one folder, in a fixed order.

    ``paths`` are POSIX paths relative to ``root``; ``labels[i]`` indexes
    ``classes``; ``sizes`` and ``mtimes`` (ns) identify each file's version.
    ``ignored`` lists files in the tree that are not images (relative paths);
    ``excluded`` gives ``(relative path, reason)`` for every entry of the tree
    that is not taken as an image: non-image files, hidden files and folders,
    files outside the class folders and class folders without images (these
    end in ``/``).
    """

    root: Path
    classes: list[str]
    paths: list[str]
    labels: np.ndarray
    sizes: np.ndarray
    mtimes: np.ndarray
    ignored: list[str] = field(default_factory=list)
    excluded: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self):
        return len(self.paths)

    @property
    def name(self):
        return self.root.name

    def subset(self, keep) -> "Manifest":
        """The manifest of rows ``keep`` (indices, in the order given); same root and classes."""
        keep = np.asarray(keep, dtype=np.int64)
        return replace(self, paths=[self.paths[i] for i in keep], labels=self.labels[keep],
                       sizes=self.sizes[keep], mtimes=self.mtimes[keep])


def bundled_data_root() -> Path:
    """The small flowers subset shipped with the package (CC-BY 2.0, see ATTRIBUTION.md)."""
    return Path(str(resources.files("pipeline") / "sample_data" / "flowers"))


def scan(root, min_per_class: int = 3) -> Manifest:
    """Scan an ImageFolder tree into a :class:`Manifest`.

    Hidden files and folders (leading dot) are skipped; files whose extension
    is not an image extension are listed in ``ignored``.  Classes are the
    sorted names of the immediate sub-folders that hold at least one image;
    empty class folders are reported in the log and left out.  Everything
    left out is listed with its reason in ``excluded``.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"image folder {str(root)!r} does not exist or is not a folder; "
            f"pass {opt('data', 'DIR')} with one sub-folder per class", param="data")
    excluded, ignored = [], []
    classes, paths, labels, sizes, mtimes, empty = [], [], [], [], [], []
    for class_dir in _class_dirs(root, excluded):
        found = _class_images(root, class_dir, excluded, ignored)
        if not found:
            empty.append(class_dir.name)
            excluded.append((class_dir.name + "/", "class folder holds no image; left out "
                                                   "of the classes"))
            continue
        label = len(classes)
        classes.append(class_dir.name)
        for rel, full in found:
            st = os.stat(full)
            paths.append(rel)
            labels.append(label)
            sizes.append(st.st_size)
            mtimes.append(st.st_mtime_ns)
    if empty:
        log.warning("class folders with no images, left out: %s", ", ".join(empty))
    _check_classes(root, classes, labels, min_per_class)
    return Manifest(root=root, classes=classes, paths=paths,
                    labels=np.asarray(labels, dtype=np.int64),
                    sizes=np.asarray(sizes, dtype=np.int64),
                    mtimes=np.asarray(mtimes, dtype=np.int64),
                    ignored=ignored, excluded=excluded)


def _class_dirs(root: Path, excluded: list) -> list:
    """The candidate class folders directly under ``root``; the rest goes to ``excluded``."""
    class_dirs = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            excluded.append(_hidden(entry.name, entry.is_dir()))
        elif entry.is_dir():
            class_dirs.append(entry)
        else:
            excluded.append((entry.name, "not inside a class folder"))
    return class_dirs


def _class_images(root: Path, class_dir: Path, excluded: list, ignored: list) -> list:
    """``[(relative path, full path)]`` of the images in ``class_dir``, at any depth."""
    found = []
    for dirpath, dirnames, filenames in os.walk(class_dir):
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        excluded.extend(_hidden(f"{rel_dir}/{d}", True)
                        for d in sorted(dirnames) if d.startswith("."))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fname in sorted(filenames):
            if fname.startswith("."):
                excluded.append(_hidden(f"{rel_dir}/{fname}", False))
                continue
            # Plain strings, not Path objects: a scan of thousands of files
            # is part of every (even up-to-date) extract run.
            full = os.path.join(dirpath, fname)
            rel = f"{rel_dir}/{fname}"
            suffix = os.path.splitext(fname)[1].lower()
            if suffix in IMAGE_EXTENSIONS:
                found.append((rel, full))
            else:
                ignored.append(rel)
                ext = suffix if suffix not in ("", ".") else "none"
                excluded.append((rel, f"not an image file name (extension {ext!r}; "
                                      f"images are {', '.join(IMAGE_EXTENSIONS)})"))
    return found


def _check_classes(root: Path, classes: list, labels: list, min_per_class: int):
    """:class:`DataError` unless there are 2 classes with ``min_per_class`` images each."""
    if len(classes) < 2:
        raise DataError(
            f"{str(root)!r} has {len(classes)} class folder(s) with images "
            f"({', '.join(classes) or 'none'}); a classifier needs at least 2: "
            "put each class's images in its own sub-folder", param="data")
    counts = np.bincount(labels, minlength=len(classes))
    small = [f"{c} ({n})" for c, n in zip(classes, counts) if n < min_per_class]
    if small:
        raise DataError(
            f"classes with fewer than {min_per_class} images cannot be split into "
            f"train/val/test: {', '.join(small)} in {str(root)!r}; add images or "
            "remove those folders", param="data")


def _hidden(rel: str, is_dir: bool) -> tuple[str, str]:
    if is_dir:
        return rel + "/", "hidden folder (name starts with '.'); not scanned"
    return rel, "hidden file (name starts with '.')"


def stratified_head(labels, limit: int) -> np.ndarray:
    """Sorted indices of about ``limit`` images: the first ones of each class, in proportion
    (at least 3 per class, so every class can still be split)."""
    labels = np.asarray(labels)
    keep = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        share = max(3, int(round(limit * len(members) / len(labels))))
        keep.extend(members[:share])
    return np.sort(np.asarray(keep, dtype=np.int64))
