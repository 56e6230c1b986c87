"""Content-addressed blob folder.

Two ways in, both durable before they return, both safe to use before the database commit that
references the blobs (an unreferenced blob is garbage, never a loss):

* One file per blob (:meth:`BlobStore.put_stream`, :meth:`BlobStore.put_bytes`): streamed into
  a temporary file while hashing, fsynced, renamed to ``ab/cd/<sha256>``, folder fsynced. For
  large or lone blobs.
* A batch (:meth:`BlobStore.batch`): many small blobs a connector fetched together are appended
  to ONE pack file (``packs/ab/<random>.pack``) and made durable together by
  :meth:`BlobBatch.sync`: one fsync of the pack, one of its folder, then one commit of their
  locations (sha256 → pack, offset, size) into the pack index ``packs/index.sqlite``
  (``synchronous=FULL``). Until ``sync`` returns no blob of the batch is visible, so a store
  commit made after it never references a blob that is not durable. A crash before the index
  commit leaves an unreferenced pack file (garbage); rerunning writes the blobs again.

Readers do not care where a blob lives: :meth:`BlobStore.open`, :meth:`BlobStore.read` and
:meth:`BlobStore.exists` look for the file first, then in the pack index.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import sqlite3
import tempfile
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, NamedTuple

from connectors.base import BlobRef

logger = logging.getLogger(__name__)

CHUNK = 1024 * 1024
PACK_INDEX = "index.sqlite"
PACK_MAX = 64 * 1024 * 1024  # a pack is rolled over once it holds this many bytes
_LOOKUP_CHUNK = 500  # sha256 values per IN (...) query (well under SQLite's variable limit)


class BlobTooLarge(ValueError):
    """Raised when a stream exceeds the size limit while being written."""


class PackedBlob(NamedTuple):
    """Where a packed blob lives."""

    pack: str  # path relative to the blob root
    offset: int
    size: int


class BlobStore:
    """A folder of immutable blobs named by their sha256."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._tmp = self.root / "tmp"
        self._tmp.mkdir(exist_ok=True)
        self.packs = PackIndex(self.root / "packs")
        self._pack_writer = PackWriter(self.root, self.packs.root)
        self._pack_lock = threading.Lock()

    def path(self, sha256: str) -> Path:
        """Return where a blob's own file lives (it may not exist: the blob may be packed)."""
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def exists(self, sha256: str) -> bool:
        """Tell whether a blob is stored (as its own file or in a pack)."""
        return self.path(sha256).is_file() or self.packs.find(sha256) is not None

    def size(self, sha256: str) -> int:
        """The size of a stored blob in bytes.

        Raises:
            FileNotFoundError: if the blob is not stored.
        """
        try:
            return self.path(sha256).stat().st_size
        except FileNotFoundError:
            return self._packed(sha256).size

    def batch(self) -> BlobBatch:
        """Start a batch of small blobs made durable together (see :class:`BlobBatch`)."""
        return BlobBatch(self)

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
        """Open a blob for reading (a packed blob reads only its own bytes of the pack).

        Raises:
            FileNotFoundError: if the blob is not stored.
        """
        try:
            return open(self.path(sha256), "rb")
        except FileNotFoundError:
            loc = self._packed(sha256)
        fh = open(self.root / loc.pack, "rb")
        return io.BufferedReader(_Slice(fh, loc.offset, loc.size))  # type: ignore[return-value]

    def _packed(self, sha256: str) -> PackedBlob:
        loc = self.packs.find(sha256)
        if loc is None:
            raise FileNotFoundError(f"no blob {sha256}")
        return loc

    def write_packed(self, blobs: Sequence[tuple[str, bytes]]) -> None:
        """Append (sha256, bytes) pairs to this store's pack, fsync it, then commit their
        locations to the index: durable and readable when this returns (see :class:`BlobBatch`,
        which hashes them)."""
        with self._pack_lock:
            pack, locations = self._pack_writer.append(blobs)
            self.packs.add(pack, locations)

    def close(self) -> None:
        """Close the active pack and the pack index connection (both reopen on next use)."""
        with self._pack_lock:
            self._pack_writer.close()
        self.packs.close()

    def read(self, sha256: str, limit: int | None = None) -> bytes:
        """Read a blob (or its first ``limit`` bytes)."""
        with self.open(sha256) as fh:
            return fh.read() if limit is None else fh.read(limit)

    def iter_chunks(self, sha256: str) -> Iterator[bytes]:
        """Yield a blob's content in chunks."""
        with self.open(sha256) as fh:
            while chunk := fh.read(CHUNK):
                yield chunk


class BlobBatch:
    """Small blobs written together and made durable together (one pack file, one fsync).

    :meth:`put_bytes` only hashes and buffers; nothing is on disk and nothing is readable until
    :meth:`sync` has returned. Call ``sync`` BEFORE the store commit that references the blobs
    (a connector does it before it hands its batch over). Used as a context manager, a clean
    exit syncs. A batch holds its blobs in memory until ``sync``: keep it to what one fetch
    holds (large blobs go through :meth:`BlobStore.put_stream`).
    """

    def __init__(self, store: BlobStore) -> None:
        self.store = store
        self._blobs: dict[str, bytes] = {}
        self.synced = False

    def __len__(self) -> int:
        return len(self._blobs)

    def put_bytes(
        self,
        data: bytes,
        *,
        mime: str = "application/octet-stream",
        filename: str | None = None,
        role: str | None = None,
    ) -> BlobRef:
        """Add bytes to the batch; the ref is valid for a commit only after :meth:`sync`."""
        sha = self.add(data)
        return BlobRef(sha256=sha, mime=mime, size=len(data), filename=filename, role=role)

    def add(self, data: bytes) -> str:
        """Add bytes to the batch and return their sha256 (hex): :meth:`put_bytes` without
        the :class:`BlobRef`, for connectors that add many (valid only after :meth:`sync`)."""
        if self.synced:
            raise RuntimeError("this blob batch is already synced; start a new one")
        sha = hashlib.sha256(data).hexdigest()
        self._blobs.setdefault(sha, data)
        return sha

    def sync(self) -> None:
        """Append the batch's new blobs to the store's pack file and fsync it, then commit their
        locations to the pack index. When this returns, every blob of the batch is durable."""
        if self.synced:
            return
        root = str(self.store.root)
        # a blob stored as its own file is not packed again; its bucket folder (ab/) must
        # exist, and one listing of them spares a stat per blob where few are files
        buckets = set(os.listdir(root))
        new = [sha for sha in self.store.packs.missing(list(self._blobs))
               if sha[:2] not in buckets
               or not os.path.isfile(f"{root}/{sha[:2]}/{sha[2:4]}/{sha}")]  # (not pathlib: hot)
        if new:
            self.store.write_packed([(sha, self._blobs[sha]) for sha in new])
        self._blobs.clear()
        self.synced = True

    def __enter__(self) -> BlobBatch:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.sync()


class PackWriter:
    """Appends batches to this process's own pack file (``packs/ab/<random>.pack``), rolled
    over at :data:`PACK_MAX`; no other writer ever appends to it. A batch costs one fsync of
    the pack (plus one of its folder when the pack is new). A failed or torn append is never
    indexed; the writer then starts a new pack, so offsets always match what is on disk."""

    def __init__(self, store_root: Path, packs_root: Path) -> None:
        self._store_root = store_root
        self._packs_root = packs_root
        self._fh: BinaryIO | None = None
        self._rel = ""
        self._offset = 0

    def append(self, blobs: Sequence[tuple[str, bytes]]) -> tuple[str, list[tuple[str, int, int]]]:
        """Write and fsync; returns (pack path relative to the blob root, [(sha, offset, size)])."""
        if self._fh is None or self._offset >= PACK_MAX:
            self._open_new()
        assert self._fh is not None
        locations: list[tuple[str, int, int]] = []
        offset = self._offset
        try:
            for sha, data in blobs:
                self._fh.write(data)
                locations.append((sha, offset, len(data)))
                offset += len(data)
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except BaseException:
            self.close()
            raise
        self._offset = offset
        return self._rel, locations

    def _open_new(self) -> None:
        self.close()
        name = uuid.uuid4().hex
        folder = self._packs_root / name[:2]
        _make_dirs(folder)
        path = folder / f"{name}.pack"
        self._fh = open(path, "xb")  # kept open across batches, closed by close()
        _fsync_dir(folder)  # the new name is durable before any location points into it
        self._rel = str(path.relative_to(self._store_root))
        self._offset = 0

    def close(self) -> None:
        """Close the active pack; the next append starts a new one."""
        fh, self._fh = self._fh, None
        if fh is not None:
            try:
                fh.close()
            except OSError:
                logger.warning("closing a pack file failed", exc_info=True)


class PackIndex:
    """sha256 → (pack file, offset, size) for packed blobs: a small SQLite file next to the
    packs, committed with ``synchronous=FULL`` (durable when :meth:`add` returns)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def _db(self) -> sqlite3.Connection | None:
        """The index connection, or None while nothing was ever packed (readers only)."""
        if self._conn is not None and self._pid != os.getpid():
            self._conn = None  # inherited through fork: SQLite connections must not cross it
        if self._conn is None:
            path = self.root / PACK_INDEX
            if not path.is_file():
                return None
            self._conn, self._pid = _open_index(path), os.getpid()
        return self._conn

    def _db_for_write(self) -> sqlite3.Connection:
        conn = self._db()
        if conn is None:
            _make_dirs(self.root)
            conn = self._conn = _open_index(self.root / PACK_INDEX)
            self._pid = os.getpid()
            _fsync_dir(self.root)
        return conn

    def find(self, sha256: str) -> PackedBlob | None:
        """Where a blob is packed, or None."""
        with self._lock:
            conn = self._db()
            if conn is None:
                return None
            row = conn.execute("SELECT pack, offset, size FROM packed WHERE sha256 = ?",
                               (sha256,)).fetchone()
        return PackedBlob(*row) if row else None

    def missing(self, shas: Sequence[str]) -> list[str]:
        """The given sha256 values not packed yet (in the given order)."""
        with self._lock:
            conn = self._db()
            if conn is None:
                return list(shas)
            known: set[str] = set()
            for i in range(0, len(shas), _LOOKUP_CHUNK):
                part = shas[i:i + _LOOKUP_CHUNK]
                marks = ",".join("?" * len(part))
                known.update(r[0] for r in conn.execute(
                    f"SELECT sha256 FROM packed WHERE sha256 IN ({marks})", part))
        return [s for s in shas if s not in known]

    def add(self, pack: str, locations: Sequence[tuple[str, int, int]]) -> None:
        """Record a durable pack's blobs in one transaction (fsynced by SQLite)."""
        with self._lock:
            conn = self._db_for_write()
            with conn:
                conn.executemany("INSERT OR IGNORE INTO packed (sha256, pack, offset, size) "
                                 "VALUES (?, ?, ?, ?)",
                                 [(sha, pack, off, size) for sha, off, size in locations])

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _open_index(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=30, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")  # a committed location survives power loss
    conn.execute("CREATE TABLE IF NOT EXISTS packed (sha256 TEXT PRIMARY KEY, pack TEXT NOT "
                 "NULL, offset INTEGER NOT NULL, size INTEGER NOT NULL) WITHOUT ROWID")
    return conn


class _Slice(io.RawIOBase):
    """A read-only view of ``size`` bytes at ``offset`` of an open file."""

    def __init__(self, fh: BinaryIO, offset: int, size: int) -> None:
        self._fh = fh
        self._start = offset
        self._left = size
        fh.seek(offset)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self._left)
        if n <= 0:
            return 0
        got = self._fh.readinto(memoryview(buffer)[:n])  # type: ignore[attr-defined]
        if not got:
            raise OSError(f"pack file truncated at offset {self._start}")
        self._left -= got
        return int(got)

    def close(self) -> None:
        if not self.closed:
            self._fh.close()
        super().close()


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
