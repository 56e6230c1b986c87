"""Content-addressed blob folder.

Blobs are written by streaming into a temporary file in the same folder while hashing, fsynced,
then renamed to ``ab/cd/<sha256>``. Writing a blob is idempotent and safe to do before the
database commit that references it: an unreferenced blob is garbage, never a loss.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from connectors.base import BlobRef

CHUNK = 1024 * 1024


class BlobTooLarge(ValueError):
    """Raised when a stream exceeds the size limit while being written."""


class BlobStore:
    """A folder of immutable blobs named by their sha256."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._tmp = self.root / "tmp"
        self._tmp.mkdir(exist_ok=True)

    def path(self, sha256: str) -> Path:
        """Return where a blob lives (it may not exist)."""
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def exists(self, sha256: str) -> bool:
        """Tell whether a blob is stored."""
        return self.path(sha256).is_file()

    def put_stream(
        self,
        stream: BinaryIO,
        *,
        mime: str = "application/octet-stream",
        filename: str | None = None,
        role: str | None = None,
        max_size: int | None = None,
    ) -> BlobRef:
        """Stream a file-like object into the store without reading it whole.

        Raises:
            BlobTooLarge: if more than ``max_size`` bytes arrive (nothing is kept).
        """
        digest = hashlib.sha256()
        size = 0
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp, prefix="blob-")
        try:
            with os.fdopen(fd, "wb") as out:
                while True:
                    chunk = stream.read(CHUNK)
                    if not chunk:
                        break
                    size += len(chunk)
                    if max_size is not None and size > max_size:
                        raise BlobTooLarge(f"larger than {max_size} bytes")
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            sha = digest.hexdigest()
            self._install(tmp_name, sha)
        except BaseException:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)
            raise
        return BlobRef(sha256=sha, mime=mime, size=size, filename=filename, role=role)

    def put_bytes(
        self,
        data: bytes,
        *,
        mime: str = "application/octet-stream",
        filename: str | None = None,
        role: str | None = None,
    ) -> BlobRef:
        """Store bytes already in memory (small payloads)."""
        sha = hashlib.sha256(data).hexdigest()
        if not self.path(sha).is_file():
            fd, tmp_name = tempfile.mkstemp(dir=self._tmp, prefix="blob-")
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
                self._install(tmp_name, sha)
            except BaseException:
                if os.path.exists(tmp_name):
                    os.unlink(tmp_name)
                raise
        return BlobRef(sha256=sha, mime=mime, size=len(data), filename=filename, role=role)

    def _install(self, tmp_name: str, sha: str) -> None:
        """Move a fsynced temp file to its content address (or drop it if already there)."""
        final = self.path(sha)
        if final.is_file():
            os.unlink(tmp_name)
            return
        _make_dirs(final.parent)
        os.replace(tmp_name, final)
        _fsync_dir(final.parent)

    def put_file(self, path: str | os.PathLike[str], **kwargs: object) -> BlobRef:
        """Stream a file on disk into the store."""
        with open(path, "rb") as fh:
            return self.put_stream(fh, **kwargs)  # type: ignore[arg-type]

    def open(self, sha256: str) -> BinaryIO:
        """Open a blob for reading."""
        return open(self.path(sha256), "rb")

    def read(self, sha256: str, limit: int | None = None) -> bytes:
        """Read a blob (or its first ``limit`` bytes)."""
        with self.open(sha256) as fh:
            return fh.read() if limit is None else fh.read(limit)

    def iter_chunks(self, sha256: str) -> Iterator[bytes]:
        """Yield a blob's content in chunks."""
        with self.open(sha256) as fh:
            while chunk := fh.read(CHUNK):
                yield chunk


def _make_dirs(path: Path) -> None:
    """Create a blob's bucket folders, fsyncing each new entry's parent (power-loss safe)."""
    missing = []
    p = path
    while not p.is_dir():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir(exist_ok=True)
        _fsync_dir(d.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
