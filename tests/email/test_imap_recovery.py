"""Crash and concurrency safety of the IMAP connector, via the real CLI in subprocesses.

Server: Dovecot started by tests/email/conftest.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from connectors.email.demo_server import Dovecot
from outbox.blobs import BlobStore
from tests.conftest import REPO, jsonl_lines
from tests.email import mails
from tests.email.conftest import write_hub_config
from tests.email.test_imap_pipeline import folder_count

pytestmark = pytest.mark.integration


def cli(cfg: Path, *args: str, crash_at: str | None = None, password: str = "",
        wait: bool = True) -> subprocess.Popen[str] | subprocess.CompletedProcess[str]:
    env = {**os.environ, "IMAP_PASSWORD": password, "COLUMNS": "200"}
    env.pop("FEEDBACK_HUB_CRASH_AT", None)
    if crash_at:
        env["FEEDBACK_HUB_CRASH_AT"] = crash_at
    cmd = [sys.executable, "-m", "hub.cli", "-c", str(cfg), *args]
    if wait:
        return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO,
                              timeout=180)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=REPO)


def count(folder: Path, sql: str) -> int:
    with sqlite3.connect(folder / "hub.db") as conn:
        return int(conn.execute(sql).fetchone()[0])


def assert_exactly_once(folder: Path, n: int) -> None:
    assert count(folder, "SELECT COUNT(*) FROM raw_records") == n
    assert count(folder, "SELECT COUNT(DISTINCT source_ref) FROM raw_records") == n
    assert count(folder, "SELECT COUNT(*) FROM cases") == n
    lines = jsonl_lines(folder / "out" / "cases.jsonl")
    assert len(lines) == n
    assert len({line["case"]["case_id"] for line in lines}) == n
    assert len({line["idempotency_key"] for line in lines}) == n


def moved_were_committed(folder: Path, dovecot: Dovecot, user: str) -> int:
    """Assert every mail in Processed is committed (acknowledged only after its commit);
    returns how many were moved."""
    c = dovecot.client(user)
    try:
        if not c.folder_exists("Processed"):
            return 0
        c.select_folder("Processed", readonly=True)
        fetched = c.fetch(c.search(["ALL"]), ["BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"])
    finally:
        c.logout()
    moved = {v[b"BODY[HEADER.FIELDS (MESSAGE-ID)]"].decode().split(":", 1)[1].strip()
             for v in fetched.values()}
    with sqlite3.connect(folder / "hub.db") as conn:
        committed = {json.loads(r[0])["message_id"]
                     for r in conn.execute("SELECT payload FROM raw_records")}
    assert moved <= committed
    return len(moved)


def test_sigkill_mid_batch_and_before_ack_then_rerun(tmp_path: Path, dovecot: Dovecot,
                                                     mailbox: str) -> None:
    n = 12
    dovecot.append(mailbox, [mails.numbered(i) for i in range(n)])
    # ack_every 1: every batch's MOVE is handed to the acknowledging connection at once
    cfg = write_hub_config(tmp_path, dovecot, mailbox, batch_size=5, ack_every=1)
    # killed while the 2nd batch is being fetched (nothing of it committed); the 1st batch's
    # MOVE may or may not have been done by the acknowledging connection
    res = cli(cfg, "run", "--once", crash_at="imap_mid_batch:8", password=dovecot.password)
    assert res.returncode == -9
    assert count(tmp_path, "SELECT COUNT(*) FROM raw_records") == 5
    assert moved_were_committed(tmp_path, dovecot, mailbox) in (0, 5)
    assert folder_count(dovecot, mailbox, "INBOX") + folder_count(
        dovecot, mailbox, "Processed") == n
    # killed right after a commit, before its acknowledgement
    res = cli(cfg, "run", "--once", crash_at="after_ingest_commit:1", password=dovecot.password)
    assert res.returncode == -9
    assert count(tmp_path, "SELECT COUNT(*) FROM raw_records") in (5, 10)
    moved_were_committed(tmp_path, dovecot, mailbox)
    res = cli(cfg, "run", "--once", password=dovecot.password)
    assert res.returncode == 0, res.stderr
    assert_exactly_once(tmp_path, n)
    assert folder_count(dovecot, mailbox, "INBOX") == 0
    assert moved_were_committed(tmp_path, dovecot, mailbox) == n


def test_sigkill_with_acknowledgements_waiting_then_rerun(tmp_path: Path, dovecot: Dovecot,
                                                         mailbox: str) -> None:
    n = 12
    dovecot.append(mailbox, [mails.numbered(i) for i in range(n)])
    cfg = write_hub_config(tmp_path, dovecot, mailbox, batch_size=5)  # ack_every: 1000
    # killed in the 3rd batch: two batches committed, their MOVE still waiting
    res = cli(cfg, "run", "--once", crash_at="imap_mid_batch:11", password=dovecot.password)
    assert res.returncode == -9
    assert count(tmp_path, "SELECT COUNT(*) FROM raw_records") == 10
    assert folder_count(dovecot, mailbox, "INBOX") == n  # 10 of them committed, not yet moved
    res = cli(cfg, "run", "--once", password=dovecot.password)
    assert res.returncode == 0, res.stderr
    assert_exactly_once(tmp_path, n)
    assert folder_count(dovecot, mailbox, "INBOX") == 0
    assert folder_count(dovecot, mailbox, "Processed") == n


def test_sigkill_after_blobs_synced_before_commit_then_rerun(tmp_path: Path, dovecot: Dovecot,
                                                            mailbox: str) -> None:
    n = 7
    dovecot.append(mailbox, [mails.numbered(i) for i in range(n)])
    cfg = write_hub_config(tmp_path, dovecot, mailbox, batch_size=5)
    # the 2nd batch's pack is durable and indexed, its records are not committed
    res = cli(cfg, "run", "--once", crash_at="imap_blobs_synced:2", password=dovecot.password)
    assert res.returncode == -9
    assert count(tmp_path, "SELECT COUNT(*) FROM raw_records") == 5
    res = cli(cfg, "run", "--once", password=dovecot.password)
    assert res.returncode == 0, res.stderr
    assert_exactly_once(tmp_path, n)
    assert folder_count(dovecot, mailbox, "Processed") == n
    # every committed record points at a stored blob holding exactly the mail's bytes
    blobs = BlobStore(tmp_path / "blobs")
    with sqlite3.connect(tmp_path / "hub.db") as conn:
        shas = [r[0] for r in conn.execute("SELECT raw_blob FROM raw_records")]
    assert len(shas) == n
    for sha in shas:
        assert hashlib.sha256(blobs.read(sha)).hexdigest() == sha


def test_two_fetchers_at_once_store_each_mail_once(tmp_path: Path, dovecot: Dovecot,
                                                   mailbox: str) -> None:
    n = 30
    dovecot.append(mailbox, [mails.numbered(i) for i in range(n)])
    cfg = write_hub_config(tmp_path, dovecot, mailbox, batch_size=3)
    cli(cfg, "config", "check", password=dovecot.password)  # create the schema up front
    procs = [cli(cfg, "run", "--once", password=dovecot.password, wait=False)
             for _ in range(2)]
    for p in procs:
        _out, err = p.communicate(timeout=180)
        assert p.returncode in (0, 3), err
    # whichever lost the lock skipped; run once more to be sure nothing is left behind
    assert cli(cfg, "run", "--once", password=dovecot.password).returncode == 0
    assert_exactly_once(tmp_path, n)
    assert folder_count(dovecot, mailbox, "Processed") == n
