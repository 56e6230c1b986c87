"""Fixtures shared by the store tests: a real SQLite store file with its blob folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from outbox.blobs import BlobStore
from outbox.store import open_store
from outbox.store.sql import SqlStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlStore]:
    s = open_store(f"sqlite:///{tmp_path / 'hub.db'}", BlobStore(tmp_path / "blobs"))
    yield s
    s.close()
