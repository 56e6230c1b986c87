"""Authentication for the intake endpoints: HMAC-signed bodies and Open311 api keys.

Every refusal is answered the same way (``401``/``403`` with no detail); the specific reason
goes to logs and metrics only.
"""

from __future__ import annotations

import hmac
import threading
import time
from collections.abc import Mapping, Sequence

from pydantic import SecretStr

from outbox.sinks.signing import KEY_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, verify


class NonceCache:
    """Signatures seen within the replay window (a replayed request is refused).

    In memory, per server process: run one ``serve`` process per host, or put a sticky load
    balancer in front; an honest client retrying signs again (new timestamp, new signature) and
    still gets the same references back, because intake is idempotent on the upstream id.
    """

    def __init__(self, window: float, max_entries: int = 200_000) -> None:
        self.window = window
        self.max_entries = max_entries
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def check_and_add(self, signature: str, now: float | None = None) -> bool:
        """Remember a signature; False when it was already seen and has not expired."""
        now = time.time() if now is None else now
        with self._lock:
            expires = self._seen.get(signature)
            if expires is not None and expires > now:
                return False
            if len(self._seen) >= self.max_entries:
                for k in [k for k, v in self._seen.items() if v <= now]:
                    del self._seen[k]
                if len(self._seen) >= self.max_entries:  # still full: drop the oldest
                    for k in list(self._seen)[: self.max_entries // 10]:
                        del self._seen[k]
            # a timestamp may be up to `window` in the future: keep it for twice that
            self._seen[signature] = now + 2 * self.window
            return True


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
