"""TLS, capability fallbacks and IMAP IDLE against real Dovecot servers.

Servers: the session Dovecot (implicit TLS and STARTTLS with a throwaway trustme CA), and a
second Dovecot that hides MOVE and IDLE (``imap_capability``) to exercise the fallbacks.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connectors.base import IngestContext, SourceBatch
from connectors.email.config import ImapConfig
from connectors.email.demo_server import Dovecot
from connectors.email.imap import ImapError, ImapSession
from hub.config import load_config
from hub.pipeline import Hub
from outbox.store.timefmt import now_utc
from tests.email import mails
from tests.email.conftest import start_dovecot, stop_dovecot, write_hub_config
from tests.email.test_imap_pipeline import folder_count, rows, run

pytestmark = pytest.mark.integration


def config(dovecot: Dovecot, user: str, **kw: Any) -> ImapConfig:
    base: dict[str, Any] = {"name": "mb", "host": "127.0.0.1", "username": user,
                            "password": dovecot.password}
    base.update(kw)
    return ImapConfig.model_validate(base)


@pytest.mark.parametrize("mode", ["implicit", "starttls"])
def test_tls_with_the_right_ca_connects(dovecot: Dovecot, mailbox: str, mode: str) -> None:
    port = dovecot.tls_port if mode == "implicit" else dovecot.port
    s = ImapSession(config(dovecot, mailbox, tls=mode, port=port,
                           ca_file=str(dovecot.ca_pem))).connect()
    try:
        assert s.select("INBOX")[b"UIDVALIDITY"] > 0
    finally:
        s.close()


@pytest.mark.parametrize("mode", ["implicit", "starttls"])
def test_certificate_that_does_not_verify_is_refused(dovecot: Dovecot, mailbox: str,
                                                     mode: str) -> None:
    port = dovecot.tls_port if mode == "implicit" else dovecot.port
    with pytest.raises(ImapError) as err:
        ImapSession(config(dovecot, mailbox, tls=mode, port=port)).connect()
    msg = str(err.value)
    assert msg.startswith(f"TLS certificate of 127.0.0.1:{port} did not verify (")
    assert "unable to get local issuer certificate" in msg
    assert msg.endswith("set ca_file to the CA that signed it, or, only for testing, "
                        "tls_verify: false")
    assert dovecot.password not in msg


@pytest.mark.parametrize("mode", ["implicit", "starttls"])
def test_unverified_tls_only_when_the_config_says_so(dovecot: Dovecot, mailbox: str,
                                                     mode: str) -> None:
    port = dovecot.tls_port if mode == "implicit" else dovecot.port
    s = ImapSession(config(dovecot, mailbox, tls=mode, port=port, tls_verify=False)).connect()
    s.close()


def test_wrong_password_is_a_clear_error_without_the_password(dovecot: Dovecot,
                                                              mailbox: str) -> None:
    with pytest.raises(ImapError) as err:
        ImapSession(config(dovecot, mailbox, tls="implicit", port=dovecot.tls_port,
                           ca_file=str(dovecot.ca_pem), password="wrong-secret")).connect()
    assert str(err.value).startswith(f"login to 127.0.0.1:{dovecot.tls_port} as {mailbox} "
                                     "refused")
    assert "wrong-secret" not in str(err.value)


@pytest.fixture(scope="module")
def plain_dovecot() -> Iterator[Dovecot]:
    """A Dovecot that announces neither MOVE nor IDLE."""
    server = start_dovecot(extra="imap_capability = IMAP4rev1 SASL-IR LITERAL+ ENABLE "
                                 "UIDPLUS NAMESPACE UNSELECT CHILDREN")
    try:
        yield server
    finally:
        stop_dovecot(server)


def test_without_move_copies_flags_and_uid_expunges(tmp_path: Path, plain_dovecot: Dovecot,
                                                    mailbox: str, imap_env: dict[str, str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAP_PASSWORD", plain_dovecot.password)
    plain_dovecot.append(mailbox, [mails.gbk_plain(), mails.big5_plain(), mails.huge(300_000)])
    cfg = write_hub_config(tmp_path, plain_dovecot, mailbox, tls="none",
                           max_message_size="200KB")
    summary = run(cfg)
    assert summary.ingest[0].inserted == 2 and summary.ingest[0].dead == 1
    assert folder_count(plain_dovecot, mailbox, "INBOX") == 0
    assert folder_count(plain_dovecot, mailbox, "Processed") == 2
    assert folder_count(plain_dovecot, mailbox, "Quarantine") == 1


def _listen(cfg_path: Path, name: str = "mailbox") -> tuple[threading.Thread,
                                                             threading.Event, Hub, list[str]]:
    hub = Hub(load_config(cfg_path))
    conn = hub.connector(name)
    errors: list[str] = []

    def commit(batch: SourceBatch) -> None:
        hub.store.commit_ingest(name, batch.records, batch.rejects, batch.checkpoint)
        if batch.checkpoint is not None:
            ctx.checkpoint = batch.checkpoint
        conn.ack(batch)

    ctx = IngestContext(blobs=hub.blobs, checkpoint=hub.store.get_checkpoint(name),
                        now=now_utc(), services={"store": hub.store,
                                                 "worker_id": hub.worker_id})
    stop = threading.Event()

    def target() -> None:
        try:
            conn.listen(ctx, commit, stop)  # type: ignore[attr-defined]
        except Exception as exc:  # pragma: no cover - reported by the test
            errors.append(repr(exc))

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, stop, hub, errors


def _wait_rows(folder: Path, n: int, timeout: float = 15.0) -> int:
    deadline = time.monotonic() + timeout
    got = 0
    while time.monotonic() < deadline:
        got = len(rows(folder, "SELECT id FROM raw_records"))
        if got >= n:
            return got
        time.sleep(0.1)
    return got


@pytest.mark.parametrize("server", ["idle", "polling"])
def test_listen_picks_up_new_mail_and_stops_promptly(tmp_path: Path, dovecot: Dovecot,
                                                     plain_dovecot: Dovecot, mailbox: str,
                                                     server: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    srv = dovecot if server == "idle" else plain_dovecot
    monkeypatch.setenv("IMAP_PASSWORD", srv.password)
    srv.append(mailbox, [mails.gbk_plain()])
    cfg = write_hub_config(tmp_path, srv, mailbox, tls="none", idle_check="0.2s",
                           poll_interval="0.5s")
    t, stop, hub, errors = _listen(cfg)
    try:
        assert _wait_rows(tmp_path, 1) == 1
        time.sleep(0.5)  # now waiting in IDLE (or between polls)
        srv.append(mailbox, [mails.big5_plain()])
        started = time.monotonic()
        assert _wait_rows(tmp_path, 2) == 2
        assert time.monotonic() - started < 5
    finally:
        stop.set()
        t.join(timeout=5)
        hub.close()
    assert not t.is_alive() and errors == []
    assert folder_count(srv, mailbox, "Processed") == 2
    assert rows(tmp_path, "SELECT COUNT(*) AS n FROM locks")[0]["n"] == 0
