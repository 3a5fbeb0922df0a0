"""This project's own tree as one reproducible tar archive, in the PKGBUILD's source=() with its sha256.

Uncompressed on purpose: gzip output depends on the zlib build (Arch's zlib-ng differs from zlib), while the
tar bytes depend only on the files. Names are sorted, owner root, mtime fixed, modes 0644/0755 (symlinks
stay links); directories have no entries of their own, so an empty or cache-only one leaves no trace.
"""

from __future__ import annotations

import fnmatch
import io
import os
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path

MTIME = 946684800  # 2000-01-01T00:00:00Z (wheels cannot hold times before 1980)
SKIP = ("__pycache__", "*.egg-info", "*.pyc", ".pytest_cache", ".hypothesis")


def source_tar(root: Path, members: Sequence[str], top: str) -> bytes:
    """The files and symlinks of `members` (paths relative to `root`), each stored as `top/<path>`."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in sorted(_files(root, members)):
            _add(tar, root / rel, f"{top}/{rel}")
    return buf.getvalue()


def _files(root: Path, members: Sequence[str]) -> Iterator[str]:
    """Every file or symlink below the members, as a POSIX path relative to `root`, minus SKIP."""
    for member in members:
        path = root / member
        if not (path.is_dir() and not path.is_symlink()):
            path.lstat()  # a missing member is an error (OSError), not an empty package
            yield member
            continue
        for dirpath, dirnames, filenames in os.walk(path):  # not into symlinked directories: they stay links
            here = Path(dirpath)
            dirnames[:] = [d for d in dirnames if not _skipped(d)]
            for name in [*filenames, *(d for d in dirnames if (here / d).is_symlink())]:
                if not _skipped(name):
                    yield (here / name).relative_to(root).as_posix()


def _skipped(name: str) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in SKIP)


def _add(tar: tarfile.TarFile, path: Path, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.mtime, info.uid, info.gid, info.uname, info.gname = MTIME, 0, 0, "root", "root"
    if path.is_symlink():
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, os.readlink(path), 0o777
        tar.addfile(info)
        return
    data = path.read_bytes()
    info.size, info.mode = len(data), 0o755 if path.stat().st_mode & 0o111 else 0o644
    tar.addfile(info, io.BytesIO(data))
