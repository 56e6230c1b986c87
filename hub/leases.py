"""Named leases in the store: one holder at a time across threads, processes and hosts.

A lease is a row of the ``locks`` table with an owner and an expiry. The holder renews it while
it works; a holder that crashed stops renewing and the lease runs out after ``ttl``. A holder
on this host whose process no longer exists is taken over at once (owners are named
``host:pid:nonce``, the nonce telling apart two holders in one process).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from typing import Any

logger = logging.getLogger(__name__)


class LeaseLost(RuntimeError):
    """Another holder took the lease (ours ran out while we worked)."""


def owner_id(worker_id: str | None = None) -> str:
    """A unique owner name: ``host:pid:nonce`` (or ``worker_id:nonce``)."""
    base = worker_id or f"{socket.gethostname()}:{os.getpid()}"
    return f"{base}:{uuid.uuid4().hex[:8]}"


def holder_is_dead(owner: str, host: str | None = None) -> bool:
    """Whether ``owner`` (``host:pid[:...]``) names a process on ``host`` (default: this one)
    that no longer exists."""
    parts = owner.split(":")
    if len(parts) < 2 or parts[0] != (host or socket.gethostname()) or not parts[1].isdigit():
        return False
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Lease:
    """One named lease held (or wanted) by this owner."""

    def __init__(self, store: Any, name: str, ttl: float, owner: str | None = None) -> None:
        self.store = store
        self.name = name
        self.ttl = ttl
        self.owner = owner or owner_id()
        self.held = False
        self._renewed = 0.0

    def holder(self) -> str | None:
        """Who holds the lease now (None if nobody)."""
        rows = self.store.query("SELECT owner FROM locks WHERE name = ?", (self.name,))
        return str(rows[0]["owner"]) if rows else None

    def take(self, wait: float = 0.0, poll: float = 0.05) -> bool:
        """Take the lease, waiting up to ``wait`` seconds for the holder to let go."""
        deadline = time.monotonic() + wait
        while True:
            if self._try():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll)

    def _try(self) -> bool:
        if self.store.acquire_lock(self.name, self.owner, self.ttl):
            self.held, self._renewed = True, time.monotonic()
            return True
        holder = self.holder()
        if holder and holder_is_dead(holder):
            logger.warning("taking over the lease of a crashed holder",
                           extra={"lease": self.name, "holder": holder})
            self.store.release_lock(self.name, holder)
            if self.store.acquire_lock(self.name, self.owner, self.ttl):
                self.held, self._renewed = True, time.monotonic()
                return True
        return False

    def renew(self, force: bool = False) -> None:
        """Extend the lease (cheap to call often: renews after a quarter of the ttl).

        Raises:
            LeaseLost: another holder has it now.
        """
        if not self.held:
            raise LeaseLost(f"lease {self.name} is not held")
        if not force and time.monotonic() - self._renewed < self.ttl / 4:
            return
        if not self.store.acquire_lock(self.name, self.owner, self.ttl):
            self.held = False
            raise LeaseLost(f"lost the lease {self.name} to {self.holder() or 'another holder'}")
        self._renewed = time.monotonic()

    def release(self) -> None:
        """Let go (never raises: a lease not released runs out after its ttl)."""
        if not self.held:
            return
        self.held = False
        try:
            self.store.release_lock(self.name, self.owner)
        except Exception:
            logger.warning("could not release a lease", exc_info=True,
                           extra={"lease": self.name})

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
