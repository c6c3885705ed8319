"""Image folders into manifests: the ImageFolder scan, split folders and the bundled subset.

:func:`scan` turns a folder (one sub-folder per class) into a :class:`Manifest`
(relative paths, integer labels, class names, file identities, and every
entry left out with its reason); :func:`scan_split_folders` does the same for a
folder of split folders (``train/<class>/``, ``val/<class>/``, ``test/<class>/``),
keeping each image's split as ``given_split``; :func:`stratified_head` takes a
proportional subset of a manifest (benchmarks, ``limit``).  Label tables are read
by :mod:`.table`, and :mod:`.layouts` tells the layouts apart.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import DataError, opt
from .decode import undecoded_format

log = logging.getLogger(__name__)


#: The file names taken as images (any case): formats Pillow always decodes.  ``extract``
#: and ``predict`` take the same ones and list every other file with its reason
#: (:func:`not_an_image`).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


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
    #: ``classes`` (one folder per class), ``splits`` (split folders) or ``table``
    layout: str = "classes"
    #: ``(n_images,)`` int8 split codes the data gives (0 train, 1 val, 2 test; -1 none),
    #: or None when the layout gives no split
    given_split: np.ndarray | None = None
    #: one group name per image (a label table's group column), or None
    groups: list[str] | None = None
    #: the label table a ``table`` manifest was read from, with its SHA-256
    source: Path | None = None
    source_sha256: str | None = None
    #: ``{path: line}``: the table line each image came from (``table`` layout)
    lines: dict = field(default_factory=dict)
    #: what the layout found that the user should know (a class missing from a split, ...)
    notes: list[str] = field(default_factory=list)

    def __len__(self):
        return len(self.paths)

    @property
    def name(self):
        """The dataset's name in store file names: the folder's, or for a table
        ``<folder>_<table stem>`` (a table called labels.csv is not a dataset name)."""
        if self.source is not None:
            return f"{self.root.name}_{self.source.stem}"
        return self.root.name

    def subset(self, keep) -> "Manifest":
        """The manifest of rows ``keep`` (indices, in the order given); same root and classes."""
        keep = np.asarray(keep, dtype=np.int64)
        return replace(self, paths=[self.paths[i] for i in keep], labels=self.labels[keep],
                       sizes=self.sizes[keep], mtimes=self.mtimes[keep],
                       given_split=(None if self.given_split is None
                                    else self.given_split[keep]),
                       groups=None if self.groups is None else [self.groups[i] for i in keep])

    def class_counts(self) -> dict:
        """``{class: images}`` in class order."""
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, counts)}


def bundled_data_root() -> Path:
    """The small flowers subset shipped with the package (CC-BY 2.0, see ATTRIBUTION.md)."""
    return Path(str(resources.files("pipeline") / "sample_data" / "flowers"))


def scan(root, min_per_class: int = 3) -> Manifest:
    """Scan an ImageFolder tree into a :class:`Manifest`.

    Hidden files and folders (leading dot) are skipped; files whose extension
    is not an image extension are listed in ``ignored``.  Classes are the
    sorted names of the immediate sub-folders that hold at least one image;
    empty class folders are reported in the log and left out.  Everything
    left out is listed with its reason in ``excluded``; nothing listed there
    is ever opened, so nothing can block:

    * entries that are not regular files (FIFOs, sockets, devices, broken
      links, link loops);
    * names that are not valid UTF-8 (listed with ``\\x`` escapes; the store
      keeps UTF-8 names, so rename them to include them);
    * a file reached twice (a hard link, or a link to a file elsewhere in the
      tree, compared by device and inode): it keeps one place, so one label
      and one split.  The copy reached through a link is the one left out
      (for two hard links, the second in sorted order), its reason naming
      the file kept;
    * a link inside a class folder to a folder inside the data folder (its
      images are scanned where they are), or to a folder already scanned.

    A class folder that is a link to a folder outside the data folder is a
    class like any other.  One that is a link into the data folder (to
    another class, to the data folder itself) or to the same place as another
    class folder raises :class:`DataError`: all its images would carry two
    labels, and leaving the whole class out would silently change the set of
    classes.  So does a class folder whose name is not valid UTF-8.
    """
    root, real_root = _data_folder(root)
    excluded, ignored = [], []
    class_dirs, found = _scan_classes(root, real_root, root, "", excluded, ignored, {})
    _drop_second_copies(found, excluded)
    classes, paths, labels, sizes, mtimes = _rows(class_dirs, found, excluded)
    check_classes(root, classes, labels, min_per_class)
    return Manifest(root=root, classes=classes, paths=paths,
                    labels=np.asarray(labels, dtype=np.int64),
                    sizes=np.asarray(sizes, dtype=np.int64),
                    mtimes=np.asarray(mtimes, dtype=np.int64),
                    ignored=[shown(p) for p in ignored],
                    excluded=[(shown(p), reason) for p, reason in excluded])


def _data_folder(root) -> tuple[Path, str]:
    """``(root, its real path)``; :class:`DataError` unless it is a folder with a UTF-8 path."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"image folder {str(root)!r} does not exist or is not a folder; "
            f"pass {opt('data', 'DIR')} with one sub-folder per class", param="data")
    real_root = os.path.realpath(root)
    if not _utf8(real_root):
        raise DataError(f"the path of the image folder '{shown(real_root)}' is not valid "
                        "UTF-8 (shown with \\x escapes); rename it (e.g. with convmv) or move it",
                        param="data")
    return root, real_root


def _scan_classes(root: Path, real_root: str, base: Path, prefix: str, excluded: list,
                  ignored: list, scanned: dict) -> tuple[list, list]:
    """``(class folders, [images of each])`` of the class folders directly under ``base``
    (``root`` itself, or one split folder of it named by ``prefix``, e.g. ``"train/"``);
    image paths are relative to ``root``.  ``scanned`` (real path -> relative name of every
    folder scanned so far) is shared across the split folders of one root."""
    class_dirs = _class_dirs(base, excluded, prefix)
    scanned.update(_check_class_links(base, real_root, class_dirs, prefix))
    found = [_class_images(root, real_root, d, excluded, ignored, scanned)
             for d in class_dirs]
    return class_dirs, found


#: Folder names read as a split (any case), and the split code each stands for.
SPLIT_FOLDERS = {"train": 0, "val": 1, "valid": 1, "validation": 1, "dev": 1, "test": 2}
SPLIT_NAMES = ("train", "val", "test")


def split_folder_code(name: str):
    """The split code (0 train, 1 val, 2 test) of a folder called ``name``, else None."""
    return SPLIT_FOLDERS.get(name.lower())


def scan_split_folders(root, min_per_class: int = 3) -> Manifest:
    """Scan a folder of split folders (``train/``, ``val/``|``valid/``|``validation/``|``dev/``,
    ``test/``, any case), each holding one sub-folder per class, into one
    :class:`Manifest`: the classes are the union of the class folders, paths keep
    their split folder (``train/daisy/1.jpg``) and ``given_split`` each image's split.

    A class missing from a split is a note (and a log warning) naming it; two folders of
    one split (``val/`` and ``valid/``) raise :class:`DataError`.  Everything else is as
    :func:`scan` (links, hidden files, non-images, duplicates across splits are left out
    with their reason).
    """
    root, real_root = _data_folder(root)
    excluded, ignored, scanned = [], [], {}
    splits = {}
    for entry in sorted(root.iterdir()):
        code = split_folder_code(entry.name) if entry.is_dir() else None
        if code is None:
            if entry.name.startswith("."):
                excluded.append(_hidden(entry.name, entry.is_dir()))
            elif entry.is_dir():
                excluded.append((entry.name + "/", "not a split folder (train, val, test); "
                                                   "not scanned"))
            else:
                excluded.append((entry.name, _not_regular(str(entry))
                                 or "not inside a split folder's class folder"))
            continue
        if code in splits:
            raise DataError(
                f"{str(root)!r} has two folders for the {SPLIT_NAMES[code]} split "
                f"({splits[code][0].name}/ and {entry.name}/); merge them into one",
                param="data")
        splits[code] = (entry, *_scan_classes(root, real_root, entry, entry.name + "/",
                                              excluded, ignored, scanned))
    found = [images for _entry, _dirs, per_class in splits.values() for images in per_class]
    _drop_second_copies(found, excluded)
    names = sorted({d.name for _e, dirs, per_class in splits.values()
                    for d, images in zip(dirs, per_class) if images})
    rows = []
    for code, (entry, dirs, per_class) in sorted(splits.items()):
        for d, images in zip(dirs, per_class):
            if not images:
                excluded.append((f"{entry.name}/{d.name}/", "class folder holds no image"))
            for rel, _full, st, _via in images:
                rows.append((rel, names.index(d.name), code, st.st_size, st.st_mtime_ns))
    rows.sort()
    labels = np.asarray([r[1] for r in rows], dtype=np.int64)
    check_classes(root, names, labels, min_per_class)
    given = np.asarray([r[2] for r in rows], dtype=np.int8)
    notes = _missing_from_splits(names, labels, given, {c: e.name for c, (e, *_r)
                                                         in splits.items()})
    return Manifest(root=root, classes=names, paths=[r[0] for r in rows], labels=labels,
                    sizes=np.asarray([r[3] for r in rows], dtype=np.int64),
                    mtimes=np.asarray([r[4] for r in rows], dtype=np.int64),
                    ignored=[shown(p) for p in ignored],
                    excluded=[(shown(p), reason) for p, reason in excluded],
                    layout="splits", given_split=given, notes=notes)


def _missing_from_splits(classes, labels, given, folder_of: dict) -> list:
    """A note for each class with no image in one of the split folders (``extract``
    warns with it)."""
    notes = []
    for code, folder in sorted(folder_of.items()):
        present = set(labels[given == code].tolist())
        missing = [c for k, c in enumerate(classes) if k not in present]
        if missing:
            what = ("it cannot be learned" if code == 0 else
                    "it is not validated there" if code == 1 else "it is not tested")
            notes.append(f"class(es) {', '.join(missing)} have no images in {folder}/: "
                         f"{what}; add images of them to {folder}/ or remove the class "
                         "folders elsewhere")
    return notes


def _rows(class_dirs, found, excluded):
    """``(classes, paths, labels, sizes, mtimes)`` of the scanned images; class folders
    with no image are left out (listed in ``excluded``, named in the log)."""
    classes, paths, labels, sizes, mtimes, empty = [], [], [], [], [], []
    for class_dir, images in zip(class_dirs, found):
        if not images:
            empty.append(class_dir.name)
            excluded.append((class_dir.name + "/", "class folder holds no image; left out "
                                                   "of the classes"))
            continue
        label = len(classes)
        classes.append(class_dir.name)
        for rel, _full, st, _via in images:
            paths.append(rel)
            labels.append(label)
            sizes.append(st.st_size)
            mtimes.append(st.st_mtime_ns)
    if empty:
        log.warning("class folders with no images, left out: %s", ", ".join(empty))
    return classes, paths, labels, sizes, mtimes


def shown(name: str) -> str:
    """``name`` as text that can be stored and printed: bytes that are not UTF-8
    (surrogate escapes from the file system) written as ``\\xNN``."""
    if _utf8(name):
        return name
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


NOT_UTF8 = ("name is not valid UTF-8 (shown with \\x escapes); rename it to UTF-8 "
            "(e.g. with convmv) to include it")


def _within(path: str, folder: str) -> bool:
    """Whether real path ``path`` is ``folder`` or inside it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _class_dirs(root: Path, excluded: list, prefix: str = "") -> list:
    """The candidate class folders directly under ``root``; the rest goes to ``excluded``
    (named ``prefix`` + name: relative to the data folder)."""
    class_dirs = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            excluded.append(_hidden(prefix + entry.name, entry.is_dir()))
        elif entry.is_dir():
            if not _utf8(entry.name):
                raise DataError(
                    f"class folder '{shown(entry.name)}' in '{shown(str(root))}': its name is "
                    "not valid UTF-8 (shown with \\x escapes) and class names are stored as "
                    "UTF-8 text; rename it to UTF-8 (e.g. with convmv)", param="data")
            class_dirs.append(entry)
        else:
            excluded.append((prefix + entry.name, _not_regular(str(entry))
                             or "not inside a class folder"))
    return class_dirs


def _check_class_links(root: Path, real_root: str, class_dirs: list, prefix: str = "") -> dict:
    """:class:`DataError` for a class folder that is a link into the data folder or to the
    same place as another class; else ``{real path: relative name}`` of the class folders."""
    real = {d.name: os.path.realpath(d) for d in class_dirs}
    for d in class_dirs:
        if not d.is_symlink():
            continue
        target = real[d.name]
        where = None
        if _within(target, real_root):
            where = "inside the data folder"
        elif _within(real_root, target):
            where = "which holds the data folder"
        else:
            for other in class_dirs:
                if other.name != d.name and (_within(target, real[other.name])
                                             or _within(real[other.name], target)):
                    where = f"the same folder as class {other.name!r} (or one holding it)"
                    break
        if where:
            raise DataError(
                f"class folder {d.name!r} in {str(root)!r} is a link to {target!r}, {where}: "
                "its images would get two labels and could land in two splits; remove the "
                "link (or replace it with a folder of that class's own images) and run again",
                param="data")
    return {target: prefix + name for name, target in real.items()}


def _class_images(root: Path, real_root: str, class_dir: Path, excluded: list,
                  ignored: list, scanned: dict) -> list:
    """``[(relative path, full path, stat, through a folder link)]`` of the regular image
    files in ``class_dir``, at any depth; folder links are followed once (``scanned``:
    real path -> relative name of every folder scanned so far)."""
    found, linked = [], []
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        via = any(_within(dirpath, p) for p in linked)
        dirnames[:] = [d for d in sorted(dirnames)
                       if _follow(root, real_root, dirpath, f"{rel_dir}/{d}", excluded,
                                  scanned, linked)]
        for fname in sorted(filenames):
            if fname.startswith("."):
                excluded.append(_hidden(f"{rel_dir}/{fname}", False))
                continue
            # Plain strings, not Path objects: a scan of thousands of files
            # is part of every (even up-to-date) extract run.
            full = os.path.join(dirpath, fname)
            rel = f"{rel_dir}/{fname}"
            why = not_an_image(full, fname)
            if why:
                ignored.append(rel)
                excluded.append((rel, why))
            elif not _utf8(fname):
                excluded.append((rel, "file " + NOT_UTF8))
            else:
                st = regular_stat(full)
                if isinstance(st, str):
                    excluded.append((rel, st))
                else:
                    found.append((rel, full, st, via))
    return found


def not_an_image(full: str, name: str) -> str | None:
    """Why the file ``full`` (called ``name``) is not taken as an image by its name, or None
    when it is: its extension is none of :data:`IMAGE_EXTENSIONS` (a photo format Pillow
    cannot decode is named, with the fix: :func:`pipeline.data.decode.undecoded_format`),
    or it is a link that leads nowhere.  The file is never opened."""
    suffix = os.path.splitext(name)[1].lower()
    if suffix in IMAGE_EXTENSIONS:
        return None
    ext = suffix if suffix not in ("", ".") else "none"
    return _link_problem(full) or undecoded_format(name) or (
        f"not an image file name (extension '{shown(ext)}'; images are "
        f"{', '.join(IMAGE_EXTENSIONS)})")


def _link_problem(full: str) -> str | None:
    """What is wrong with ``full`` when it is a link that leads nowhere (a loop, or a missing
    target), else None; said instead of judging the link's own name."""
    if not os.path.islink(full):
        return None
    try:
        os.stat(full)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return (f"a symbolic link loop (it leads back to itself through "
                    f"{os.readlink(full)!r}); remove the link")
        return f"a broken link to {os.readlink(full)!r} ({exc.strerror}); remove or fix it"
    return None


def _follow(root, real_root, dirpath, rel, excluded, scanned, linked) -> bool:
    """Whether the walk enters sub-folder ``rel`` of ``dirpath``; if not, it is listed."""
    name = rel.rsplit("/", 1)[1]
    if name.startswith("."):
        excluded.append(_hidden(rel, True))
        return False
    if not _utf8(name):
        excluded.append((rel + "/", "folder " + NOT_UTF8 + "; not scanned"))
        return False
    full = os.path.join(dirpath, name)
    if not os.path.islink(full):
        return True
    target = os.path.realpath(full)
    if _within(target, real_root):
        inside = Path(target).relative_to(real_root).as_posix()
        excluded.append((rel + "/", f"link to '{inside}/' inside the data folder; not "
                                    "followed (its images are scanned where they are)"))
        return False
    if _within(real_root, target):
        excluded.append((rel + "/", "link to a folder that holds the data folder; not "
                                    "followed (it would scan the data folder again)"))
        return False
    for done, done_rel in scanned.items():
        if _within(target, done) or _within(done, target):
            excluded.append((rel + "/", f"link to a folder already scanned as "
                                        f"'{done_rel}/' (or holding it); not scanned twice"))
            return False
    scanned[target] = rel
    linked.append(full)
    return True


def regular_stat(full: str):
    """``os.stat`` of a regular file, else the reason it is left out (never opens it)."""
    try:
        st = os.stat(full)
    except OSError as exc:
        return _not_regular(full, exc) or f"cannot read file ({exc.strerror})"
    if not stat.S_ISREG(st.st_mode):
        return _not_regular(full, st=st)
    return st


_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISDIR, "a folder"))


def _not_regular(full: str, exc: OSError | None = None, st=None) -> str | None:
    """Why ``full`` is not a regular file (None when it is one)."""
    if exc is None and st is None:
        try:
            st = os.stat(full)
        except OSError as err:
            exc = err
    if exc is not None:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop (it never reaches a file); fix or remove the link"
        if os.path.islink(full):
            return (f"broken link to '{shown(os.readlink(full))}' (which does not exist); "
                    "fix or remove the link")
        return None
    if stat.S_ISREG(st.st_mode):
        return None
    kind = next((k for test, k in _KINDS if test(st.st_mode)), "not a file")
    return f"not a regular file ({kind}); left out without opening it"


def _drop_second_copies(found: list, excluded: list):
    """Keep each file (device, inode) once across ``found`` (one list per class), in place."""
    seen = {}
    for c, images in enumerate(found):
        for k, (_rel, _full, st, _via) in enumerate(images):
            seen.setdefault((st.st_dev, st.st_ino), []).append((c, k))
    drop = set()
    for places in seen.values():
        if len(places) < 2:
            continue

        def rank(place):
            rel, full, _st, via = found[place[0]][place[1]]
            return (os.path.islink(full) or via, place)

        keep = min(places, key=rank)
        kept = found[keep[0]][keep[1]][0]
        for place in places:
            if place == keep:
                continue
            rel, full, _st, via = found[place[0]][place[1]]
            how = "reached through a link" if os.path.islink(full) or via else "a hard link"
            excluded.append((rel, f"same file as '{kept}' ({how}); left out so that the "
                                  "image has one label and one split"))
            drop.add(place)
    for c, images in enumerate(found):
        images[:] = [im for k, im in enumerate(images) if (c, k) not in drop]


def check_classes(root: Path, classes: list, labels, min_per_class: int):
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
