"""Migration 2 on SQLite: the redundant timeline index dropped, the linking indexes partial."""

from __future__ import annotations

from pathlib import Path

import pytest

from outbox.blobs import BlobStore
from outbox.store import open_store
from outbox.store.sql import SqlStore
from tests.outbox.schema_checks import (
    check_migration_2,
    expected_indexes,
    nearby_statements,
    version_1_store,
)


def _indexes(store: SqlStore) -> dict[str, str]:
    return {r["name"]: r["sql"] or "" for r in
            store.query("SELECT name, sql FROM sqlite_master WHERE type = 'index'")}


def test_migration_2_keeps_every_lookup_and_timeline(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def open_fn() -> SqlStore:
        return open_store(f"sqlite:///{tmp_path / 'hub.db'}", BlobStore(tmp_path / "blobs"))

    store = check_migration_2(version_1_store(open_fn, monkeypatch), open_fn, _indexes)
    assert store.query("PRAGMA integrity_check")[0]["integrity_check"] == "ok"
    store.close()


def test_linking_lookups_read_the_partial_indexes(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'hub.db'}", BlobStore(tmp_path / "blobs"))
    try:
        for sql in nearby_statements():
            plan = " ".join(r["detail"] for r in
                            store.query("EXPLAIN QUERY PLAN " + sql, ["x"] * sql.count("?")))
            used = {w for w in plan.split() if w.startswith("cases_")}
            assert used == expected_indexes(sql), (sql, plan)
            assert "SCAN cases" not in plan
    finally:
        store.close()
