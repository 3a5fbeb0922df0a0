"""Write a file so that readers see the old content or the new one, never half of it."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def replace_with(path: Path, make: Callable[[Path], None], mode: int | None = None) -> Path:
    """Run make(tmp) to write a temp file beside `path`, then rename it over `path`; returns `path`.

    `mode` defaults to what a plain open() would give (0o666 less the umask). The temp file is removed
    on any failure, and the exception propagates.
    """
    if mode is None:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        make(Path(tmp))
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_atomic(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write `data` to a temp file beside `path`, fsync it, then rename it over `path` (replace_with)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())

    replace_with(path, write, mode)
