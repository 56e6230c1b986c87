"""The sizes and INTERNALDATEs of a pass's new mail, read while its first batches are fetched.

Batches are cut by size and large mail is streamed, so the connector needs every mail's
``RFC822.SIZE`` before it fetches its body. Reading them all first kept the fetching connection
(and everything behind it) waiting; now only the first batches' sizes are read there, and the
rest in chunks on the acknowledging connection (a server process of its own, idle until the
first commit) while those batches are fetched and committed. If that fails, the rest is read on
the fetching connection after all.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

from connectors.email.imap import ImapSession

logger = logging.getLogger(__name__)

CHUNK = 1000  # UIDs per FETCH on the acknowledging connection

Meta = dict[int, tuple[int, Any]]


def sizes_on(session: ImapSession, folder: str, uidvalidity: int, uids: Sequence[int]) -> Meta:
    """Read sizes on another session: select the folder and check it is the same one."""
    session.c.normalise_times = False  # INTERNALDATE as tz-aware datetimes, as the fetcher's
    if session.selected != folder:
        session.select(folder)
    if session.uidvalidity != uidvalidity:
        raise RuntimeError(f"UIDVALIDITY of {folder} changed")
    return session.sizes(uids)


class PassSizes:
    """UID → (RFC822.SIZE, INTERNALDATE) for the UIDs of one pass, in UID order.

    Args:
        session: the fetching session (the first ``head`` UIDs are read on it now).
        folder, uidvalidity: what ``session`` has selected.
        uids: the pass's UIDs, ascending.
        head: how many to read at once.
        call: runs ``fn(other_session, *args)`` on the acknowledging connection, returns a
            future (:meth:`connectors.email.acker.AckSender.call`); None reads everything now.
    """

    def __init__(self, session: ImapSession, folder: str, uidvalidity: int,
                 uids: Sequence[int], head: int,
                 call: Callable[..., Future[Meta]] | None) -> None:
        self.uids = uids
        head = len(uids) if call is None else min(head, len(uids))
        # asked first: the other connection logs in and selects while the head is read here
        self._later: deque[tuple[int, Future[Meta]]] = deque(
            (start, call(sizes_on, folder, uidvalidity, uids[start:start + CHUNK]))
            for start in range(head, len(uids), CHUNK)) if call is not None else deque()
        self.meta: Meta = session.sizes(uids[:head])
        self.known = head  # uids[:known] are in meta (or expunged)

    def need(self, index: int, ready: Callable[[], ImapSession]) -> None:
        """Make sure the sizes of ``uids[:index + 1]`` are known.

        ``ready``: gives the fetching session, free to use, if the other connection failed.
        """
        while self.known <= index:
            start, future = self._later.popleft()
            try:
                self.meta.update(future.result())
                self.known = min(start + CHUNK, len(self.uids))
            except Exception as exc:
                logger.info("reading sizes on the fetching connection",
                            extra={"error": str(exc)})
                self.meta.update(ready().sizes(self.uids[start:]))
                self.known = len(self.uids)
                self._later.clear()
