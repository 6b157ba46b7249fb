"""The one atomic file writer of the package: readers see the old file or the whole new one,
never half of it, whatever kills the writer. At the bottom of the layers, so that every module
(run folders, caches, checkpoints, the hardware probe) can use it."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

__all__ = ["atomic_open", "atomic_write"]


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w"):
    """Open ``path`` for writing so that readers only ever see the old or the whole new file.

    Writes go to a unique temporary file in the same folder (two writers of one path never
    share it), which is flushed, fsynced and renamed over ``path`` when the block ends; an
    exception (or a kill) leaves ``path`` untouched and removes the temporary file. ``mode`` is
    ``"w"`` (text) or ``"wb"`` (bytes). The new file keeps the permission bits of the file it
    replaces, or gets what ``open`` would give a new file (0666 less the umask), not the 0600
    of the temporary file.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'w' or 'wb'; got {mode!r}")
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, stat.S_IMODE(target.stat().st_mode) if target.exists() else 0o666 & ~_umask())
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` (text or bytes) to ``path`` atomically (:func:`atomic_open`)."""
    with atomic_open(path, "wb" if isinstance(data, bytes) else "w") as fh:
        fh.write(data)
    return Path(path)
