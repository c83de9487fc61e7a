"""Atomic writes: a file is either the old one or the complete new one, never half-written."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cnnlab.errors import CnnlabError


def check_output(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path if its folder exists and is writable and ``path`` is no folder
    (checked before a long run, not after it)."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        above = next((p for p in (folder, *folder.parents) if p.exists()), None)
        if above is not None and not above.is_dir():
            raise CnnlabError(f"{str(above)!r} is a file, not a folder (for {str(target)!r})")
        raise CnnlabError(f"folder {str(folder)!r} does not exist (for {str(target)!r})")
    if target.is_dir():
        raise CnnlabError(f"{str(target)!r} is a folder, not a file name")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CnnlabError(f"folder {str(folder)!r} is not writable (for {str(target)!r})")
    return target


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and ``os.replace`` it.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    target = check_output(path)
    folder = target.parent if str(target.parent) else Path(".")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    tmp = Path(tmp_name)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would outlive the rename
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
        with contextlib.suppress(OSError):  # make the rename durable where the OS allows
            dir_fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    except OSError as exc:
        if not exc.filename:  # a full disk says which file it was writing
            exc.filename = str(target)
        raise
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
