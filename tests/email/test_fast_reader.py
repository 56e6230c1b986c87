"""The response reader of connectors/email/fast_fetch.py: pipelined body FETCHes, unsolicited
responses, MOVE, INTERNALDATE, and responses in shapes Dovecot does not send.

Server: the session Dovecot from tests/email/conftest.py; for the shapes Dovecot never sends
(a body followed by more items, the UID after the body), a scripted IMAP peer on loopback that
answers every command with the same bytes, read by both this module and IMAPClient.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from datetime import datetime

import pytest
from imapclient import IMAPClient
from imapclient.datetime_util import parse_to_datetime

from connectors.email import fast_fetch
from connectors.email.config import ImapConfig
from connectors.email.demo_server import Dovecot
from connectors.email.imap import ImapSession
from tests.email import mails

pytestmark = pytest.mark.integration


@pytest.fixture
def filled(dovecot: Dovecot, mailbox: str) -> str:
    dovecot.append(mailbox, [mails.numbered(i) for i in range(30)])
    return mailbox


def _client(dovecot: Dovecot, user: str) -> IMAPClient:
    c = dovecot.client(user)
    c.normalise_times = False
    c.select_folder("INBOX")
    return c


def _slow_bodies(c: IMAPClient, uids: list[int]) -> dict[int, bytes]:
    return {u: d[b"BODY[]"] for u, d in c.fetch(uids, ["BODY.PEEK[]"]).items()}


@pytest.mark.parametrize("value", [
    b"25-Nov-2026 11:02:03 +0800", b" 3-Dec-2026 08:44:22 +0000", b"03-Dec-2026 23:59:59 -0530",
    b"01-jan-2027 00:00:00 +1400", b"03-Dec-2026 08:44:22 -0000", b"3 Dec 2026 08:44:22 +0800"])
def test_internaldate_is_what_imapclient_reads(value: bytes) -> None:
    fast = fast_fetch.internaldate(value)
    slow = parse_to_datetime(value, normalise=False)
    assert fast == slow and (fast.utcoffset() == slow.utcoffset())
    assert isinstance(fast, datetime)


def test_an_internaldate_imapclient_refuses_is_refused() -> None:
    with pytest.raises(ValueError):
        parse_to_datetime(b"31-Dec-2026 23:59:60 +0100", normalise=False)
    with pytest.raises(ValueError):
        fast_fetch.internaldate(b"31-Dec-2026 23:59:60 +0100")


def test_pipelined_body_fetches_are_collected_in_order(dovecot: Dovecot, filled: str) -> None:
    c = _client(dovecot, filled)
    try:
        uids = sorted(c.search(["ALL"]))
        fetches = fast_fetch.BodyFetches(c)
        assert fetches.send(uids[:10]) and fetches.send(uids[10:20]) and fetches.send(uids[20:])
        got = [fetches.collect(), fetches.collect(), fetches.collect()]
        assert len(fetches) == 0
        slow = _slow_bodies(c, uids)
        assert got == [{u: slow[u] for u in part} for part in (uids[:10], uids[10:20], uids[20:])]
        fetches.send(uids[:5])
        fetches.drain()  # nobody wants them: read and dropped, the connection is usable
        assert c.search(["SEEN"]) == []
    finally:
        c.logout()


def test_a_session_fetches_ahead_and_recovers_from_a_request_sent_for_nothing(
        dovecot: Dovecot, filled: str) -> None:
    cfg = ImapConfig(name="m", host="127.0.0.1", port=dovecot.port, tls="none",
                     username=filled, password=dovecot.password)
    s = ImapSession(cfg).connect()
    try:
        s.c.normalise_times = False
        s.select("INBOX")
        uids = sorted(s.c.search(["ALL"]))
        slow = _slow_bodies(s.c, uids)
        assert s.fetch_bodies(uids[:10], ahead=uids[10:20]) == {u: slow[u] for u in uids[:10]}
        assert s.fetch_bodies(uids[10:20], ahead=uids[20:25]) == {
            u: slow[u] for u in uids[10:20]}
        # asked for something else than what was sent ahead: that is dropped, this is fetched
        assert s.fetch_bodies(uids[25:]) == {u: slow[u] for u in uids[25:]}
        s.fetch_bodies([], ahead=uids[:3])
        s.drain()
        assert s.c.noop() is not None  # the connection is in step
    finally:
        s.close()


def test_changes_by_another_connection_arrive_mid_read(dovecot: Dovecot, filled: str) -> None:
    reader, other = _client(dovecot, filled), _client(dovecot, filled)
    try:
        uids = sorted(reader.search(["ALL"]))
        other.add_flags(uids[:4], [b"\\Flagged"])  # unsolicited FETCH FLAGS for the reader
        other.create_folder("Elsewhere")
        other.move(uids[4:8], "Elsewhere")  # EXPUNGE lines for the reader
        sizes = fast_fetch.sizes(reader, uids)
        bodies = fast_fetch.bodies(reader, uids)
        assert sizes is not None and bodies is not None
        # (the first command may still see the moved mail: its EXPUNGEs come at its end)
        assert set(bodies) == set(uids) - set(uids[4:8]) <= set(sizes) <= set(uids)
        assert reader._imap.untagged_responses.get("EXPUNGE")  # where imaplib keeps them
        assert bodies == _slow_bodies(reader, uids)
        slow_sizes = {u: (d[b"RFC822.SIZE"], d[b"INTERNALDATE"]) for u, d in reader.fetch(
            uids, ["RFC822.SIZE", "INTERNALDATE"]).items()}
        assert {u: sizes[u] for u in slow_sizes} == slow_sizes
    finally:
        reader.logout()
        other.logout()


def test_move_reads_its_expunges_and_leaves_the_connection_in_step(
        dovecot: Dovecot, filled: str) -> None:
    c = _client(dovecot, filled)
    try:
        c.create_folder("Processed")
        uids = sorted(c.search(["ALL"]))
        assert fast_fetch.move(c, uids[:12], "Processed") is not None
        assert len(c._imap.untagged_responses["EXPUNGE"]) == 12
        assert sorted(c.search(["ALL"])) == uids[12:]
        assert c.folder_status("Processed", ["MESSAGES"])[b"MESSAGES"] == 12
        with pytest.raises(Exception, match=r"(?i)mailbox|exist"):
            fast_fetch.move(c, uids[12:], "No such folder")  # a NO is an error, as IMAPClient's
        assert sorted(c.search(["ALL"])) == uids[12:]
    finally:
        c.logout()


# ---------------------------------------------------------------------- shapes Dovecot never sends
ODD = (b"* 1 FETCH (UID 5 BODY[] {5}\r\nhello FLAGS (\\Seen))\r\n"
       b"* 7 EXISTS\r\n"
       b"* 2 FETCH (BODY[] {3}\r\nabc UID 6)\r\n"
       b"* 3 FETCH (FLAGS (\\Flagged) UID 9)\r\n"
       b"* 4 FETCH (UID 7 BODY[] {4}\r\nwxyz)\r\n"
       b"* 2 EXPUNGE\r\n"
       b"* 5 FETCH (UID 8 RFC822.SIZE 42 INTERNALDATE \"25-Nov-2026 11:02:03 +0800\")\r\n"
       b"* 6 FETCH (INTERNALDATE \"25-Nov-2026 11:02:04 +0800\" UID 10 RFC822.SIZE 43)\r\n")


@pytest.fixture
def scripted() -> Iterator[IMAPClient]:
    """An IMAP peer on loopback answering every tagged command with ODD + OK."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.sendall(b"* OK [CAPABILITY IMAP4rev1 MOVE] ready\r\n")
            buf = b""
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
                while b"\r\n" in buf:
                    line, buf = buf.split(b"\r\n", 1)
                    tag = line.split(b" ", 1)[0]
                    conn.sendall(ODD + tag + b" OK done\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = IMAPClient("127.0.0.1", port=port, ssl=False, timeout=5)
    client.normalise_times = False
    client._imap.state = "SELECTED"  # (the peer does not care)
    try:
        yield client
    finally:
        client.shutdown()
        server.close()


def test_other_shapes_are_read_by_imaplib_and_imapclient(scripted: IMAPClient) -> None:
    fast = fast_fetch.bodies(scripted, [5, 6, 7, 8])
    slow = {u: d[b"BODY[]"] for u, d in scripted.fetch([5, 6, 7, 8], ["BODY.PEEK[]"]).items()
            if b"BODY[]" in d}
    assert fast == slow == {5: b"hello", 6: b"abc", 7: b"wxyz"}
    sizes = fast_fetch.sizes(scripted, [8, 10, 11])
    slow_sizes = {u: (d[b"RFC822.SIZE"], d[b"INTERNALDATE"])
                  for u, d in scripted.fetch([8, 10, 11], ["RFC822.SIZE", "INTERNALDATE"]).items()
                  if b"RFC822.SIZE" in d}
    assert sizes == slow_sizes and set(sizes) == {8, 10}
    assert scripted._imap.untagged_responses["EXISTS"][-1] == b"7"
