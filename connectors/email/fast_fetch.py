"""The connector's two bulk FETCHes, read straight from imaplib's responses.

IMAPClient re-tokenizes every FETCH response in Python, which costs more than the network and
the server for small mail. The two FETCHes the connector repeats for every mail have a fixed,
simple shape, so they are read here with one regular expression per response:

* ``UID FETCH <uids> (RFC822.SIZE INTERNALDATE)``: ``* 3 FETCH (UID 7 RFC822.SIZE 812
  INTERNALDATE "25-Nov-2026 11:02:03 +0800")``, the items in any order;
* ``UID FETCH <uids> (BODY.PEEK[])``: ``* 3 FETCH (UID 7 BODY[] {812}`` + the literal.

Anything else (an item in another form, a response these patterns do not read) makes the
function return None and the caller uses IMAPClient's own parser for the whole command, so the
fast path can only be faster, never different. Unsolicited FETCH responses (flag changes by
another client) for other UIDs are ignored, as IMAPClient's ``fetch`` does.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from imapclient import IMAPClient
from imapclient.datetime_util import parse_to_datetime
from imapclient.imapclient import join_message_ids

_UID = re.compile(rb"[ (]UID (\d+)[ )]")
_SIZE = re.compile(rb"[ (]RFC822\.SIZE (\d+)[ )]")
_DATE = re.compile(rb'[ (]INTERNALDATE "([^"]+)"[ )]')
_BODY_HEAD = re.compile(rb"^\d+ \((?:.* )?BODY\[\] \{\d+\}$")


def _fetch(client: IMAPClient, uids: Sequence[int], items: str) -> list[Any] | None:
    """Send ``UID FETCH`` and return imaplib's raw FETCH data, or None when the client is not
    in the plain UID mode this module reads."""
    if not client.use_uid:
        return None
    imap = client._imap  # the imaplib.IMAP4 under IMAPClient (its documented escape hatch)
    tag = imap._command("UID", "FETCH", join_message_ids(list(uids)), items)
    typ, data = imap._command_complete("FETCH", tag)
    client._checkok("fetch", typ, data)
    typ, data = imap._untagged_response(typ, data, "FETCH")
    return [d for d in data if d is not None]


def sizes(client: IMAPClient, uids: Sequence[int]) -> dict[int, tuple[int, datetime]] | None:
    """UID → (RFC822.SIZE, INTERNALDATE as an aware datetime), or None (use IMAPClient)."""
    data = _fetch(client, uids, "(RFC822.SIZE INTERNALDATE)")
    if data is None:
        return None
    wanted = set(uids)
    out: dict[int, tuple[int, datetime]] = {}
    for line in data:
        if not isinstance(line, bytes):
            return None  # a literal: not the shape read here
        uid = _UID.search(line)
        if uid is None:
            return None
        if int(uid.group(1)) not in wanted:
            continue  # unsolicited
        size, date = _SIZE.search(line), _DATE.search(line)
        if size is None or date is None:
            if b"RFC822.SIZE" in line or b"INTERNALDATE" in line:
                return None
            continue  # an unsolicited FLAGS response for a UID we asked about
        out[int(uid.group(1))] = (int(size.group(1)),
                                  parse_to_datetime(date.group(1), normalise=False))
    return out


def bodies(client: IMAPClient, uids: Sequence[int]) -> dict[int, bytes] | None:
    """UID → the whole message (``BODY.PEEK[]``, \\Seen untouched), or None (use IMAPClient)."""
    data = _fetch(client, uids, "(BODY.PEEK[])")
    if data is None:
        return None
    wanted = set(uids)
    out: dict[int, bytes] = {}
    for item in data:
        if isinstance(item, bytes):
            if item == b")" or (item.startswith(b" ") and item.endswith(b")")):
                continue  # the end of a response (possibly with trailing items such as UID)
            if b"BODY[]" in item:
                return None  # a body not sent as a literal (NIL, a quoted string)
            continue  # an unsolicited FLAGS response
        if not (isinstance(item, tuple) and len(item) == 2):
            return None
        head, literal = item
        if not _BODY_HEAD.match(head):
            return None
        uid = _UID.search(head)
        if uid is None:
            return None  # the UID came after the body: let IMAPClient pair them
        if int(uid.group(1)) in wanted:
            out[int(uid.group(1))] = literal
    return out
