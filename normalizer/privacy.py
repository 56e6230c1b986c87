"""Personal data in text: detection, masking for logs, redaction for public export.

Detected: mainland mobile and landline numbers (validated with ``phonenumbers``), 18-digit
resident ID numbers (GB 11643-1999 check digit, so random digits and order numbers do not
match), bank card numbers (Luhn), e-mail addresses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import phonenumbers

from normalizer.case import Case, Reporter
from normalizer.textnorm import message_text

_MOBILE = re.compile(r"(?<![\d])(?:\+?86[- ]?)?(1[3-9]\d[- ]?\d{4}[- ]?\d{4})(?![\d])")
_LANDLINE = re.compile(r"(?<![\d-])(0\d{2,3})[- ]?(\d{7,8})(?![\d])")
_ID18 = re.compile(r"(?<![0-9A-Za-z])([1-9]\d{5}(?:19|20)\d{2}(?:0[1-9]|1[0-2])"
                   r"(?:0[1-9]|[12]\d|3[01])\d{3}[0-9Xx])(?![0-9A-Za-z])")
_CARD = re.compile(r"(?<![\d])((?:\d[ -]?){15,18}\d)(?![\d])")
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


@dataclass(frozen=True)
class PiiMatch:
    """One piece of personal data found in text."""

    kind: str  # mobile, landline, id_number, bank_card, email
    start: int
    end: int
    value: str


def id_checksum_ok(number: str) -> bool:
    """GB 11643-1999: the 18th character is the check digit of the first 17."""
    if len(number) != 18 or not number[:17].isdigit():
        return False
    total = sum(int(d) * w for d, w in zip(number[:17], _ID_WEIGHTS, strict=True))
    return _ID_CHECK[total % 11] == number[17].upper()


def luhn_ok(digits: str) -> bool:
    """Luhn check of a card number (digits only)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _phone_ok(number: str) -> bool:
    try:
        return phonenumbers.is_valid_number(phonenumbers.parse(number, "CN"))
    except phonenumbers.NumberParseException:
        return False


#: Cheap pre-check: any PII needs an @ or a run of at least 7 digits (with separators).
_MAYBE = re.compile(r"@|\d[\d -]{5,}\d")


def find_pii(text: str) -> list[PiiMatch]:
    """All personal data in ``text``, in order, without overlaps.

    ID numbers must pass the GB 11643-1999 check digit and card numbers the Luhn check, so order
    numbers and other long digit strings are not reported; phone numbers must be valid mainland
    numbers for ``phonenumbers``.
    """
    if not text or not _MAYBE.search(text):
        return []
    found: list[PiiMatch] = []
    taken: list[tuple[int, int]] = []

    def add(kind: str, m: re.Match[str], group: int = 0) -> None:
        s, e = m.span(group)
        if any(s < te and ts < e for ts, te in taken):
            return
        taken.append((s, e))
        found.append(PiiMatch(kind, s, e, m.group(group)))

    for m in _ID18.finditer(text):
        if id_checksum_ok(m.group(1)):
            add("id_number", m, 1)
    if "@" in text:
        for m in _EMAIL.finditer(text):
            add("email", m)
    for m in _MOBILE.finditer(text):
        if _phone_ok(re.sub(r"[- ]", "", m.group(1))):
            add("mobile", m)
    for m in _LANDLINE.finditer(text):
        if _phone_ok(m.group(1) + m.group(2)):
            add("landline", m)
    for m in _CARD.finditer(text):
        digits = re.sub(r"[ -]", "", m.group(1))
        if 16 <= len(digits) <= 19 and luhn_ok(digits):
            add("bank_card", m, 1)
    return sorted(found, key=lambda p: p.start)


def _mask(p: PiiMatch) -> str:
    v = p.value
    if p.kind == "email":
        user, _, domain = v.partition("@")
        return f"{user[:1]}***@{domain}"
    digits = re.sub(r"\D", "", v)
    if p.kind == "mobile":
        return f"{digits[-11:-8]}****{digits[-4:]}"
    if p.kind == "id_number":
        return f"{v[:3]}***********{v[-4:]}"
    if p.kind == "bank_card":
        return f"****{digits[-4:]}"
    return f"{digits[:3]}****{digits[-2:]}"


def mask_text(text: str) -> str:
    """Mask personal data for logs and screens (keeps enough to recognise it)."""
    if not text or not any(ch.isdigit() or ch == "@" for ch in text):
        return text
    out, pos = [], 0
    for p in find_pii(text):
        out.append(text[pos:p.start])
        out.append(_mask(p))
        pos = p.end
    out.append(text[pos:])
    return "".join(out)


def redact_text(text: str) -> str:
    """Remove personal data entirely (public boards): ``[电话]``, ``[身份证号]``..."""
    labels = {"mobile": "[电话]", "landline": "[电话]", "id_number": "[身份证号]",
              "bank_card": "[银行卡号]", "email": "[邮箱]"}
    out, pos = [], 0
    for p in find_pii(text):
        out.append(text[pos:p.start])
        out.append(labels[p.kind])
        pos = p.end
    out.append(text[pos:])
    return "".join(out)


_HOUSE_NUMBER = re.compile(r"[0-9一二三四五六七八九十]+(?:号楼|栋|幢|单元|室|号)")
#: In free text only unit and room numbers go: they point at one household, a road number
#: (幸福路88号门口) does not.
_ROOM = re.compile(r"[0-9一二三四五六七八九十]+单元|[0-9]+(?:室|号房)")


def _redact_address(address: str) -> str:
    # keep the place, drop house, building and room numbers
    return _HOUSE_NUMBER.sub("", address)


def redact_case(case: Case | dict[str, Any]) -> Case | dict[str, Any]:
    """A copy of a case fit for a public board (未解决事项): no reporter, no PII in any text.

    The reporter is replaced by an anonymous one, personal data in the title, description and
    attachment texts is replaced by ``[电话]``, ``[身份证号]``..., unit and room numbers are
    dropped from the texts and house numbers from the address, and channel extras (which may
    hold headers and contact details) are removed. Accepts a :class:`Case` (returns a Case) or
    its JSON form (returns a dict).
    """
    if isinstance(case, dict):
        redacted = redact_case(Case.model_validate(case))
        assert isinstance(redacted, Case)
        return redacted.model_dump(mode="json")
    doc = case.model_copy(deep=True)
    doc.reporter = Reporter(anonymous=True)
    doc.title = _ROOM.sub("", redact_text(doc.title))
    doc.description = _ROOM.sub("", redact_text(doc.description))
    if doc.location.address:
        doc.location.address = _redact_address(redact_text(doc.location.address))
    for att in doc.attachments:
        if att.derived_text:
            att.derived_text = _ROOM.sub("", redact_text(att.derived_text))
        att.filename = None
    doc.extra = {}
    doc.review.flags = [f for f in doc.review.flags if f.code != "pii_in_text"]
    return doc


class PiiFlagger:
    """Enricher: keeps contact data in reporter fields and flags sensitive numbers in the text."""

    name = "privacy"
    #: works on the case alone (nothing read from the store)
    reads_store = False

    def enrich(self, case: Case, ctx: object) -> None:
        """Flag ID or card numbers in the text; fill a missing reporter phone or e-mail."""
        found = find_pii(message_text(case.title, case.description))
        if not found:
            return
        kinds = sorted({p.kind for p in found})
        sensitive = [k for k in kinds if k in ("id_number", "bank_card")]
        if sensitive:
            case.flag("pii_in_text", "the text contains " + " and ".join(
                k.replace("_", " ") for k in sensitive) + "; redact before publishing")
        if case.reporter.anonymous:
            return
        if not case.reporter.phone:
            phones = [p.value for p in found if p.kind in ("mobile", "landline")]
            if phones:
                case.reporter.phone = re.sub(r"[ -]", "", phones[0])
        if not case.reporter.email:
            mails = [p.value for p in found if p.kind == "email"]
            if mails:
                case.reporter.email = mails[0]
