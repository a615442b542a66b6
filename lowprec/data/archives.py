"""Read selected text members out of package archives: Python sdists and Debian .deb files.

Pure Python (tarfile plus a few lines for the ``ar`` container of a .deb), so assembling the
corpus needs neither dpkg nor unpacking whole packages to disk.
"""

from __future__ import annotations

import fnmatch
import io
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path

_AR_MAGIC = b"!<arch>\n"
_AR_HEADER = 60


def read_members(archive: str | Path, include: Sequence[str],
                 exclude: Sequence[str] = ()) -> Iterator[tuple[str, bytes]]:
    """(path, bytes) of the regular files whose path matches a pattern of ``include`` and none
    of ``exclude`` (fnmatch; ``*`` also crosses ``/``), in sorted path order."""
    archive = Path(archive)
    with _open_tar(archive) as tar:
        members = {}
        for m in tar.getmembers():
            path = m.name.removeprefix("./")
            if m.isfile() and _matches(path, include) and not _matches(path, exclude):
                members[path] = m
        for path in sorted(members):
            yield path, tar.extractfile(members[path]).read()


def _matches(path: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(path, p) for p in patterns)


def _open_tar(archive: Path) -> tarfile.TarFile:
    if archive.name.endswith(".deb"):
        return tarfile.open(fileobj=io.BytesIO(_deb_data(archive)), mode="r:*")
    if archive.name.endswith((".tar.gz", ".tgz", ".tar.xz", ".tar.bz2", ".tar")):
        return tarfile.open(archive, mode="r:*")
    raise ValueError(f"unknown archive type: {archive.name}; known: .deb, .tar.gz, .tgz, "
                     ".tar.xz, .tar.bz2, .tar")


def _deb_data(path: Path) -> bytes:
    """The ``data.tar.*`` member of a .deb (an ``ar`` archive)."""
    blob = path.read_bytes()
    if not blob.startswith(_AR_MAGIC):
        raise ValueError(f"{path} is not a Debian package (no ar header)")
    pos = len(_AR_MAGIC)
    while pos + _AR_HEADER <= len(blob):
        header = blob[pos:pos + _AR_HEADER]
        name = header[:16].decode("ascii").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        pos += _AR_HEADER
        if name.startswith("data.tar"):
            if name.endswith(".zst"):
                raise ValueError(f"{path}: zstd-compressed {name} is not supported")
            return blob[pos:pos + size]
        pos += size + (size & 1)
    raise ValueError(f"{path} has no data.tar member")
