"""The connector's overlapped work against a real Dovecot: sizes read on the acknowledging
connection, FETCHes sent ahead next to large mail streamed in between, acknowledgements merged
and sent per batch at the end of a long pass.

Server: the session Dovecot from tests/email/conftest.py.
"""

from __future__ import annotations

import hashlib
import sqlite3
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from connectors.email.acker import AckSender
from connectors.email.config import ImapConfig
from connectors.email.connector import AckToken, merge_acks
from connectors.email.demo_server import Dovecot
from connectors.email.imap import ImapSession
from connectors.email.sizes import PassSizes, sizes_on
from hub.config import load_config
from hub.pipeline import Hub, run_once
from outbox.blobs import BlobStore
from tests.email import mails
from tests.email.conftest import write_hub_config
from tests.email.test_imap_pipeline import folder_count

pytestmark = pytest.mark.integration


def _config(dovecot: Dovecot, user: str) -> ImapConfig:
    return ImapConfig(name="m", host="127.0.0.1", port=dovecot.port, tls="none",
                      username=user, password=dovecot.password)


def _session(dovecot: Dovecot, user: str) -> ImapSession:
    s = ImapSession(_config(dovecot, user)).connect()
    s.c.normalise_times = False
    s.select("INBOX")
    return s


def test_sizes_read_on_the_other_connection_are_the_same(dovecot: Dovecot,
                                                         mailbox: str) -> None:
    dovecot.append(mailbox, [mails.numbered(i) for i in range(25)])
    s = _session(dovecot, mailbox)
    acks: AckSender[Any] = AckSender(_config(dovecot, mailbox), lambda session, tok: None)
    try:
        uids = sorted(s.c.search(["ALL"]))
        want = s.sizes(uids)
        assert all(date.tzinfo is not None for _, date in want.values())
        sizes = PassSizes(s, "INBOX", s.uidvalidity or 0, uids, 4, acks.call)
        assert sizes.known == 4 and set(sizes.meta) == set(uids[:4])
        sizes.need(len(uids) - 1, lambda: pytest.fail("no fallback expected"))
        assert sizes.meta == want and sizes.known == len(uids)
        # a changed UIDVALIDITY on the other connection is refused there
        with pytest.raises(RuntimeError, match="UIDVALIDITY"):
            acks.call(sizes_on, "INBOX", 1, uids).result()
    finally:
        acks.close()
        s.close()


def test_sizes_fall_back_to_the_fetching_connection(dovecot: Dovecot, mailbox: str) -> None:
    dovecot.append(mailbox, [mails.numbered(i) for i in range(9)])
    s = _session(dovecot, mailbox)
    try:
        uids = sorted(s.c.search(["ALL"]))

        def broken(*_: Any) -> Future[Any]:
            f: Future[Any] = Future()
            f.set_exception(OSError("the other connection is gone"))
            return f

        used: list[bool] = []
        sizes = PassSizes(s, "INBOX", s.uidvalidity or 0, uids, 3, broken)
        sizes.need(5, lambda: used.append(True) or s)
        assert used == [True] and sizes.meta == s.sizes(uids) and sizes.known == len(uids)
    finally:
        s.close()


def test_merged_acknowledgements_keep_folders_apart() -> None:
    toks = [AckToken("INBOX", 1, [1, 2]), AckToken("INBOX", 1, [3], [4]),
            AckToken("Other", 1, [5]), AckToken("INBOX", 2, [6]), AckToken("INBOX", 2, [7])]
    merged = merge_acks(toks)
    assert [(t.folder, t.uidvalidity, t.processed, t.quarantine) for t in merged] == [
        ("INBOX", 1, [1, 2, 3], [4]), ("Other", 1, [5], []), ("INBOX", 2, [6, 7], [])]
    assert toks[0].processed == [1, 2]  # the tokens handed in are left as they were


def test_a_long_pass_with_large_mail_in_between(tmp_path: Path, dovecot: Dovecot, mailbox: str,
                                               imap_env: dict[str, str]) -> None:
    # small mails packed and fetched ahead, large ones streamed by the connector's own thread
    # (no FETCH may be in flight then), more mail than ack_every (per-batch acks at the end)
    msgs = [mails.numbered(i, 6000 if i % 7 == 3 else 0) for i in range(40)]
    dovecot.append(mailbox, msgs)
    cfg = write_hub_config(tmp_path, dovecot, mailbox, batch_size=4, ack_every=6,
                           stream_threshold=5000)
    hub = Hub(load_config(cfg))
    try:
        summary = run_once(hub)
    finally:
        hub.close()
    assert summary.ingest[0].error is None and summary.ingest[0].inserted == 40
    assert folder_count(dovecot, mailbox, "INBOX") == 0
    assert folder_count(dovecot, mailbox, "Processed") == 40
    blobs = BlobStore(tmp_path / "blobs")
    with sqlite3.connect(tmp_path / "hub.db") as conn:
        stored = [r[0] for r in conn.execute("SELECT raw_blob FROM raw_records ORDER BY id")]
    assert stored == [hashlib.sha256(m).hexdigest() for m in msgs]  # in mailbox order
    assert all(blobs.read(sha) == m for sha, m in zip(stored, msgs, strict=True))
    assert any(blobs.path(sha).is_file() for sha in stored)  # the large ones: files of their own


def test_the_acknowledging_connection_sees_new_mail_and_a_recreated_folder(
        dovecot: Dovecot, mailbox: str) -> None:
    from connectors.email.connector import ImapConnector

    dovecot.append(mailbox, [mails.numbered(i) for i in range(3)], folder="Work")
    connector = ImapConnector(ImapConfig(
        name="m", host="127.0.0.1", port=dovecot.port, tls="none", username=mailbox,
        password=dovecot.password, folders=["Work"]))
    acks = ImapSession(connector.config).connect()
    other = dovecot.client(mailbox)
    try:
        acks.select("Work")
        uv = acks.uidvalidity or 0
        dovecot.append(mailbox, [mails.numbered(i) for i in range(3, 6)], folder="Work")
        # mail that arrived after this connection looked is moved
        connector._send_ack(acks, AckToken("Work", uv, [4, 5, 6]))
        assert folder_count(dovecot, mailbox, "Processed") == 3
        # the folder recreated meanwhile (a new UIDVALIDITY): nothing is moved
        other.delete_folder("Work")
        other.create_folder("Work")
        dovecot.append(mailbox, [mails.numbered(i) for i in range(6, 9)], folder="Work")
        connector._send_ack(acks, AckToken("Work", uv, [1, 2, 3]))
        assert folder_count(dovecot, mailbox, "Work") == 3
        assert folder_count(dovecot, mailbox, "Processed") == 3
    finally:
        other.logout()
        acks.close()
        connector.close()
