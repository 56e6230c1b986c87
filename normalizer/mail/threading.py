"""Reply threading: which existing case a mail answers, if any.

A mail is a reply when its ``In-Reply-To`` or ``References`` name a mail the hub already holds
(the mail that opened a case, or an earlier reply on it), or when its subject carries a case
reference ``[FB-YYYYMMDD-NNNNNN]`` AND it comes from the case's reporter (a reference alone is
easy to copy, so a stranger's mail citing it opens a new case instead, flagged for review).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from normalizer.mail.parse import ParsedMail
from normalizer.mapping import MapContext

#: mapper-state namespace: Message-ID of a reply → {"case_id", "source_ref"}
STATE_NS = "email.message_id"
_REF = re.compile(r"[\[【(（]\s*(FB-\d{8}-\d{6})\s*[\]】)）]")


@dataclass
class Thread:
    """The case a mail belongs to, and why."""

    case_id: str
    reason: str


def subject_reference(subject: str) -> str | None:
    """The case reference quoted in a subject, e.g. ``[FB-20261124-000123]``."""
    m = _REF.search(subject or "")
    return m.group(1) if m else None


def case_for_message_id(ctx: MapContext, message_id: str) -> str | None:
    """The case a Message-ID belongs to (a case's own mail, or a reply recorded on it)."""
    cid = ctx.find_case_by_key("message_id", message_id)
    if cid:
        return cid
    state = ctx.state_get(STATE_NS, message_id)
    return state.get("case_id") if state else None


def find_thread(mail: ParsedMail, ctx: MapContext, own_case_id: str,
                own_message_id: str) -> tuple[Thread | None, str | None]:
    """Find the case this mail replies to.

    Returns:
        (thread or None, a review note when a reference was quoted by someone else).
    """
    seen: set[str] = set()
    for mid in [*mail.in_reply_to, *reversed(mail.references)]:
        if mid in seen or mid == own_message_id:
            continue
        seen.add(mid)
        cid = case_for_message_id(ctx, mid)
        if cid and cid != own_case_id:
            return Thread(cid, f"replies to {mid}"), None
    ref = subject_reference(mail.subject)
    if not ref:
        return None, None
    cid = ctx.find_case_by_key("reference", ref)
    if not cid or cid == own_case_id:
        return None, None
    case = ctx.get_case(cid)
    reporter = (case.reporter.email or "").lower() if case else ""
    if reporter and mail.from_email and reporter == mail.from_email.lower():
        return Thread(cid, f"subject quotes {ref} and the sender is its reporter"), None
    return None, (f"the subject quotes case {ref} but the sender is not its reporter; "
                  f"opened as a new case")
