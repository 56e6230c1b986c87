"""The blob store: one file per blob, and batches packed into one fsynced pack file."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from outbox import blobs as blobs_mod
from outbox.blobs import BlobStore, PackIndex
from tests.conftest import REPO


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def packs(root: Path) -> list[Path]:
    return sorted((root / "packs").rglob("*.pack"))


def test_a_batch_is_invisible_until_synced_then_every_blob_reads_back(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    data = [f"mail {i}".encode() * (i + 1) for i in range(50)]
    batch = store.batch()
    refs = [batch.put_bytes(d, mime="message/rfc822") for d in data]
    assert [r.sha256 for r in refs] == [sha(d) for d in data]
    assert [r.size for r in refs] == [len(d) for d in data]
    assert refs[0].mime == "message/rfc822"
    assert not any(store.exists(r.sha256) for r in refs)  # nothing durable, nothing visible
    batch.sync()
    assert len(packs(tmp_path / "blobs")) == 1  # one file for the whole batch
    for d, r in zip(data, refs, strict=True):
        assert store.exists(r.sha256) and store.size(r.sha256) == len(d)
        assert store.read(r.sha256) == d
        assert sha(b"".join(store.iter_chunks(r.sha256))) == r.sha256
    assert store.read(refs[7].sha256, limit=3) == data[7][:3]
    with pytest.raises(RuntimeError):
        batch.put_bytes(b"too late")


def test_another_process_reads_packed_blobs_and_never_appends_to_a_foreign_pack(
        tmp_path: Path) -> None:
    first = BlobStore(tmp_path / "blobs")
    with first.batch() as b:
        a = b.put_bytes(b"first writer")
    first.close()
    second = BlobStore(tmp_path / "blobs")
    assert second.read(a.sha256) == b"first writer"
    with second.batch() as b:
        c = b.put_bytes(b"second writer")
    assert len(packs(tmp_path / "blobs")) == 2
    assert second.read(c.sha256) == b"second writer"
    assert first.read(c.sha256) == b"second writer"  # the first sees the new pack


def test_known_blobs_and_repeats_are_not_written_again(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    lone = store.put_bytes(b"already a file")  # the one-file-per-blob path, unchanged
    assert store.path(lone.sha256).is_file()
    with store.batch() as b:
        b.put_bytes(b"x" * 100)
        b.put_bytes(b"x" * 100)
        b.put_bytes(b"already a file")
    with store.batch() as b:
        b.put_bytes(b"x" * 100)  # packed by the batch before
        b.put_bytes(b"y" * 10)
    assert sum(p.stat().st_size for p in packs(tmp_path / "blobs")) == 110


def test_a_failed_pack_write_indexes_nothing_and_the_next_batch_starts_a_new_pack(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = BlobStore(tmp_path / "blobs")
    with store.batch() as b:
        ok = b.put_bytes(b"before")

    def fsync_fails(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(blobs_mod.os, "fsync", fsync_fails)
    failed = store.batch()
    lost = failed.put_bytes(b"never durable")
    with pytest.raises(OSError):
        failed.sync()
    monkeypatch.undo()
    assert not store.exists(lost.sha256)
    retry = store.batch()
    retry.put_bytes(b"never durable")
    retry.sync()  # the rerun writes it again, into a fresh pack
    assert store.read(lost.sha256) == b"never durable" and store.read(ok.sha256) == b"before"
    assert len(packs(tmp_path / "blobs")) == 2


def test_packs_roll_over_at_the_size_limit(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blobs_mod, "PACK_MAX", 1000)
    store = BlobStore(tmp_path / "blobs")
    refs = []
    for i in range(5):
        with store.batch() as b:
            refs.append(b.put_bytes(bytes([i]) * 600))
    assert len(packs(tmp_path / "blobs")) == 3  # 600+600 | 600+600 | 600
    assert [store.read(r.sha256) for r in refs] == [bytes([i]) * 600 for i in range(5)]


def test_an_index_row_exists_only_for_fsynced_bytes_even_when_killed(tmp_path: Path) -> None:
    """SIGKILL after the pack write but before the index commit: the blobs are not visible
    (so no commit could have referenced them) and writing them again works."""
    code = textwrap.dedent(f"""
        import os, signal
        from outbox.blobs import BlobStore, PackIndex
        def die(self, pack, locations):
            os.kill(os.getpid(), signal.SIGKILL)
        PackIndex.add = die
        b = BlobStore({str(tmp_path / "blobs")!r}).batch()
        b.put_bytes(b"half way")
        b.sync()
    """)
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         timeout=60)
    assert res.returncode == -9
    store = BlobStore(tmp_path / "blobs")
    assert not store.exists(sha(b"half way"))
    assert len(packs(tmp_path / "blobs")) == 1  # an unreferenced pack: garbage, not a loss
    with store.batch() as b:
        b.put_bytes(b"half way")
    assert store.read(sha(b"half way")) == b"half way"


def test_the_index_is_committed_with_full_sync(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    with store.batch() as b:
        ref = b.put_bytes(b"durable")
    conn = store.packs._db()
    assert conn is not None
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    with sqlite3.connect(tmp_path / "blobs" / "packs" / blobs_mod.PACK_INDEX) as other:
        pack, offset, size = other.execute("SELECT pack, offset, size FROM packed WHERE "
                                           "sha256 = ?", (ref.sha256,)).fetchone()
    with open(tmp_path / "blobs" / pack, "rb") as fh:
        fh.seek(offset)
        assert fh.read(size) == b"durable"


def test_missing_blobs_raise_file_not_found(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    absent = sha(b"absent")
    assert not store.exists(absent) and PackIndex(tmp_path / "blobs" / "packs").find(absent) is None
    with pytest.raises(FileNotFoundError):
        store.read(absent)
    with pytest.raises(FileNotFoundError):
        store.size(absent)
    with store.batch() as b:
        b.put_bytes(b"something")
    with pytest.raises(FileNotFoundError):
        store.open(absent)
    assert os.path.isdir(tmp_path / "blobs" / "tmp")
