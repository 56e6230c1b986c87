"""HMAC-SHA256 request signatures, the same scheme both ways.

The hub signs webhook deliveries with it, and verifies ``POST /v1/records`` with it:

* ``X-FeedbackHub-Timestamp``: Unix time in seconds when the request was signed;
* ``X-FeedbackHub-Signature``: ``v1=`` + hex HMAC-SHA256 with the shared secret over the bytes
  ``timestamp + "." + body`` (the exact body bytes sent);
* ``X-FeedbackHub-Key-Id`` (intake only): which shared secret was used.

A receiver recomputes the HMAC, compares in constant time (:func:`hmac.compare_digest`) and
refuses timestamps older or newer than its replay window (5 minutes by default).
"""

from __future__ import annotations

import hashlib
import hmac
import time

TIMESTAMP_HEADER = "X-FeedbackHub-Timestamp"
SIGNATURE_HEADER = "X-FeedbackHub-Signature"
KEY_ID_HEADER = "X-FeedbackHub-Key-Id"
SCHEME = "v1"


def signature(secret: str | bytes, timestamp: str | int, body: bytes) -> str:
    """The ``v1=<hex>`` signature of ``timestamp.body``."""
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    mac = hmac.new(key, f"{timestamp}.".encode("ascii") + body, hashlib.sha256)
    return f"{SCHEME}={mac.hexdigest()}"


def sign_headers(secret: str | bytes, body: bytes, *, key_id: str | None = None,
                 now: float | None = None) -> dict[str, str]:
    """Headers that sign ``body`` now."""
    ts = str(int(now if now is not None else time.time()))
    headers = {TIMESTAMP_HEADER: ts, SIGNATURE_HEADER: signature(secret, ts, body)}
    if key_id:
        headers[KEY_ID_HEADER] = key_id
    return headers


class Signer:
    """Signs many bodies with one secret: the keyed HMAC state is built once and copied.

    Produces exactly what :func:`sign_headers` does (same headers, same signature).
    """

    def __init__(self, secret: str | bytes) -> None:
        key = secret.encode("utf-8") if isinstance(secret, str) else secret
        self._base = hmac.new(key, digestmod=hashlib.sha256)

    def headers(self, body: bytes, now: float | None = None) -> dict[str, str]:
        """Timestamp and signature headers for ``body`` signed now."""
        ts = str(int(now if now is not None else time.time()))
        mac = self._base.copy()
        mac.update(f"{ts}.".encode("ascii") + body)
        return {TIMESTAMP_HEADER: ts, SIGNATURE_HEADER: f"{SCHEME}={mac.hexdigest()}"}

    def __repr__(self) -> str:  # never show the key
        return "Signer(***)"


def verify(secret: str | bytes, timestamp: str | None, given: str | None, body: bytes, *,
           window: float = 300.0, now: float | None = None) -> str | None:
    """Check a signature; return None when valid, else a short internal reason.

    The reason is for logs and metrics only; callers answer every failure the same way so
    nothing leaks to the client.
    """
    if not timestamp or not given:
        return "missing"
    if not timestamp.isdigit():
        return "bad_timestamp"
    now = time.time() if now is None else now
    if abs(now - int(timestamp)) > window:
        return "stale"
    expected = signature(secret, timestamp, body)
    # compare every candidate (a sender may list several during secret rotation)
    ok = False
    for part in given.split(","):
        ok |= hmac.compare_digest(part.strip().encode(), expected.encode())
    return None if ok else "bad_signature"
