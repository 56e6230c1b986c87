"""Access codes for the resident-facing progress page (查询码).

References are sequential (``FB-YYYYMMDD-NNNNNN``), so with ``server.progress_secret`` set the
progress endpoint also asks for the case's access code: the first 40 bits of
HMAC-SHA256(secret, reference) in Crockford base32, shown as ``XXXX-XXXX``. It is derived, not
stored: the intake answer, ``feedback-hub cases show`` and any agent holding the secret can
tell it to the resident, and rotating the secret changes every code at once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

#: Crockford's base32 alphabet (no I, L, O, U: easy to read out on the phone).
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_FROM_RFC4648 = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _CROCKFORD)
#: what a resident may type instead: I/L for 1, O for 0
_READ_AS = str.maketrans({"I": "1", "L": "1", "O": "0"})


def access_code(secret: str, reference: str) -> str:
    """The access code of ``reference`` under ``secret`` (``XXXX-XXXX``)."""
    digest = hmac.new(secret.encode(), reference.encode(), hashlib.sha256).digest()
    code = base64.b32encode(digest[:5]).decode().translate(_FROM_RFC4648)
    return f"{code[:4]}-{code[4:]}"


def normalize(given: str) -> str:
    """A code as typed (any case, spaces or hyphens, I/L/O for 1/1/0) in canonical form."""
    raw = "".join(ch for ch in given.upper() if ch.isalnum()).translate(_READ_AS)
    return f"{raw[:4]}-{raw[4:]}" if len(raw) == 8 else raw


def check(secret: str, reference: str, given: str | None) -> bool:
    """Whether ``given`` is the access code of ``reference`` (constant-time compare)."""
    if not given:
        return False
    return hmac.compare_digest(normalize(given).encode(), access_code(secret, reference).encode())
