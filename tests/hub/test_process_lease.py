"""The process stage runs in one worker at a time (the ``stage:process`` lease).

Several workers (``listen`` on many hosts, a cron ``run --once`` beside a ``listen``, the
intake server) share one store. Two process passes over the same pending records would map
each record twice and race on mapper state (IoT fault episodes, mail threads), so a pass
takes the lease first; a second worker waits for it or leaves the records to the holder.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from connectors.base import RawRecord
from hub.config import load_config
from hub.pipeline import PROCESS_LEASE, Hub, process
from normalizer.case import Channel
from tests.conftest import REPO, write_config

WORKER = """
import json, os, sys, time
from hub.config import load_config
from hub.pipeline import PROCESS_LEASE, Hub, process
cfg, start, wait, role, gate = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), *sys.argv[4:]
hub = Hub(load_config(cfg))
hub.enrichers  # built before the start line, like a running worker
if role == "holder":  # takes the stage, then reads no batch before the other one has tried
    read = hub.store.pending_raw
    def gated(*args, **kwargs):
        deadline = time.monotonic() + 120
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.005)
        return read(*args, **kwargs)
    hub.store.pending_raw = gated
if role == "second":  # tries the stage once the holder has it
    while not hub.store.query("SELECT 1 FROM locks WHERE name = ?", (PROCESS_LEASE,)):
        time.sleep(0.005)
else:
    time.sleep(max(0.0, start - time.time()))
s = process(hub, wait=wait)
if role == "second":
    open(gate, "w").close()
print(json.dumps({"seen": s.seen, "new": s.cases_new, "refreshed": s.cases_refreshed,
                  "busy": s.busy}))
hub.close()
"""


def seed_raw(hub: Hub, n: int) -> None:
    """Commit n pending upstream records (distinct places and texts)."""
    now = datetime(2026, 11, 24, 2, 0, tzinfo=timezone.utc)
    recs = [RawRecord(source="city-app", channel=Channel.forward, source_ref=f"id:{i}",
                      received_at=now, payload={"record": {
                          "id": f"L-{i}", "title": "路灯不亮",
                          "content": f"幸福路{i}号门口的路灯坏了{i % 7 + 2}天，请尽快维修。",
                          "location": {"address": f"幸福路{i}号", "lat": 31.2 + i * 1e-3,
                                       "lon": 121.4}}}) for i in range(n)]
    for i in range(0, n, 500):
        hub.store.commit_ingest("city-app", recs[i:i + 500])


def run_two_workers(cfg: Path, wait: float, overlap: bool = False) -> list[dict[str, Any]]:
    """Two worker processes run ``process`` from the same start line; with ``overlap`` the
    second one is sure to try while the first holds the stage (the first reads no batch
    until the second's pass has ended)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.time() + 4.0
    gate = cfg.parent / "second-worker-done"
    roles = ("holder", "second") if overlap else ("free", "free")
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(cfg), str(start), str(wait),
                               role, str(gate)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for role in roles]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    return [json.loads(o[0].strip().splitlines()[-1]) for o in outs]


def check_each_record_processed_once(cfg: Path, n: int, wait: float, overlap: bool = False
                                     ) -> list[dict[str, Any]]:
    results = run_two_workers(cfg, wait, overlap)
    assert sum(r["seen"] for r in results) == n, results
    assert sum(r["new"] for r in results) == n, results
    assert all(r["refreshed"] == 0 for r in results), results  # nobody mapped a record twice
    with Hub(load_config(cfg)) as hub:
        assert hub.store.query("SELECT COUNT(*) AS n FROM cases")[0]["n"] == n
        assert hub.store.query("SELECT COUNT(*) AS n FROM outbox")[0]["n"] == n
        assert hub.store.query("SELECT COUNT(*) AS n FROM locks WHERE name = ?",
                               (PROCESS_LEASE,))[0]["n"] == 0  # released
    return results


@pytest.mark.slow
def test_two_workers_at_once_process_each_record_once(tmp_path: Path) -> None:
    n = 1500
    cfg = write_config(tmp_path)
    with Hub(load_config(cfg)) as hub:
        seed_raw(hub, n)
    results = check_each_record_processed_once(cfg, n, wait=0.0, overlap=True)
    # they overlapped: one did the work, the other found the stage busy and left
    assert sorted(bool(r["busy"]) for r in results) == [False, True], results


@pytest.mark.slow
def test_a_waiting_worker_gets_the_stage_after_the_holder(tmp_path: Path) -> None:
    n = 1500
    cfg = write_config(tmp_path)
    with Hub(load_config(cfg)) as hub:
        seed_raw(hub, n)
    results = check_each_record_processed_once(cfg, n, wait=120.0)
    assert not any(r["busy"] for r in results)
    assert sorted(r["seen"] for r in results) == [0, n]  # the second found nothing left


def test_a_live_holder_keeps_the_stage_and_the_run_says_so(tmp_path: Path, cli) -> None:
    cfg = write_config(tmp_path, process={"lease_wait": 0})
    other = f"{socket.gethostname()}:{os.getpid()}:other-worker"
    with Hub(load_config(cfg)) as hub:
        seed_raw(hub, 3)
        assert hub.store.acquire_lock(PROCESS_LEASE, other, 60)
        stats = process(hub)
        assert stats.busy == other and stats.seen == 0
        assert hub.store.query("SELECT COUNT(*) AS n FROM raw_records WHERE state = 'pending'"
                               )[0]["n"] == 3
        res = cli(cfg, "run", "--once", "--stage", "process", "--json")
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["process"]["busy"] == other
        res = cli(cfg, "run", "--once", "--stage", "process")
        assert "Process stage skipped: another worker" in res.stdout


def test_the_lease_of_a_crashed_worker_on_this_host_is_taken_over(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    with Hub(load_config(cfg)) as hub:
        seed_raw(hub, 3)
        assert hub.store.acquire_lock(PROCESS_LEASE, f"{socket.gethostname()}:{dead}:x", 300)
        stats = process(hub)
        assert stats.busy is None and stats.cases_new == 3
