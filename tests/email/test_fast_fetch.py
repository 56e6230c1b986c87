"""The connector's fast FETCH readers give exactly what IMAPClient's parser gives (real Dovecot).

Server: the session Dovecot from tests/email/conftest.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from imapclient import IMAPClient

from connectors.email import fast_fetch
from connectors.email.demo_server import Dovecot
from tests.email import mails
from tests.email.test_imap_pipeline import ALL

pytestmark = pytest.mark.integration


@pytest.fixture
def client(dovecot: Dovecot, mailbox: str) -> Iterator[IMAPClient]:
    # every sample mail (charsets, attachments, 8-bit headers) plus numbered ones and one large
    dovecot.append(mailbox, [*ALL, *(mails.numbered(i) for i in range(20)),
                             mails.numbered(99, 300_000)])
    c = dovecot.client(mailbox)
    c.normalise_times = False  # as the connector's session sets it
    c.select_folder("INBOX")
    c.add_flags(c.search(["ALL"])[:3], [b"\\Flagged"])
    try:
        yield c
    finally:
        c.logout()


def test_sizes_and_dates_match_imapclient(client: IMAPClient) -> None:
    uids = sorted(client.search(["ALL"]))
    fast = fast_fetch.sizes(client, uids)
    assert fast is not None  # the fast path read it (no fallback)
    slow = {uid: (int(d[b"RFC822.SIZE"]), d[b"INTERNALDATE"])
            for uid, d in client.fetch(uids, ["RFC822.SIZE", "INTERNALDATE"]).items()}
    assert fast == slow and len(fast) == len(uids)
    assert all(date.tzinfo is not None for _, date in fast.values())


def test_bodies_match_imapclient_and_leave_seen_alone(client: IMAPClient) -> None:
    uids = sorted(client.search(["ALL"]))
    fast = fast_fetch.bodies(client, uids[::-1])  # any order of UIDs
    assert fast is not None
    slow = {uid: d[b"BODY[]"] for uid, d in client.fetch(uids, ["BODY.PEEK[]"]).items()}
    assert fast == slow and len(fast) == len(uids)
    assert client.search(["SEEN"]) == []


def test_unknown_uids_are_left_out_and_sequence_mode_falls_back(client: IMAPClient) -> None:
    uids = sorted(client.search(["ALL"]))
    assert set(fast_fetch.bodies(client, [uids[0], uids[-1] + 100]) or {}) == {uids[0]}
    client.use_uid = False
    try:
        assert fast_fetch.sizes(client, [1]) is None
        assert fast_fetch.bodies(client, [1]) is None
    finally:
        client.use_uid = True


def test_uid_sets_join_only_consecutive_uids() -> None:
    assert fast_fetch.uid_set([7]) == "7"
    assert fast_fetch.uid_set([5, 1, 2, 3, 7, 8, 3]) == "1:3,5,7:8"
    assert fast_fetch.uid_set(range(100_000, 110_000)) == "100000:109999"
    with pytest.raises(ValueError):
        fast_fetch.uid_set([])


def test_a_move_as_ranges_moves_exactly_the_uids_named(client: IMAPClient) -> None:
    uids = sorted(client.search(["ALL"]))
    keep = {uids[2], uids[5]}  # gaps inside what is moved: never covered by a range
    move = [u for u in uids[:8] if u not in keep]
    client.create_folder("Done")
    fast_fetch.move(client, move, "Done")
    assert set(client.search(["ALL"])) == set(uids) - set(move)
    # what the server got: as many ranges as runs, not one number per mail
    assert fast_fetch.uid_set(move).count(",") == 2
    client.select_folder("Done")
    assert len(client.search(["ALL"])) == len(move)
