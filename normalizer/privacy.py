"""PII detection and masking (phone numbers, ID numbers, bank cards, e-mail addresses)."""

from __future__ import annotations

import re

_MOBILE = re.compile(r"(?<!\d)(?:\+?86[- ]?)?(1[3-9]\d)[- ]?(\d{4})[- ]?(\d{4})(?!\d)")
_ID18 = re.compile(r"(?<![0-9A-Za-z])(\d{6})(\d{8})(\d{3}[0-9Xx])(?![0-9A-Za-z])")
_EMAIL = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+\.[A-Za-z]{2,})")


def mask_text(text: str) -> str:
    """Mask phone numbers, ID numbers and e-mail addresses for logs."""
    if not text:
        return text
    text = _ID18.sub(lambda m: m.group(1)[:3] + "*" * 11 + m.group(3)[-4:], text)
    text = _MOBILE.sub(lambda m: m.group(1) + "****" + m.group(3), text)
    return _EMAIL.sub(lambda m: m.group(1) + "***@" + m.group(2), text)
