"""Mapper for the email channel: stored RFC 822 bytes → a case, an update, or ignored.

Order of decisions (each is recorded with its reason):

1. the hub's own mail (loop header), auto-replies and bounces → ignored;
2. another copy of a mail already held (same Message-ID, different bytes) → ignored;
3. with ``authserv_id`` configured, the receiving server's verdict on the sender
   (:mod:`normalizer.mail.authres`): a failed one dead-letters the mail (``on_auth_fail:
   dead_letter``) or opens a new case flagged ``sender_spoofed``, never a reply on an existing
   case (a forged From could otherwise write into someone else's case);
4. a reply to a case (``In-Reply-To``/``References``, or ``[FB-…]`` in the subject from the
   case's reporter) → a :class:`~normalizer.case.CaseUpdate` of kind ``reply``;
5. nothing at all (no subject, text or attachment) → ignored;
6. otherwise a new case; its Message-ID is indexed so replies find it.

Attachments are written to the blob store here (content addressed, so reprocessing is safe)
and listed on the case; OCR and speech-to-text fill ``derived_text`` once media processors run.
"""

from __future__ import annotations

import hashlib
import logging
import re
from typing import Any

import phonenumbers
import zhconv

from connectors.base import RawRecord
from normalizer.case import Attachment, Case, Origin, Reporter, case_id_for
from normalizer.mail.authres import check_sender
from normalizer.mail.autoreply import not_a_case_reason
from normalizer.mail.body import trim_reply
from normalizer.mail.parse import MailAttachment, ParsedMail, parse_mail
from normalizer.mail.threading import STATE_NS, case_for_message_id, find_thread
from normalizer.mapping import MapContext, MappingError, MapResult

logger = logging.getLogger(__name__)

MAX_TITLE = 120
_PREFIX = re.compile(r"^\s*(?:(?:re|fwd?|aw|wg|回复|回覆|答复|答覆|转发|轉發|转寄|轉寄)\s*"
                     r"(?:\[\d+\])?\s*[:：]\s*)+", re.I)
_FORWARD = re.compile(r"^\s*(?:fwd?|转发|轉發|转寄|轉寄)\s*[:：]", re.I)
_CJK = re.compile(r"[\u3400-\u9fff]")
_GENERIC = {"application/octet-stream", "application/x-empty", ""}


def clean_subject(subject: str) -> str:
    """A subject without ``Re:``/``回复:``/``Fwd:``/``转发:`` prefixes."""
    return _PREFIX.sub("", subject or "").strip()


def language_of(text: str) -> str:
    """``zh-Hans``, ``zh-Hant`` or ``en`` (a cheap guess for routing and display)."""
    sample = "".join(_CJK.findall(text))[:2000]
    if not sample:
        return "en"
    to_hans = sum(a != b for a, b in zip(sample, zhconv.convert(sample, "zh-hans"),
                                         strict=False))
    to_hant = sum(a != b for a, b in zip(sample, zhconv.convert(sample, "zh-hant"),
                                         strict=False))
    return "zh-Hant" if to_hans > to_hant else "zh-Hans"


def find_phone(text: str) -> str | None:
    """The first valid phone number in a text: Chinese numbers as digits the way residents
    write them (``13812345678``, landlines with the area code ``02162345678``), others E.164."""
    for match in phonenumbers.PhoneNumberMatcher(text, "CN"):
        num = match.number
        if not phonenumbers.is_valid_number(num):
            continue
        if num.country_code == 86:
            national = str(num.national_number)
            mobile = phonenumbers.number_type(num) == phonenumbers.PhoneNumberType.MOBILE
            return national if mobile else "0" + national
        return phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164)
    return None


def update_id_for(message_id: str) -> str:
    """The deterministic update id of a reply mail."""
    return "mail-" + hashlib.sha256(message_id.encode("utf-8")).hexdigest()[:32]


class EmailMapper:
    """Maps stored mails (records of ``imap`` connectors) to cases and updates."""

    def __init__(self, connector_config: Any = None, hub_config: Any = None) -> None:
        self.loop_header = getattr(connector_config, "loop_header", "X-Feedback-Hub-Loop")
        self.trim_quotes = getattr(connector_config, "trim_quotes", True)
        self.authserv_id: str | None = getattr(connector_config, "authserv_id", None)
        self.on_auth_fail = str(getattr(connector_config, "on_auth_fail", "flag"))

    def map(self, raw: RawRecord, ctx: MapContext) -> MapResult:
        """Map one stored mail; raises MappingError when its bytes are missing or unusable."""
        if not raw.raw_blob:
            raise MappingError("record has no raw mail (raw_blob is empty)")
        try:
            data = ctx.blobs.read(raw.raw_blob)
        except FileNotFoundError as exc:
            raise MappingError(f"raw mail blob {raw.raw_blob} is missing from the blob store"
                               ) from exc
        mail = parse_mail(data)
        payload = raw.payload or {}
        message_id = str(payload.get("message_id") or mail.message_id
                         or f"<{raw.raw_blob[:40]}@generated.feedback-hub.invalid>")

        reason = not_a_case_reason(mail, self.loop_header)
        if reason:
            return MapResult.ignored(reason)

        own_case_id = case_id_for(raw.source, raw.source_ref)
        holder = ctx.find_case_by_key("message_id", message_id)
        if holder and holder != own_case_id:
            return MapResult.ignored(f"duplicate: another copy of {message_id}, already "
                                     f"case {self._reference(ctx, holder)}")
        state = ctx.state_get(STATE_NS, message_id)
        if state and state.get("source_ref") != raw.source_ref:
            return MapResult.ignored(f"duplicate: another copy of reply {message_id}")

        forward = bool(_FORWARD.match(mail.subject))
        text, trimmed = mail.text, False
        if self.trim_quotes and text:
            text, trimmed = trim_reply(text) if not forward else (text, False)
        for nested in mail.forwarded:
            text = (text + "\n\n" if text else "") + self._forwarded_block(nested)
        attachments, mismatches = self._attachments(mail.attachments, ctx)

        sender = check_sender(mail.raw_headers, self.authserv_id, mail.from_email) \
            if self.authserv_id else None
        spoofed = sender is not None and sender.verdict == "fail"
        if spoofed and self.on_auth_fail == "dead_letter":
            assert sender is not None
            raise MappingError(f"sender authentication failed at {self.authserv_id}: "
                               f"{sender.detail}")
        thread, note = find_thread(mail, ctx, own_case_id, message_id)
        not_threaded = ""
        if thread is not None and spoofed:
            not_threaded = (f"; it looks like a reply to case "
                            f"{self._reference(ctx, thread.case_id)} ({thread.reason}), "
                            f"opened as a new case instead")
            thread = None
        if thread is not None:
            return self._reply(raw, mail, message_id, thread.case_id, thread.reason, text,
                               attachments, ctx)

        subject = clean_subject(mail.subject)
        if not subject and not text.strip() and not attachments:
            return MapResult.ignored("empty: no subject, text or attachment")
        title = subject or _first_sentence(text) or f"{len(attachments)} attachment(s) by mail"
        case = Case(
            case_id=own_case_id,
            origin=Origin(channel=raw.channel, source=raw.source, source_ref=raw.source_ref,
                          received_at=raw.received_at),
            title=title[:MAX_TITLE],
            description=text,
            language=language_of(f"{subject}\n{text}"),
            reporter=Reporter(name=mail.from_name, email=mail.from_email,
                              phone=find_phone(text)),
            attachments=attachments,
            extra={"email": self._extra(mail, payload, message_id, trimmed)},
        )
        if sender is not None:
            case.extra["email"]["sender_auth"] = {"verdict": sender.verdict,
                                                  "detail": sender.detail}
        if spoofed:
            assert sender is not None
            case.flag("sender_spoofed", f"the sender failed authentication at "
                      f"{self.authserv_id} ({sender.detail}): the From address may be "
                      f"forged{not_threaded}")
        if note:
            case.flag("reference_sender_mismatch", note)
        if mismatches:
            case.flag("attachment_type_mismatch", "; ".join(mismatches))
        if "\ufffd" in text or "\ufffd" in mail.subject:
            case.flag("charset_undecodable", "some characters could not be decoded")
        defects = sorted(set(mail.defects) - {"BoundaryRepaired"})
        if defects:
            case.flag("mail_defects", "the mail's MIME structure is broken: "
                      + ", ".join(defects))
        return MapResult(case=case, index_keys=[("message_id", message_id)])

    # ------------------------------------------------------------------ parts
    def _reply(self, raw: RawRecord, mail: ParsedMail, message_id: str, case_id: str,
               why: str, text: str, attachments: list[Attachment], ctx: MapContext
               ) -> MapResult:
        from normalizer.case import CaseUpdate

        ctx.state_put(STATE_NS, message_id, {"case_id": case_id, "source_ref": raw.source_ref})
        update = CaseUpdate(
            case_id=case_id, update_id=update_id_for(message_id), kind="reply",
            at=raw.received_at, text=text,
            data={"message_id": message_id, "channel": "email", "source": raw.source,
                  "source_ref": raw.source_ref, "subject": mail.subject,
                  "from": {"name": mail.from_name, "email": mail.from_email},
                  "threaded_by": why, "phone": find_phone(text),
                  "attachments": [a.model_dump(exclude_none=True) for a in attachments]})
        return MapResult(updates=[update])

    def _attachments(self, parts: list[MailAttachment], ctx: MapContext
                     ) -> tuple[list[Attachment], list[str]]:
        out: list[Attachment] = []
        mismatches: list[str] = []
        seen: set[tuple[str, str]] = set()
        for part in parts:
            blob = ctx.blobs.put_bytes(part.data, mime=part.mime, filename=part.filename,
                                       role=part.role)
            if (blob.sha256, part.filename) in seen:
                continue
            seen.add((blob.sha256, part.filename))
            out.append(Attachment(sha256=blob.sha256, mime=part.mime, size=blob.size,
                                  filename=part.filename, role=part.role))
            declared = part.declared_mime.lower()
            if declared not in _GENERIC and part.mime not in _GENERIC and \
                    declared.split("/")[0] != part.mime.split("/")[0] and \
                    part.origin != "forwarded" and declared != "application/ms-tnef":
                mismatches.append(f"{part.filename}: declared {declared}, content is "
                                  f"{part.mime}")
        return out, mismatches

    def _forwarded_block(self, nested: ParsedMail) -> str:
        sender = " ".join(x for x in (nested.from_name,
                                      f"<{nested.from_email}>" if nested.from_email else None)
                          if x)
        lines = ["---------- 转发的邮件 / Forwarded message ----------"]
        if sender:
            lines.append(f"发件人 From: {sender}")
        if nested.subject:
            lines.append(f"主题 Subject: {nested.subject}")
        body = nested.text
        if self.trim_quotes and body:
            body, _ = trim_reply(body)
        inner = "".join("\n\n" + self._forwarded_block(n) for n in nested.forwarded)
        return "\n".join(lines) + ("\n\n" + body if body else "") + inner

    def _extra(self, mail: ParsedMail, payload: dict[str, Any], message_id: str,
               trimmed: bool) -> dict[str, Any]:
        extra: dict[str, Any] = {
            "message_id": message_id,
            "subject": mail.subject,
            "from": mail.from_email,
            "to": mail.to,
            "date": mail.date.isoformat() if mail.date and mail.date.tzinfo else None,
            "charsets": mail.charsets,
            "html_only": mail.html_only,
            "quoted_trimmed": trimmed,
        }
        for key in ("folder", "uid", "uidvalidity", "size"):
            if key in payload:
                extra[key] = payload[key]
        if mail.cc:
            extra["cc"] = mail.cc
        if mail.forwarded:
            extra["forwarded"] = len(mail.forwarded)
        if mail.defects:
            extra["defects"] = sorted(set(mail.defects))
        return extra

    @staticmethod
    def _reference(ctx: MapContext, case_id: str) -> str:
        case = ctx.get_case(case_id)
        return (case.reference if case and case.reference else case_id)


def _first_sentence(text: str) -> str:
    first = re.split(r"[。！？!?\n]", text.strip(), maxsplit=1)[0].strip()
    return first[:MAX_TITLE]


__all__ = ["EmailMapper", "case_for_message_id", "clean_subject", "find_phone",
           "language_of", "update_id_for"]
