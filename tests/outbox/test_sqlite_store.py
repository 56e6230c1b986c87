"""The SQLite store on a real file: uniqueness, references, claims, ordering, locks."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from connectors.base import RawRecord, Reject
from normalizer.case import Case, CaseUpdate, Channel, Origin, case_id_for
from outbox.blobs import BlobStore
from outbox.store import open_store
from outbox.store.migrations import latest_version
from outbox.store.sql import SqlStore, _dumps, idempotency_key

T0 = datetime(2026, 11, 24, 10, 0, tzinfo=timezone.utc)


def raw(ref: str) -> RawRecord:
    return RawRecord(source="src", channel=Channel.forward, source_ref=ref, received_at=T0,
                     payload={"record": {"title": ref}})


def case(ref: str) -> Case:
    return Case(case_id=case_id_for("src", ref), title=ref,
                origin=Origin(channel=Channel.forward, source="src", source_ref=ref,
                              received_at=T0))


def test_migrations_are_idempotent(tmp_path: Path, store: SqlStore) -> None:
    assert store.schema_version() == latest_version()
    again = open_store(f"sqlite:///{tmp_path / 'hub.db'}", BlobStore(tmp_path / "blobs"))
    assert again.schema_version() == latest_version()
    again.close()


def test_raw_records_unique_and_checkpoint_in_same_commit(store: SqlStore) -> None:
    res = store.commit_ingest("src", [raw("a"), raw("b")], [Reject("bad", raw=b"\xff")],
                              {"cursor": 2})
    assert (res.inserted, res.duplicates, res.dead) == (2, 0, 1)
    res = store.commit_ingest("src", [raw("a"), raw("c")], [Reject("bad", raw=b"\xff")],
                              {"cursor": 3})
    assert (res.inserted, res.duplicates, res.dead) == (1, 2, 0)
    assert store.get_checkpoint("src") == {"cursor": 3}
    dl = store.dead_letters()[0]
    assert dl["stage"] == "ingest" and store.blobs.read(dl["blob_sha256"]) == b"\xff"


def test_large_batches_with_repeats_inside_and_across_chunks(store: SqlStore) -> None:
    from outbox.store.sql import _INGEST_ROWS

    refs = [f"r{i}" for i in range(2 * _INGEST_ROWS + 7)]
    batch = [raw(r) for r in refs]
    batch.insert(3, raw("r1"))  # a repeat within the first chunk
    batch.append(raw("r2"))  # a repeat in the last chunk of one from the first
    res = store.commit_ingest("src", batch)
    assert (res.inserted, res.duplicates) == (len(refs), 2)
    rows = store.query("SELECT id, source_ref, payload FROM raw_records ORDER BY id")
    assert [r["source_ref"] for r in rows] == refs  # stored once each, in order
    assert res.raw_ids == [r["id"] for r in rows]
    assert json.loads(rows[5]["payload"]) == {"record": {"title": "r5"}}
    again = store.commit_ingest("src", [raw("r0"), raw("new")])
    new_id = store.query("SELECT id FROM raw_records WHERE source_ref = 'new'")[0]["id"]
    assert (again.inserted, again.duplicates) == (1, 1) and again.raw_ids == [new_id]


def test_raw_ids_are_the_rows_inserted_by_this_batch(store: SqlStore) -> None:
    first = store.commit_ingest("src", [raw("a"), raw("b")])
    res = store.commit_ingest("src", [raw("b"), raw("c"), raw("c"), raw("d")])
    assert (res.inserted, res.duplicates) == (2, 2)  # b stored before, c twice in the batch
    rows = store.query("SELECT id, source_ref FROM raw_records ORDER BY id")
    assert [r["source_ref"] for r in rows] == ["a", "b", "c", "d"]
    assert first.raw_ids == [rows[0]["id"], rows[1]["id"]]
    assert res.raw_ids == [rows[2]["id"], rows[3]["id"]]
    assert store.commit_ingest("src", [raw("a")]).raw_ids == []


def test_json_text_is_what_the_json_module_writes() -> None:
    from dataclasses import dataclass
    from decimal import Decimal

    @dataclass
    class Point:
        x: int

    value = {"s": "路灯 \u2028 \"q\"", "n": [1, 2.5, -0.0, 1e-7, None, True], 3: "int key",
             "t": T0, "d": Decimal("1.10"), "p": Point(1), "big": 2**70, "nested": {"e": []}}
    assert _dumps(value) == json.dumps(value, ensure_ascii=False, separators=(",", ":"),
                                       default=str)
    lone = {"s": "\ud800"}  # a lone surrogate: orjson refuses it, json writes it
    assert _dumps(lone) == json.dumps(lone, ensure_ascii=False, separators=(",", ":"))


def test_failed_commit_keeps_neither_records_nor_checkpoint(store: SqlStore) -> None:
    store.commit_ingest("src", [raw("a")], checkpoint={"cursor": 1})
    # the record row is written first, then the reject fails mid-transaction
    with pytest.raises(TypeError):
        store.commit_ingest("src", [raw("b")], [Reject("bad", raw=12345)],  # type: ignore[arg-type]
                            checkpoint={"cursor": 9})
    assert store.get_checkpoint("src") == {"cursor": 1}
    assert len(store.pending_raw(10)) == 1


def test_reference_allocated_once_and_never_reused(store: SqlStore) -> None:
    with store.process_tx() as tx:
        c1, new1 = tx.save_case(case("a"), None, ["s1"])
        c2, _ = tx.save_case(case("b"), None, ["s1"])
    with store.process_tx() as tx:
        again, new_again = tx.save_case(case("a"), None, ["s1"])
    assert new1 and not new_again
    assert c1.reference == "FB-20261124-000001" and c2.reference == "FB-20261124-000002"
    assert again.reference == c1.reference
    rows = store.query("SELECT COUNT(*) AS n FROM outbox")
    assert rows[0]["n"] == 2  # reprocessing queued nothing new


def test_savepoint_rolls_back_one_record_only(store: SqlStore) -> None:
    with store.process_tx() as tx:
        tx.save_case(case("a"), None, ["s1"])
        with pytest.raises(RuntimeError), tx.savepoint():
            tx.save_case(case("b"), None, ["s1"])
            raise RuntimeError("mapper bug")
    refs = [r["reference"] for r in store.query("SELECT reference FROM cases")]
    assert refs == ["FB-20261124-000001"]


def test_claims_lease_and_update_waits_for_its_case(store: SqlStore) -> None:
    with store.process_tx() as tx:
        tx.save_case(case("a"), None, ["s1"])
        tx.save_update(CaseUpdate(case_id=case_id_for("src", "a"), update_id="u1",
                                  kind="reply", at=T0, text="more info"), ["s1"])
    now = datetime.now(timezone.utc)
    first = store.claim_due("w1", 10, 60, now)
    assert [d.kind for d in first] == ["case"]  # the update is not due before its case
    assert store.claim_due("w2", 10, 60, now) == []  # leased to w1
    later = store.claim_due("w2", 10, 60, now + timedelta(seconds=61))
    assert [d.id for d in later] == [first[0].id]  # lease ran out: reclaimable
    store.complete_delivery(later[0], remote_id="R-1", status_code=201)
    upd = store.claim_due("w2", 10, 60, now)
    assert [d.kind for d in upd] == ["update"] and upd[0].remote_id == "R-1"
    assert upd[0].idempotency_key == idempotency_key("s1", case_id_for("src", "a"), "update",
                                                     "update:u1")


def test_locks_exclude_other_owners_until_expiry(store: SqlStore) -> None:
    assert store.acquire_lock("mailbox", "a", 60)
    assert not store.acquire_lock("mailbox", "b", 60)
    assert store.acquire_lock("mailbox", "a", 60)  # renew
    store.release_lock("mailbox", "a")
    assert store.acquire_lock("mailbox", "b", 0.001)
    import time

    time.sleep(0.01)
    assert store.acquire_lock("mailbox", "a", 60)


def test_blob_store_streams_and_dedupes(tmp_path: Path) -> None:
    import io

    blobs = BlobStore(tmp_path / "b")
    data = b"x" * (3 * 1024 * 1024 + 7)
    ref = blobs.put_stream(io.BytesIO(data), mime="text/plain")
    assert ref.size == len(data) and blobs.read(ref.sha256) == data
    assert blobs.put_bytes(data).sha256 == ref.sha256
    from outbox.blobs import BlobTooLarge

    with pytest.raises(BlobTooLarge):
        blobs.put_stream(io.BytesIO(data), max_size=1024)
    assert not list((tmp_path / "b" / "tmp").iterdir())  # nothing half-written left


def test_delivered_case_json_keeps_integers_beyond_64_bits(store: SqlStore) -> None:
    # an upstream platform's numeric id in ``extra`` must reach the sink exactly as received
    # (orjson, used for speed, would read it as a float)
    c = case("big")
    c.extra = {"upstream_id": 123456789012345678901234, "small": 7, "text": "编号"}
    with store.process_tx() as tx:
        tx.save_case(c, None, ["s1"])
    claimed = store.claim_due("w1", 10, 60, datetime.now(timezone.utc))
    body, _update = store.delivery_payloads(claimed)[claimed[0].id]
    assert body["extra"] == {"upstream_id": 123456789012345678901234, "small": 7,
                             "text": "编号"}
    assert isinstance(body["extra"]["upstream_id"], int)


def test_withdrawn_attempt_restores_a_retried_row(store: SqlStore) -> None:
    """Withdrawing an attempt that was never made gives a row that had failed before back
    as it was claimed: its earlier attempt count and first attempt time, state retrying."""
    with store.process_tx() as tx:
        tx.save_case(case("w"), None, ["s"])
    now = datetime.now(timezone.utc)
    (d,) = store.claim_due("w:1", 1, 60, now)
    store.start_attempts([d.id], "w:1", now)
    store.retry_delivery(d, {"reason": "HTTP 503", "attempt": 1}, now)
    (before,) = store.query("SELECT first_attempt_at, last_attempt_at FROM outbox")
    (d,) = store.claim_due("w:1", 1, 60, now + timedelta(seconds=1))
    store.start_attempts([d.id], "w:1", now + timedelta(seconds=1))
    store.withdraw_attempt(d, "w:1")
    (row,) = store.query("SELECT state, attempts, claimed_by, first_attempt_at, "
                         "last_attempt_at FROM outbox")
    assert row["state"] == "retrying" and row["attempts"] == 1 and row["claimed_by"] is None
    assert row["first_attempt_at"] == before["first_attempt_at"] is not None
    assert store.claim_due("w:2", 1, 60, now + timedelta(seconds=2))[0].attempts == 1


def test_wal_is_checkpointed_by_the_store_thread_not_by_commits(tmp_path: Path) -> None:
    """Commits leave the WAL to the checkpointer thread: a moment later it has been copied
    into the database file (all its frames backfilled), and close() ends the thread."""
    import sqlite3
    import time

    from outbox.store.sqlite import BACKSTOP_PAGES

    s = open_store(f"sqlite:///{tmp_path / 'hub.db'}", BlobStore(tmp_path / "blobs"))
    assert s.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == BACKSTOP_PAGES
    size_before = (tmp_path / "hub.db").stat().st_size
    res = s.commit_ingest("src", [raw(f"r{i}") for i in range(2000)])
    assert res.inserted == 2000
    ck = s._checkpointer
    assert ck is not None
    deadline = time.monotonic() + 10
    while ck.passes < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert ck.passes >= 1
    other = sqlite3.connect(str(tmp_path / "hub.db"))
    busy, log, done = other.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    other.close()
    assert busy == 0 and log == done  # nothing left for a checkpoint to copy
    assert (tmp_path / "hub.db").stat().st_size > size_before + 100_000
    thread = ck._thread
    s.commit_ingest("src", [raw("last")])
    s.close()
    assert not thread.is_alive()
    again = open_store(f"sqlite:///{tmp_path / 'hub.db'}", BlobStore(tmp_path / "blobs"))
    assert again.query("SELECT COUNT(*) AS n FROM raw_records")[0]["n"] == 2001
    again.close()
