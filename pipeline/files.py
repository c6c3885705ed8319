"""File helpers every stage shares: atomic writes and content hashes.

A file this package writes is either the old one or the complete new one,
never half of either: :func:`atomic_write` writes to a temporary name in the
same folder, fsyncs, and renames over the target.
"""

from __future__ import annotations

import hashlib
import os
import stat
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_write(path, mode: str = "wb", encoding: str | None = None, exclusive: bool = False):
    """``with atomic_write(path) as fh``: write ``path`` as a whole or not at all.

    Yields a file object on a temporary name beside ``path``; on a clean exit
    it is flushed, fsynced and renamed over ``path`` (``exclusive``: refuse,
    with :class:`FileExistsError`, when ``path`` exists by then); on an error
    the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode, encoding=encoding) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        if exclusive:
            os.link(tmp, path)  # fails if path exists; atomic on POSIX
            tmp.unlink()
        else:
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_path(path):
    """``with atomic_path(path) as tmp``: for writers that take a file name (h5py, torch,
    np.savez): they write ``tmp``, which replaces ``path`` on a clean exit."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
