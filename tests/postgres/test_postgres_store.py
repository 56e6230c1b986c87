"""The store on the machine's real PostgreSQL (a throwaway database per session)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hub.config import load_config
from hub.pipeline import Hub, deliver, run_once
from hub.status import collect_status
from outbox.blobs import BlobStore
from outbox.store import open_store
from outbox.store.migrations import latest_version
from outbox.store.sql import CLAIM_DUE
from tests.conftest import REPO, SAMPLES, jsonl_lines, write_config
from tests.delivery.receivers import WebhookReceiver
from tests.postgres.seed import seed_cases

pytestmark = pytest.mark.integration


def _hub(tmp_path: Path, pg_url: str, **over) -> Hub:
    cfg = write_config(tmp_path, store=pg_url, **over)
    return Hub(load_config(cfg))


def test_whole_pipeline_on_postgres(tmp_path: Path, pg_url: str, cli) -> None:
    cfg = write_config(tmp_path, store=pg_url)
    for f in (SAMPLES / "forward").iterdir():
        shutil.copy(f, tmp_path / "inbox" / f.name)
    res = cli(cfg, "run", "--once", "--json")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    good = summary["process"]["cases_new"]
    assert good >= 20 and summary["deliver"]["delivered"] == good
    assert summary["process"]["failed"] == 1  # the bad record rolled back to its savepoint
    assert len(jsonl_lines(tmp_path / "out" / "cases.jsonl")) == good
    # the same exports again: nothing new anywhere
    for f in (SAMPLES / "forward").iterdir():
        shutil.copy(f, tmp_path / "inbox" / f.name)
    again = json.loads(cli(cfg, "run", "--once", "--json").stdout)
    assert again["process"]["cases_new"] == 0 and again["deliver"]["delivered"] == 0
    status = json.loads(cli(cfg, "status", "--json").stdout)
    assert status["cases"]["total"] == good and status["schema_version"] == latest_version()
    ref = jsonl_lines(tmp_path / "out" / "cases.jsonl")[0]["case"]["reference"]
    shown = cli(cfg, "cases", "show", ref)
    assert shown.returncode == 0 and "delivered to case-file" in shown.stdout
    dls = json.loads(cli(cfg, "dead-letters", "list", "--json").stdout)
    assert len(dls) == 2


def test_prefix_scan_locks_and_reads_leave_no_open_transaction(tmp_path: Path,
                                                               pg_url: str) -> None:
    store = open_store(pg_url, BlobStore(tmp_path / "blobs"))
    try:
        with store.process_tx() as tx:
            tx.state_put("ns", "dev:1", {"a": 1})
            tx.state_put("ns", "dev:2", {"a": 2})
            tx.state_put("ns", "dew", {"a": 3})
            tx.state_put("ns", "dev:é", {"a": 4})
            assert [k for k, _ in tx.state_scan("ns", "dev:")] == ["dev:1", "dev:2", "dev:é"]
        assert store.acquire_lock("x", "me", 60) and not store.acquire_lock("x", "you", 60)
        store.release_lock("x", "me")
        store.query("SELECT 1 AS one")
        rows = store.query("SELECT state FROM pg_stat_activity WHERE application_name = "
                           "'feedback-hub' AND pid = pg_backend_pid()")
        assert rows[0]["state"] == "active"  # this very query; nothing idle in transaction
        idle = store.query("SELECT COUNT(*) AS n FROM pg_stat_activity WHERE "
                           "application_name = 'feedback-hub' AND datname = current_database() "
                           "AND state = 'idle in transaction'")
        assert idle[0]["n"] == 0
        assert store.query("SELECT 'a%b' AS v WHERE 1 = ?", (1,))[0]["v"] == "a%b"
    finally:
        store.close()


def test_skip_locked_claims_are_disjoint(tmp_path: Path, pg_url: str) -> None:
    hub = _hub(tmp_path, pg_url)
    try:
        seed_cases(hub, 200)
        other = open_store(pg_url, hub.blobs)
        a_conn = hub.store
        # hold a claim transaction open in A while B claims: B skips A's locked rows
        with a_conn._write_tx() as cur:
            a_conn._exec(cur, a_conn._claim_sql().format(due=CLAIM_DUE[0], sink_filter=""),
                         ("9999-12-31", 50))
            locked = {int(r[0]) for r in cur.fetchall()}
            b = other.claim_due("b:1", 100, 60)
        assert len(locked) == 50 and len(b) == 100
        assert not locked & {d.id for d in b}
        a = hub.store.claim_due("a:1", 500, 60)
        assert len(a) == 100 and not {d.id for d in a} & {d.id for d in b}
        other.close()
    finally:
        hub.close()


WORKER = textwrap.dedent("""
    import sys
    from hub.config import load_config
    from hub.pipeline import Hub, deliver
    hub = Hub(load_config(sys.argv[1]), worker_id=sys.argv[2])
    total = 0
    while True:
        n = deliver(hub).delivered
        total += n
        if n == 0:
            break
    print(total)
    hub.close()
""")


def test_two_worker_processes_deliver_10000_rows_each_once(tmp_path: Path, pg_url: str) -> None:
    n = 10_000
    with WebhookReceiver() as hook:
        cfg = write_config(tmp_path, store=pg_url, sinks=[{
            "name": "workorders", "type": "webhook", "url": hook.url, "secret": hook.secret}],
            delivery={"batch_size": 50})
        hub = Hub(load_config(cfg))
        try:
            assert seed_cases(hub, n) == n
        finally:
            hub.close()
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(cfg), f"w{i}:{i}"],
                                  cwd=REPO, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for i in range(2)]
        outs = [p.communicate(timeout=300) for p in procs]
        counts = [int(o[0].strip() or 0) for o in outs]
        assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
        assert sum(counts) == n and min(counts) > n // 5  # both really worked
        assert len(hook.created) == n and hook.redeliveries() == 0
        with Hub(load_config(cfg)) as check:
            states = collect_status(check)["sinks"][0]
            assert states["delivered"] == n and states["pending"] == 0
            receipts = check.store.query("SELECT COUNT(*) AS n, COUNT(DISTINCT outbox_id) AS d "
                                         "FROM receipts")[0]
            assert receipts["n"] == receipts["d"] == n
            assert deliver(check).delivered == 0


def test_open_store_rejects_unknown_urls(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="postgresql://"):
        open_store("mysql://x", BlobStore(tmp_path))


def test_run_once_on_postgres_in_process(tmp_path: Path, pg_url: str) -> None:
    hub = _hub(tmp_path, pg_url)
    try:
        seed_cases(hub, 30)
        assert run_once(hub, stages=("deliver",)).deliver.delivered == 30
    finally:
        hub.close()


def test_two_workers_process_each_record_once_on_postgres(tmp_path: Path, pg_url: str) -> None:
    from tests.hub.test_process_lease import check_each_record_processed_once, seed_raw

    n = 1500
    cfg = write_config(tmp_path, store=pg_url)
    with Hub(load_config(cfg)) as hub:
        seed_raw(hub, n)
    results = check_each_record_processed_once(cfg, n, wait=0.0, overlap=True)
    assert sorted(bool(r["busy"]) for r in results) == [False, True], results


def test_one_statement_claim_takes_what_the_portable_claim_takes(tmp_path: Path,
                                                                 pg_url: str) -> None:
    """PostgreSQL claims in one statement; it must choose exactly the rows the portable
    three-query claim (SqlStore.claim_due, used on SQLite) chooses, in the same order."""
    from datetime import datetime, timedelta, timezone

    from outbox.store.sql import SqlStore
    from outbox.store.timefmt import ts

    hub = _hub(tmp_path, pg_url)
    try:
        seed_cases(hub, 12)
        now = datetime(2030, 1, 1, tzinfo=timezone.utc)
        ids = [int(r["id"]) for r in hub.store.query("SELECT id FROM outbox ORDER BY id")]
        plan = [  # (state, next_attempt_at offset s, claimed_until offset s)
            ("pending", -50, None), ("pending", +50, None), ("retrying", -70, None),
            ("retrying", +10, None), ("in_flight", -90, -1), ("in_flight", -95, +60),
            ("pending", -60, None), ("retrying", -40, None), ("in_flight", -30, -5),
            ("dead", -99, None), ("delivered", -99, None), ("pending", -20, None)]
        for i, (state, due, until) in zip(ids, plan, strict=True):
            hub.store.query("UPDATE outbox SET state = ?, next_attempt_at = ?, claimed_until = ?, "
                            "claimed_by = ? WHERE id = ? RETURNING id",
                            (state, ts(now + timedelta(seconds=due)),
                             ts(now + timedelta(seconds=until)) if until is not None else None,
                             "x:1" if until is not None else None, i))
        got = hub.store.claim_due("a:1", 5, 60, now)
        # due: ids[4] -90 (lease over), [2] -70, [6] -60, [0] -50, [7] -40, [8] -30, [11] -20
        assert [d.id for d in got] == sorted([ids[4], ids[2], ids[6], ids[0], ids[7]])
        rest = SqlStore.claim_due(hub.store, "b:1", 5, 60, now)  # the portable claim
        assert [d.id for d in rest] == sorted([ids[8], ids[11]])
        state = {int(r["id"]): (r["state"], r["claimed_by"]) for r in hub.store.query(
            "SELECT id, state, claimed_by FROM outbox")}
        assert all(state[d.id] == ("in_flight", "a:1") for d in got)
        assert state[ids[5]] == ("in_flight", "x:1")  # a live lease is left alone
        assert hub.store.claim_due("c:1", 5, 60, now) == []
    finally:
        hub.close()


def test_withdrawn_attempts_give_rows_back_as_claimed(tmp_path: Path, pg_url: str) -> None:
    """An attempt recorded but never made (its call was not started inside the lease) is
    undone; a row another worker has claimed meanwhile is left alone."""
    hub = _hub(tmp_path, pg_url)
    try:
        seed_cases(hub, 3)
        rows = hub.store.claim_due("a:1", 3, 60)
        hub.store.start_attempts([d.id for d in rows], "a:1")
        mine, taken, _ = rows
        with hub.store._write_tx() as cur:  # the claim ran out and b:1 took this row
            hub.store._exec(cur, "UPDATE outbox SET claimed_by = 'b:1' WHERE id = ?",
                            (taken.id,))
        hub.store.withdraw_attempt(mine, "a:1")
        hub.store.withdraw_attempt(taken, "a:1")
        got = {r["id"]: r for r in hub.store.query(
            "SELECT id, state, attempts, claimed_by, first_attempt_at, last_attempt_at "
            "FROM outbox")}
        assert got[mine.id] == {"id": mine.id, "state": "pending", "attempts": 0,
                                "claimed_by": None, "first_attempt_at": None,
                                "last_attempt_at": None}
        assert got[taken.id]["claimed_by"] == "b:1" and got[taken.id]["attempts"] == 1
        assert [d.id for d in hub.store.claim_due("c:1", 5, 60)] == [mine.id]
    finally:
        hub.close()


def test_intake_signatures_are_shared_and_purged_on_postgres(tmp_path: Path,
                                                              pg_url: str) -> None:
    import threading
    import time

    from hub.server.auth import SignatureLedger

    hub = _hub(tmp_path, pg_url)
    other = open_store(pg_url, hub.blobs)
    try:
        one = SignatureLedger(hub.store, threading.Lock(), window=0.05, purge_every=0)
        two = SignatureLedger(other, threading.Lock(), window=0.05, purge_every=0)
        assert one.check_and_add("v1=pg") and not two.check_and_add("v1=pg")
        time.sleep(0.15)
        assert two.check_and_add("v1=later")  # purges v1=pg's expired row first
        names = [r["name"] for r in hub.store.query(
            "SELECT name FROM locks WHERE name LIKE 'intake-signature:%'")]
        assert len(names) == 1
    finally:
        other.close()
        hub.close()
