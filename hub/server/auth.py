"""Authentication for the intake endpoints: HMAC-signed bodies and Open311 api keys.

Every refusal is answered the same way (``401``/``403`` with no detail); the specific reason
goes to logs and metrics only.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import SecretStr

from outbox.sinks.signing import KEY_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, verify


class SignatureLedger:
    """Signatures seen within the replay window, kept in the store (a replayed request is
    refused by every ``serve`` process that shares the store, on any host).

    Each accepted signature takes a row in the store's ``locks`` table named by its SHA-256,
    held for twice the window (a timestamp may be up to one window in the future); expired
    rows are purged about once a minute. An honest client retrying signs again (new
    timestamp, new signature) and still gets the same references back, because intake is
    idempotent on the upstream id.
    """

    PREFIX = "intake-signature:"

    def __init__(self, store: Any, lock: threading.Lock, window: float,
                 purge_every: float = 60.0) -> None:
        self.store = store
        self.lock = lock
        self.window = window
        self.purge_every = purge_every
        self._purged = time.monotonic()

    def check_and_add(self, signature: str) -> bool:
        """Remember a signature; False when it was already seen and has not expired."""
        name = self.PREFIX + hashlib.sha256(signature.encode()).hexdigest()
        with self.lock:
            if time.monotonic() - self._purged >= self.purge_every:
                self.store.purge_expired_locks(self.PREFIX)
                self._purged = time.monotonic()
            # a fresh owner each time: a second request with the same signature never
            # renews the first one's row, it finds it held
            return bool(self.store.acquire_lock(name, f"signature/{uuid.uuid4().hex}",
                                                2 * self.window))


def check_hmac(headers: Mapping[str, str], body: bytes, secrets: Mapping[str, SecretStr],
               window: float, now: float | None = None) -> tuple[str | None, str | None]:
    """Verify a signed request.

    Returns:
        (key_id, None) when valid, else (key_id or None, reason) with an internal reason:
        ``missing``, ``unknown_key``, ``bad_timestamp``, ``stale``, ``bad_signature``.
    """
    key_id = headers.get(KEY_ID_HEADER)
    ts = headers.get(TIMESTAMP_HEADER)
    sig = headers.get(SIGNATURE_HEADER)
    if not key_id or not ts or not sig:
        return key_id, "missing"
    secret = secrets.get(key_id)
    if secret is None:
        # still spend the same time as a real check so key ids cannot be probed by timing
        verify("0" * 32, ts, sig, body, window=window, now=now)
        return key_id, "unknown_key"
    return key_id, verify(secret.get_secret_value(), ts, sig, body, window=window, now=now)


def check_api_key(given: str | None, keys: Sequence[SecretStr]) -> bool:
    """Constant-time check of an Open311 ``api_key`` against the configured ones."""
    if not given:
        return False
    ok = False
    for k in keys:
        ok |= hmac.compare_digest(given.encode(), k.get_secret_value().encode())
    return ok
