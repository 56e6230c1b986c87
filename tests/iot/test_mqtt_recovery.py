"""Crash and broker-restart recovery against a real Mosquitto: nothing lost, nothing twice.

The hub runs as a real process (``feedback-hub run --once``) so SIGKILL is real.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from connectors.iot.demo_replay import Mosquitto
from tests.conftest import REPO, jsonl_lines
from tests.iot.conftest import report, send, write_hub_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DEVICES = 50
PER_DEVICE = 100  # 5,000 reports


def stream() -> list[tuple[str, bytes, int]]:
    """Per device: 10 heartbeats, 30 lamp-failure reports, a clear, 59 heartbeats."""
    msgs = []
    for seq in range(PER_DEVICE):
        for d in range(DEVICES):
            dev = f"SL-{d + 1:03d}" if d < 4 else f"LAMP-{d:03d}"
            fault = "E01" if 10 <= seq < 40 else ("OK" if seq == 40 else None)
            t = f"2026-11-24T{18 + seq // 60:02d}:{seq % 60:02d}:00Z"
            msgs.append(report(dev, seq, fault, t=t))
    return msgs


def count_raw(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM raw_records").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def hub_cmd(cfg: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "hub.cli", "-c", str(cfg), *args]


def run_cli(cfg: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(hub_cmd(cfg, "run", "--once"), cwd=REPO, capture_output=True,
                          text=True, timeout=180, env={**os.environ, **(env or {})})


def check_exactly_once(tmp: Path) -> None:
    db = tmp / "hub.db"
    with sqlite3.connect(db) as conn:
        n, distinct = conn.execute("SELECT COUNT(*), COUNT(DISTINCT source_ref) "
                                   "FROM raw_records").fetchone()
        states = dict(conn.execute("SELECT state, COUNT(*) FROM raw_records GROUP BY state"))
        ncases = conn.execute("SELECT COUNT(*) FROM cases").fetchone()[0]
    assert n == distinct == DEVICES * PER_DEVICE
    assert states.get("pending", 0) == 0 and states.get("failed", 0) == 0, states
    assert ncases == DEVICES  # one lamp-failure episode per device
    lines = jsonl_lines(tmp / "out" / "cases.jsonl")
    keys = Counter(line["idempotency_key"] for line in lines)
    assert max(keys.values()) == 1
    kinds = Counter(line["kind"] for line in lines)
    assert kinds == {"case": DEVICES, "update": DEVICES}  # each case: one "restored"
    assert {line["update"]["kind"] for line in lines if line["kind"] == "update"} == {
        "restored"}
    counts = {line["update"]["data"]["count"] for line in lines if line["kind"] == "update"}
    assert counts == {30}  # every fault report of the episode counted exactly once


def test_sigkill_while_5000_reports_in_flight(tmp_path: Path, broker: Mosquitto) -> None:
    cfg = write_hub_config(tmp_path, broker, batch_size=250, idle_timeout="3s",
                           faults={"default": {"reports": 3, "seconds": 0}})
    first = run_cli(cfg)  # creates the persistent session
    assert first.returncode == 0, first.stderr
    msgs = stream()
    publisher = threading.Thread(target=send, args=(broker, msgs))
    publisher.start()
    db = tmp_path / "hub.db"
    kills = 0
    # 1) SIGKILL from outside at an arbitrary moment while messages stream in
    proc = subprocess.Popen(hub_cmd(cfg, "run", "--once", "--stage", "ingest"), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while count_raw(db) < 800 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
        kills += 1
    proc.wait()
    # 2) a crash right after a commit, before the PUBACKs (the broker redelivers committed ones)
    crashed = run_cli(cfg, {"FEEDBACK_HUB_CRASH_AT": "after_ingest_commit:3"})
    if crashed.returncode == -signal.SIGKILL:
        kills += 1
    publisher.join(120)
    assert not publisher.is_alive()
    for _ in range(6):
        before = count_raw(db)
        res = run_cli(cfg)
        assert res.returncode == 0, res.stderr
        if count_raw(db) == before and before == DEVICES * PER_DEVICE:
            break
    assert kills == 2
    check_exactly_once(tmp_path)
    with sqlite3.connect(db) as conn:
        dups = conn.execute("SELECT SUM(duplicates_total) FROM connector_stats").fetchone()[0]
    assert dups > 0  # redeliveries happened and were recognised


def test_broker_restart_mid_stream(tmp_path: Path, broker: Mosquitto) -> None:
    cfg = write_hub_config(tmp_path, broker, batch_size=100, idle_timeout="4s",
                           faults={"default": {"reports": 3, "seconds": 0}})
    assert run_cli(cfg).returncode == 0
    msgs = stream()
    half = len(msgs) // 2
    send(broker, msgs[:half])
    proc = subprocess.Popen(hub_cmd(cfg, "run", "--once"), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    db = tmp_path / "hub.db"
    deadline = time.monotonic() + 60
    while count_raw(db) < 500 and time.monotonic() < deadline:
        time.sleep(0.02)
    broker.restart()  # persistence on: the session and its queue survive
    send(broker, msgs[half:])
    _out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    # the same run reconnected (with backoff) and drained both halves
    assert count_raw(db) == DEVICES * PER_DEVICE
    assert run_cli(cfg).returncode == 0  # and nothing is left to redeliver
    check_exactly_once(tmp_path)
