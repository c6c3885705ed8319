"""File helpers every stage shares: atomic writes, content hashes, output folders.

A file this package writes is either the old one or the complete new one,
never half of either: :func:`atomic_write` writes to a temporary name in the
same folder, fsyncs, and renames over the target.  :func:`output_folder` and
:func:`writing_into` turn the ways an output folder can refuse a write (a
file in the way, permissions, a read-only or full file system, a name too
long) into a :class:`~pipeline.errors.StoreError` naming the folder and the fix.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
from contextlib import contextmanager
from pathlib import Path

from .errors import StoreError, WorkbenchError, opt

#: Bytes the longest name derived from a file takes beyond its own name: the
#: temporary name of :func:`atomic_path` (``.<name>.<pid>.tmp<suffix>``) and a
#: file moved aside (``<name>.corrupt-YYYYmmddTHHMMSS``).
DERIVED_NAME_ROOM = 24


@contextmanager
def atomic_write(path, mode: str = "wb", encoding: str | None = None, exclusive: bool = False,
                 newline: str | None = None):
    """``with atomic_write(path) as fh``: write ``path`` as a whole or not at all.

    Yields a file object on a temporary name beside ``path``; on a clean exit
    it is flushed, fsynced and renamed over ``path`` (``exclusive``: refuse,
    with :class:`FileExistsError`, when ``path`` exists by then); on an error
    the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode, encoding=encoding, newline=newline) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        if exclusive:
            os.link(tmp, path)  # fails if path exists; atomic on POSIX
            tmp.unlink()
        else:
            os.replace(tmp, path)
    except OSError as exc:
        _name_file(exc, path, tmp)
        raise
    finally:
        _remove_temporary(tmp)


@contextmanager
def atomic_path(path):
    """``with atomic_path(path) as tmp``: for writers that take a file name (h5py, torch,
    np.savez): they write ``tmp``, which replaces ``path`` on a clean exit."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    try:
        # Created here first: a folder that refuses it (read-only, full, not permitted)
        # fails as an OSError naming the file, whatever the writer would raise (torch: a
        # RuntimeError).
        open(tmp, "wb").close()
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _name_file(exc, path, tmp)
        raise
    finally:
        _remove_temporary(tmp)


def _remove_temporary(tmp: Path) -> None:
    """Remove ``tmp`` if it is there; never raise (on a read-only file system unlinking
    even a missing file fails, and that error would hide the one that names the file)."""
    try:
        tmp.unlink()
    except OSError:
        pass


def _name_file(exc: OSError, path: Path, tmp: Path) -> None:
    """Make ``exc`` name ``path`` when it names no file (a failed ``fsync`` or ``write``) or
    only the temporary file beside it (a read-only folder refusing to create it), so the
    message says which file could not be written, and the option that chose it."""
    if exc.filename is None or os.fspath(exc.filename) == os.fspath(tmp):
        exc.filename = os.fspath(path)


def refuse_existing(path, overwrite: bool, param: str = "out") -> None:
    """:class:`StoreError` when ``path`` (a file to write; None: nothing) exists and
    ``overwrite`` is not set: an output is never replaced silently.  ``param``: the
    option that named it."""
    if path and Path(path).exists() and not overwrite:
        raise StoreError(f"{path} exists; pass {opt('overwrite', 'True')} or another "
                         f"{opt(param)}", param=param)


def read_regular(path) -> bytes:
    """The bytes of ``path``, refusing (with :class:`OSError`) anything that is not a
    regular file without blocking: a FIFO or device that took the place of a file
    since the folder was scanned is opened non-blocking and never read."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{os.fspath(path)} is not a regular file")
        return fh.read()


def sha256_file(path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_text(text: str) -> str:
    """Hex SHA-256 of a string (UTF-8)."""
    return hashlib.sha256(text.encode()).hexdigest()


def human_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 kB'`` (powers of 1000, as ``df -H``)."""
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def free_bytes(folder) -> int:
    """Free bytes for this user on the file system of ``folder`` (or its nearest parent)."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def output_folder(path, param: str = "out") -> Path:
    """Make sure file ``path`` can be created: its folder exists (made if needed), is a
    folder, and the name fits the file system with room for the names derived from it.

    Raises :class:`StoreError` naming the folder at fault and the option ``param``.
    """
    path = Path(path)
    folder = path.parent
    if path.is_dir():
        raise StoreError(f"{path} is a folder, where the file {path.name} should be written; "
                         f"remove it or pass another {opt(param)}", param=param)
    blocker = next((p for p in (folder, *folder.parents) if p.exists() or p.is_symlink()),
                   None)
    if blocker is not None and not blocker.is_dir():
        raise StoreError(f"{blocker} is an existing file, not a folder, so {path.name} cannot "
                         f"be written under it; pass {opt(param)} a folder (or a path ending "
                         f"in .h5 to name the store file)", param=param)
    name_max = _name_max(blocker or Path("."))
    need = len(os.fsencode(path.name)) + DERIVED_NAME_ROOM
    if need > name_max:
        raise StoreError(
            f"the file name {path.name!r} is too long for the file system of {folder}: "
            f"{len(os.fsencode(path.name))} bytes, and with the {DERIVED_NAME_ROOM} bytes its "
            f"temporary names add it must stay within {name_max}; pass {opt(param, 'FILE.h5')} "
            f"to name the store yourself (e.g. {folder / 'photos.h5'}) or rename the folder "
            "it is named after", param=param)
    with writing_into(folder, param):
        folder.mkdir(parents=True, exist_ok=True)
    return folder


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


@contextmanager
def writing_into(folder, param: str = "out", on_full: str = ""):
    """Turn an :class:`OSError` of writing into ``folder`` into a :class:`StoreError` that
    names the folder and the fix (``on_full``: what to add when the disk is full).
    Errors this package raises on purpose, and other errors, pass unchanged."""
    try:
        yield
    except WorkbenchError:
        raise
    except OSError as exc:
        err = output_error(exc, Path(folder), param, on_full)
        if err is None:
            raise
        raise err from None


def output_error(exc: OSError, folder: Path, param: str | None = "out",
                 on_full: str = "") -> StoreError | None:
    """The :class:`StoreError` for ``exc`` raised while writing into ``folder`` (None when
    it is not one of the ways a folder refuses a write).  ``param``: the option that
    chooses the folder, or None when no option does."""
    own = exc.filename and Path(os.fsdecode(exc.filename)) != folder
    what = f"{exc.filename} (in {folder})" if own else f"into {folder}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        free = human_bytes(free_bytes(folder))
        return StoreError(
            f"No space left on device writing {what}, {free} free"
            f"{': ' + on_full if on_full else ''}; free some space"
            f"{f' (or pass {opt(param)} on another disk)' if param else ''} and run the same "
            "command again", param=param)
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        existing = next((p for p in (folder, *folder.parents) if p.exists()), folder)
        if exc.errno == errno.EROFS:
            fix = f"or remount {existing} read-write"
        else:
            fix = f"or make {existing} writable for you (chmod u+w)"
        why = "read-only file system" if exc.errno == errno.EROFS else "permission denied"
        fix = f"pass {opt(param)} a folder you can write to, {fix}" if param else fix[3:]
        return StoreError(f"cannot write {what} ({why}); {fix}", param=param)
    if exc.errno == errno.ENAMETOOLONG:
        name = str(exc.filename or folder)
        return StoreError(f"the name {name!r} is too long for the file system; pass a "
                          f"shorter {opt(param or 'name')}", param=param)
    if exc.errno in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        fix = f"pass another {opt(param)}" if param else "move it away"
        return StoreError(f"cannot write {what}: {exc.strerror}; a file is in the way of "
                          f"the output folder {folder}: {fix}", param=param)
    return None
