"""Send acknowledgements (MOVE, \\Seen, quarantine) on a connection of their own, from a worker
thread, so fetching goes on while the server moves committed mail.

Only committed mail is ever handed over (the connector submits after the store commit). A pass
waits for every acknowledgement it submitted before it ends (:meth:`AckSender.wait`); if one
fails, the mail stays where it is, committed, and the next pass acknowledges it without
storing it again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Generic, TypeVar

from connectors.email.config import ImapConfig
from connectors.email.imap import ImapSession, is_connection_error
from connectors.email.oauth2 import TokenSource

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class AckSender(Generic[T]):
    """One worker thread and one IMAP session that apply ``send(session, token)`` in order.

    ``merge``: turns the tokens that queued up while the previous ones were being sent into
    fewer (e.g. one MOVE instead of several: the server's cost per command is high).
    """

    def __init__(self, config: ImapConfig, send: Callable[[ImapSession, T], None],
                 tokens: TokenSource | None = None,
                 merge: Callable[[list[T]], list[T]] | None = None) -> None:
        self.config = config
        self.tokens = tokens  # the connector's XOAUTH2 tokens, shared (None: password login)
        self._send = send
        self._merge = merge
        self._session: ImapSession | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._pending: list[Future[None]] = []
        self._queue: list[T] = []
        self._lock = threading.Lock()

    def submit(self, token: T) -> None:
        """Queue one acknowledgement (sent after those queued before it)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=f"imap-ack-{self.config.name}")
        with self._lock:
            self._queue.append(token)
        self._pending.append(self._executor.submit(self._run))

    def call(self, fn: Callable[..., R], *args: Any) -> Future[R]:
        """Run ``fn(session, *args)`` on this sender's connection and thread, in turn with the
        acknowledgements (used to read while the connection is otherwise idle)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=f"imap-ack-{self.config.name}")
        return self._executor.submit(self._call, fn, *args)

    def _call(self, fn: Callable[..., R], *args: Any) -> R:
        try:
            if self._session is None or self._session.client is None:
                self._session = ImapSession(self.config, tokens=self.tokens).connect()
            return fn(self._session, *args)
        except Exception as exc:
            if is_connection_error(exc):
                self._drop_session()
            raise

    def _run(self) -> None:
        with self._lock:  # everything queued so far (later jobs find the queue empty)
            queued, self._queue = self._queue, []
        if not queued:
            return
        try:
            if self._session is None or self._session.client is None:
                self._session = ImapSession(self.config, tokens=self.tokens).connect()
            for token in self._merge(queued) if self._merge else queued:
                self._send(self._session, token)
        except Exception as exc:
            if is_connection_error(exc):
                self._drop_session()
            raise

    def wait(self) -> None:
        """Wait until everything queued is sent.

        Raises:
            Exception: the first error (after waiting for all of them).
        """
        pending, self._pending = self._pending, []
        first: BaseException | None = None
        for fut in pending:
            exc = fut.exception()
            if exc is not None and first is None:
                first = exc
        if first is not None:
            raise first

    def _drop_session(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def close(self) -> None:
        """Wait for what is queued (errors are logged), log out, stop the thread."""
        try:
            self.wait()
        except Exception as exc:
            logger.warning("could not acknowledge committed mail; the next run will",
                           extra={"source": self.config.name, "error": str(exc)})
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self._drop_session()
