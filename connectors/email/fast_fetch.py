"""The connector's bulk commands, their responses read straight from imaplib's socket file.

imaplib reads every response line through several Python layers (``_get_response``,
``_get_line``, a regular expression per line, ``_append_untagged``), then IMAPClient
re-tokenizes every FETCH response; for small mail that costs more than the network and the
server. The commands the connector repeats for every mail have a fixed, simple shape, so their
responses are read here, one ``readline`` (and one ``read`` per literal) and one regular
expression per mail:

* ``UID FETCH <uids> (RFC822.SIZE INTERNALDATE)``: ``* 3 FETCH (UID 7 RFC822.SIZE 812
  INTERNALDATE "25-Nov-2026 11:02:03 +0800")``;
* ``UID FETCH <uids> (BODY.PEEK[])``: ``* 3 FETCH (UID 7 BODY[] {812}`` + the literal + ``)``;
* ``UID MOVE <uids> <folder>``, and any command: ``* 5 EXPUNGE`` lines (the fetching
  connection gets one for every mail the acknowledging connection moved).

Every line in another shape (items in another order or form, unsolicited FLAGS, EXISTS, the
tagged completion, BYE...) is handed to imaplib's own ``_get_response`` (:func:`_replay`), so
it lands where imaplib puts it, and FETCH responses read that way are parsed by IMAPClient's
``parse_fetch_response``: the result is what IMAPClient's ``fetch`` gives, only cheaper.
Unsolicited FETCH responses for other UIDs are dropped, as IMAPClient's ``fetch`` does.

Bodies can be pipelined (:class:`BodyFetches`): the next ``UID FETCH`` is sent before the
current one's response is read, so the server prepares it meanwhile.
"""

from __future__ import annotations

import imaplib
import re
from collections.abc import Callable, Collection, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from imapclient import IMAPClient
from imapclient.datetime_util import parse_to_datetime
from imapclient.response_parser import parse_fetch_response

_SIZE_LINE = re.compile(rb'\* \d+ FETCH \(UID (\d+) RFC822\.SIZE (\d+) INTERNALDATE "([^"\r\n]*)"'
                        rb"\)\r\n")
_BODY_LINE = re.compile(rb"\* \d+ FETCH \(UID (\d+) BODY\[\] \{(\d+)\}\r\n")
_EXPUNGE_LINE = re.compile(rb"\* (\d+) EXPUNGE\r\n")
# INTERNALDATE: date-day-fixed "-" date-month "-" date-year SP time SP zone (RFC 3501)
_IDATE = re.compile(rb"( ?\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)")
_MONTHS = {m: i for i, m in enumerate(
    (b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct", b"nov",
     b"dec"), 1)}
_ZONES: dict[bytes, timezone] = {}


def internaldate(value: bytes) -> datetime:
    """An INTERNALDATE as the aware datetime IMAPClient gives with ``normalise_times`` off.

    The fixed IMAP form is read directly (a few times faster than ``email.utils``); anything
    else, and ``-0000`` (no zone: IMAPClient gives a naive datetime), goes to IMAPClient.
    """
    m = _IDATE.fullmatch(value)
    month = _MONTHS.get(m.group(2).lower()) if m else None
    if m is None or month is None or value.endswith(b"-0000"):
        return parse_to_datetime(value, normalise=False)
    zone = value[-5:]
    tz = _ZONES.get(zone)
    if tz is None:
        minutes = int(m.group(8)) * 60 + int(m.group(9))
        tz = _ZONES.setdefault(zone, timezone(timedelta(minutes=-minutes if m.group(7) == b"-"
                                                        else minutes)))
    try:
        return datetime(int(m.group(3)), month, int(m.group(1)), int(m.group(4)),
                        int(m.group(5)), int(m.group(6)), tzinfo=tz)
    except ValueError:  # e.g. a leap second: IMAPClient's reading, whatever it makes of it
        return parse_to_datetime(value, normalise=False)


def uid_set(uids: Collection[int]) -> str:
    """A UID sequence set naming exactly ``uids``, runs of consecutive UIDs as ranges
    (``[1, 2, 3, 5, 7, 8]`` → ``1:3,5,7:8``).

    A pass's batches and merged MOVEs are mostly unbroken runs, so the command stays a few
    bytes long however many mails it names (a list of 10,000 six-digit UIDs is 70 KB, over
    Dovecot's default ``imap_max_line_length`` of 64k), and the server parses a few ranges
    instead of thousands of numbers. Only consecutive integers are joined: a range never names
    a UID that is not in ``uids``.

    Raises:
        ValueError: if ``uids`` is empty (an empty set is not valid IMAP).
    """
    ordered = sorted(set(uids))
    if not ordered:
        raise ValueError("no UIDs")
    parts: list[str] = []
    start = prev = ordered[0]
    for uid in ordered[1:]:
        if uid != prev + 1:
            parts.append(str(start) if start == prev else f"{start}:{prev}")
            start = uid
        prev = uid
    parts.append(str(start) if start == prev else f"{start}:{prev}")
    return ",".join(parts)


# ---------------------------------------------------------------------- the reader
def _replay(imap: imaplib.IMAP4, lines: Sequence[bytes], literals: Sequence[bytes] = ()) -> None:
    """Let imaplib's own ``_get_response`` handle one response of which this module already
    read ``lines`` (raw, with CRLF) and ``literals``; it reads the rest from the socket."""
    pending_lines, pending_literals = list(lines)[::-1], list(literals)[::-1]
    get_line, read = imap._get_line, imap.read

    def replay_line() -> bytes:
        if not pending_lines:
            return get_line()
        line = pending_lines.pop()
        if not line:
            raise imap.abort("socket error: EOF")
        if not line.endswith(b"\r\n"):
            raise imap.abort(f"socket error: unterminated line: {line!r}")
        return line[:-2]

    def replay_read(size: int) -> bytes:
        return pending_literals.pop() if pending_literals else read(size)

    imap._get_line = replay_line  # type: ignore[method-assign]  # one response, then removed
    imap.read = replay_read  # type: ignore[method-assign]
    try:
        imap._get_response()
    finally:
        del imap._get_line, imap.read


#: A fast line reader: (line, readline, read) -> True if it read the whole response itself.
Handler = Callable[[bytes, Callable[[int], bytes], Callable[[int], bytes]], bool]


def _no_lines(line: bytes, readline: Callable[[int], bytes], read: Callable[[int], bytes]
              ) -> bool:
    return False


def _complete(imap: imaplib.IMAP4, name: str, tag: bytes, handle: Handler) -> tuple[str, Any]:
    """What ``imap._command_complete(name, tag)`` does, reading the lines ``handle`` knows
    itself and handing every other line to imaplib."""
    limit = imaplib._MAXLINE + 1  # type: ignore[attr-defined]
    readline, read = imap.file.readline, imap.file.read
    tagged = imap.tagged_commands
    expunge = _EXPUNGE_LINE.fullmatch

    def checked_readline(_: int = 0) -> bytes:
        line = readline(limit)
        if len(line) > imaplib._MAXLINE:  # type: ignore[attr-defined]
            raise imap.error(f"got more than {imaplib._MAXLINE} bytes")  # type: ignore
        return line

    imap._check_bye()
    try:
        while tagged[tag] is None:
            imap._check_bye()
            line = checked_readline()
            if handle(line, checked_readline, read):
                continue
            expunged = expunge(line)
            if expunged is not None:  # mail moved away by the acknowledging connection
                imap._append_untagged("EXPUNGE", expunged.group(1))  # where imaplib puts it
                continue
            _replay(imap, [line])
        typ, data = tagged.pop(tag)
    except imap.abort as exc:
        raise imap.abort(f"command: {name} => {exc}") from None
    except imap.error as exc:
        raise imap.error(f"command: {name} => {exc}") from None
    imap._check_bye()
    if typ == "BAD":
        raise imap.error(f"{name} command error: {typ} {data}")
    return typ, data


def _send(client: IMAPClient, *args: str) -> bytes | None:
    """Send a UID command; None when the client is not in the plain UID mode read here."""
    if not client.use_uid:
        return None
    return client._imap._command("UID", *args)  # IMAPClient's documented escape hatch


def _finish_fetch(client: IMAPClient, tag: bytes, handle: Handler) -> dict[int, dict[bytes, Any]]:
    """Complete a FETCH: check it, and parse the responses imaplib read (other shapes)."""
    imap = client._imap
    typ, data = _complete(imap, "FETCH", tag, handle)
    client._checkok("fetch", typ, data)
    typ, data = imap._untagged_response(typ, data, "FETCH")
    data = [d for d in data if d is not None]
    return parse_fetch_response(data, client.normalise_times, True) if data else {}


# ---------------------------------------------------------------------- the commands
def sizes(client: IMAPClient, uids: Sequence[int]) -> dict[int, tuple[int, datetime]] | None:
    """UID → (RFC822.SIZE, INTERNALDATE as an aware datetime), or None (use IMAPClient)."""
    tag = _send(client, "FETCH", uid_set(uids), "(RFC822.SIZE INTERNALDATE)")
    if tag is None:
        return None
    out: dict[int, tuple[int, datetime]] = {}
    match = _SIZE_LINE.fullmatch
    normalise = client.normalise_times

    def handle(line: bytes, readline: Callable[[int], bytes], read: Callable[[int], bytes]
               ) -> bool:
        m = match(line)
        if m is None:
            return False
        date = internaldate(m.group(3)) if not normalise else parse_to_datetime(m.group(3))
        out[int(m.group(1))] = (int(m.group(2)), date)
        return True

    slow = _finish_fetch(client, tag, handle)
    for uid, data in slow.items():
        if b"RFC822.SIZE" in data or b"INTERNALDATE" in data:
            out[uid] = (int(data.get(b"RFC822.SIZE", 0)), data.get(b"INTERNALDATE"))
    wanted = set(uids)
    return {uid: v for uid, v in out.items() if uid in wanted}


class BodyFetches:
    """``UID FETCH <uids> (BODY.PEEK[])`` commands in flight on one connection, collected in
    the order they were sent (\\Seen is left alone).

    The connection belongs to whoever holds this object: nothing else may be sent on it until
    every request is collected (or :meth:`drain` is called).
    """

    def __init__(self, client: IMAPClient) -> None:
        self.client = client
        self._sent: list[tuple[bytes, set[int]]] = []
        self._early: dict[int, bytes] = {}  # bodies read while collecting an earlier request

    def __len__(self) -> int:
        return len(self._sent)

    def sent_first(self, uids: Sequence[int]) -> bool:
        """Whether the oldest request in flight asks for exactly these UIDs."""
        return bool(self._sent) and self._sent[0][1] == set(uids)

    def send(self, uids: Sequence[int]) -> bool:
        """Send one FETCH; False when the client is not in the mode read here."""
        tag = _send(self.client, "FETCH", uid_set(uids), "(BODY.PEEK[])")
        if tag is None:
            return False
        self._sent.append((tag, set(uids)))
        return True

    def collect(self) -> dict[int, bytes]:
        """UID → message of the oldest request sent (its UIDs the server still has)."""
        tag, wanted = self._sent.pop(0)
        got = self._early
        match = _BODY_LINE.fullmatch

        def handle(line: bytes, readline: Callable[[int], bytes], read: Callable[[int], bytes]
                   ) -> bool:
            m = match(line)
            if m is None:
                return False
            literal = read(int(m.group(2)))
            tail = readline(0)
            if tail != b")\r\n":  # more items after the body: imaplib and IMAPClient read it
                _replay(self.client._imap, [line, tail], [literal])
                return True
            got[int(m.group(1))] = literal
            return True

        try:
            for uid, data in _finish_fetch(self.client, tag, handle).items():
                if b"BODY[]" in data:
                    got[uid] = data[b"BODY[]"]
        except BaseException:
            self._sent.clear()  # the connection is in an unknown state: drop everything
            self._early = {}
            raise
        mine = {uid: got.pop(uid) for uid in wanted if uid in got}
        pending = set().union(*(w for _, w in self._sent)) if self._sent else set()
        self._early = {uid: body for uid, body in got.items() if uid in pending}
        return mine

    def drain(self) -> None:
        """Read (and drop) the responses of every request still in flight."""
        while self._sent:
            self.collect()
        self._early = {}


def bodies(client: IMAPClient, uids: Sequence[int]) -> dict[int, bytes] | None:
    """UID → the whole message (``BODY.PEEK[]``, \\Seen untouched), or None (use IMAPClient)."""
    fetches = BodyFetches(client)
    if not fetches.send(uids):
        return None
    return fetches.collect()


def move(client: IMAPClient, uids: Collection[int], folder: str) -> list[Any] | None:
    """``UID MOVE`` (RFC 6851) as IMAPClient's ``move`` does it (same result), reading the
    EXPUNGE lines itself; None when the client is not in the mode read here."""
    tag = _send(client, "MOVE", uid_set(uids),
                client._normalise_folder(folder))
    if tag is None:
        return None
    imap = client._imap
    typ, data = _complete(imap, "UID", tag, _no_lines)  # its EXPUNGE lines: read by _complete
    typ, data = imap._untagged_response(typ, data, "FETCH")  # what imaplib's uid() returns
    client._checkok("move", typ, data)
    return data
