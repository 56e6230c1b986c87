"""Migration 2 on PostgreSQL: the redundant timeline index dropped, the linking indexes partial
(the same checks as tests/outbox/test_schema_indexes.py on SQLite)."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest

from normalizer.case import Case, Channel, Classification, Location, Origin, Reporter, case_id_for
from outbox.blobs import BlobStore
from outbox.store import open_store
from outbox.store.sql import SqlStore
from tests.outbox.schema_checks import (
    T0,
    check_migration_2,
    expected_indexes,
    nearby_statements,
    version_1_store,
)

pytestmark = pytest.mark.integration


def _indexes(store: SqlStore) -> dict[str, str]:
    return {r["indexname"]: r["indexdef"] for r in
            store.query("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = "
                        "current_schema()")}


def _value_for(before: str) -> object:
    """A plausible value for the placeholder that follows ``before`` in a nearby statement."""
    before = before.rstrip()
    # the keyword ending last (the first of equals: "received_at >=" before "=")
    last = max(("LIMIT", "lat BETWEEN", "lon BETWEEN", "received_at >=", "received_at <=",
                "=", "IN (", ","), key=lambda k: before.rfind(k) + len(k) if k in before else -1)
    return {"LIMIT": 50, "lat BETWEEN": 31.25, "lon BETWEEN": 121.45,
            "received_at >=": "2026-11-01T00:00:00.000000Z",  # the whole seeded period
            "received_at <=": "2026-12-01T00:00:00.000000Z"}.get(last, "x")


def test_migration_2_keeps_every_lookup_and_timeline_on_postgres(
        tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def open_fn() -> SqlStore:
        return open_store(pg_url, BlobStore(tmp_path / "blobs"))

    check_migration_2(version_1_store(open_fn, monkeypatch), open_fn, _indexes).close()


def test_linking_lookups_read_the_partial_indexes_on_postgres(tmp_path: Path,
                                                              pg_url: str) -> None:
    store = open_store(pg_url, BlobStore(tmp_path / "blobs"))
    try:
        with store.process_tx() as tx:  # enough spread-out cases for the planner to choose
            for i in range(3000):
                ref = f"p{i}"
                tx.save_case(Case(
                    case_id=case_id_for("src", ref), title="路灯不亮",
                    origin=Origin(channel=Channel.forward, source="src", source_ref=ref,
                                  received_at=T0 + timedelta(seconds=i)),
                    classification=Classification(category_code=f"cat{i % 13}"),
                    reporter=Reporter(phone=f"138{i % 700:08d}"),
                    location=Location(lat=31.2 + (i % 97) * 0.001, lon=121.4 + (i % 89) * 0.001,
                                      community=f"社区{i % 50}" if i % 3 else None,
                                      address=f"幸福路{i % 400}号")), None, [])
        store.conn.execute("ANALYZE cases")
        # Whether the planner may use the partial indexes: on this small table it often
        # prefers a backward scan of cases_received for ORDER BY ... LIMIT (the same plans
        # as with the version-1 indexes), so that index is dropped for the check and put
        # back by the rollback.
        with store.conn.transaction(force_rollback=True), store.conn.cursor() as cur:
            cur.execute("DROP INDEX cases_received")
            cur.execute("SET LOCAL enable_seqscan = off")
            for sql in nearby_statements():
                params = [_value_for(sql[max(0, m.start() - 25):m.start()])
                          for m in re.finditer(r"\?", sql)]
                cur.execute("EXPLAIN " + store._sql(sql), params)
                plan = " ".join(r[0] for r in cur.fetchall())
                used = set(re.findall(r"(?:using|on) (cases_\w+)", plan))
                assert used == expected_indexes(sql), (sql, plan)
                assert "Seq Scan" not in plan, plan
        assert "cases_received" in _indexes(store)
    finally:
        store.close()
