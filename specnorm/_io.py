"""Atomic file writes, shared by every file specnorm writes for later reading (cache entries, stats files).

A writer writes a temporary file of its own (`tempfile.mkstemp`) in the target's folder and renames it
into place (`os.replace`, atomic on one file system): readers see the old file or the new one, never a
part of one, and concurrent writers (threads, processes, DataLoader workers) never collide.
"""

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], object], what: str | None = None) -> None:
    """Write `path` by calling `write(f)` on a temporary file of this writer's own, then rename it into place.

    OS errors name `what` (default: the path), never the temporary file, which is removed on any error.
    """
    path = Path(path)
    what = what or str(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise type(e)(e.errno, f"cannot write {what}: {e.strerror} (in folder {path.parent})") from e
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise type(e)(e.errno, f"cannot write {what}: {e.strerror}") from e
        raise
