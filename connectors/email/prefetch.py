"""Fetch the next batch's mail bodies while the current batch is synced, committed and
acknowledged (the IMAP server, the disk and the store then work at the same time).

The IMAP session is not thread-safe, so it is used by one thread at a time: the connector uses
it only between :meth:`BodyPrefetcher.take` (or :meth:`BodyPrefetcher.settle`) and the next
:meth:`BodyPrefetcher.start`, and acknowledgements go over a connection of their own
(:mod:`connectors.email.acker`).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

from connectors.email.imap import ImapSession


class BodyPrefetcher:
    """At most one body fetch in flight, on one worker thread."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._executor: ThreadPoolExecutor | None = None
        self._pending: Future[dict[int, bytes]] | None = None

    def start(self, session: ImapSession, uids: list[int]) -> None:
        """Begin fetching ``uids`` (``BODY.PEEK[]``); :meth:`take` returns them."""
        self.settle()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1,
                                                thread_name_prefix=f"imap-prefetch-{self.name}")
        self._pending = self._executor.submit(self._fetch, session, uids)

    def _fetch(self, session: ImapSession, uids: list[int]) -> dict[int, bytes]:
        return session.fetch_bodies(uids) if uids else {}

    def take(self) -> dict[int, bytes]:
        """The bodies of the fetch begun last (its error, if it failed)."""
        pending, self._pending = self._pending, None
        return pending.result() if pending is not None else {}

    def settle(self) -> None:
        """Wait for a fetch still running and drop it (the generator was closed early)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            try:
                pending.result()
            except Exception:  # nobody wants these bodies any more
                pass

    def close(self) -> None:
        """Stop the worker thread."""
        self.settle()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
