"""Run a job of the next batch (fetching its bodies, making its pack durable) on a worker
thread while the current batch is committed and acknowledged (the IMAP server, the disk and the
store then work at the same time).

The IMAP session is not thread-safe, so it is used by one thread at a time: the connector uses
it only between :meth:`Lookahead.take` (or :meth:`Lookahead.settle`) and the next
:meth:`Lookahead.start`, and acknowledgements go over a connection of their own
(:mod:`connectors.email.acker`).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Lookahead(Generic[T]):
    """At most one job in flight, on one worker thread."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._executor: ThreadPoolExecutor | None = None
        self._pending: Future[T] | None = None

    def start(self, job: Callable[..., T], *args: Any) -> None:
        """Begin ``job(*args)`` on the worker; :meth:`take` returns its result."""
        self.settle()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1,
                                                thread_name_prefix=f"imap-{self.name}")
        self._pending = self._executor.submit(job, *args)

    def take(self) -> T:
        """The result of the job begun last (its error, if it failed).

        Raises:
            RuntimeError: if no job was started.
        """
        pending, self._pending = self._pending, None
        if pending is None:
            raise RuntimeError("nothing was started")
        return pending.result()

    def settle(self) -> None:
        """Wait for a job still running and drop its result (the generator was closed early)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            try:
                pending.result()
            except Exception:  # nobody wants this result any more
                pass

    def close(self) -> None:
        """Stop the worker thread."""
        self.settle()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
