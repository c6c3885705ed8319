"""One writer per store: an exclusive lock file that names its holder.
"""

from __future__ import annotations

import errno
import fcntl
import os
import platform
from contextlib import contextmanager
from pathlib import Path

from ..errors import StoreError, opt


@contextmanager
def write_lock(store_path: Path):
    """Hold an exclusive lock on ``<store>.lock`` or fail at once naming the holder."""
    lock_path = Path(str(store_path) + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(lock_path, "a+")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise StoreError(
                f"{store_path} is being written by {holder}; wait for it to finish "
                f"or pass another {opt('out')}", param="out"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {platform.node()}")
        fh.flush()
        yield
    finally:
        fh.close()  # closing releases the flock
