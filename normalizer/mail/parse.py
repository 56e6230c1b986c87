"""Parse stored RFC 822 bytes into text, people, threading ids and attachments.

Uses the standard :mod:`email` package (``compat32`` policy, which keeps raw 8-bit header
bytes recoverable as surrogate escapes), with the repairs Chinese mail needs:

* every text part decoded through :func:`normalizer.mail.decode.decode_bytes` (aliases,
  lying labels, detection);
* a multipart whose declared boundary never appears is re-parsed with the boundary its body
  actually uses;
* plain text is preferred over HTML; HTML-only mail is converted to text;
* attachments, inline CID images, nested ``message/rfc822`` (forwards) and ``winmail.dat``
  (TNEF) are collected with sanitised names and sniffed types.
"""

from __future__ import annotations

import email
import email.utils
import re
from dataclasses import dataclass, field
from datetime import datetime
from email.message import Message
from email.policy import compat32

from media.sniff import role_for, safe_filename, sniff
from normalizer.mail.body import html_to_text, normalize_text
from normalizer.mail.decode import decode_bytes, decode_header, header_charset_hint

MAX_DEPTH = 8
_MSGIDS = re.compile(r"<[^<>\s]+>")
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?([A-Za-z0-9_.:-]+)""", re.I)
_BOUNDARY_LINE = re.compile(r"^--([^\s]{1,70}?)(?:--)?\s*$", re.M)


@dataclass
class MailAttachment:
    """A file that came with the mail."""

    data: bytes
    filename: str
    mime: str
    declared_mime: str
    role: str
    content_id: str | None = None
    inline: bool = False
    origin: str = "mail"  # mail, tnef, forwarded


@dataclass
class ParsedMail:
    """What a mail says, decoded."""

    raw_headers: list[tuple[str, str]]
    subject: str = ""
    from_name: str | None = None
    from_email: str | None = None
    to: list[str] = field(default_factory=list)
    cc: list[str] = field(default_factory=list)
    date: datetime | None = None
    message_id: str | None = None
    in_reply_to: list[str] = field(default_factory=list)
    references: list[str] = field(default_factory=list)
    content_type: str = "text/plain"
    text: str = ""
    html_only: bool = False
    attachments: list[MailAttachment] = field(default_factory=list)
    forwarded: list[ParsedMail] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)
    charsets: list[str] = field(default_factory=list)
    guessed_charset: bool = False
    is_report: bool = False
    header_hint: str | None = None

    def header(self, name: str) -> str | None:
        """The first value of a header, decoded (None when absent)."""
        for k, v in self.raw_headers:
            if k.lower() == name.lower():
                return decode_header(v, self.header_hint)
        return None

    def headers(self, name: str) -> list[str]:
        """Every value of a header, decoded."""
        return [decode_header(v, self.header_hint) for k, v in self.raw_headers
                if k.lower() == name.lower()]

    def has_header(self, name: str) -> bool:
        """Whether the header is present (even empty)."""
        return any(k.lower() == name.lower() for k, _ in self.raw_headers)


def parse_mail(raw: bytes) -> ParsedMail:
    """Parse raw RFC 822 bytes."""
    msg = email.message_from_bytes(raw, policy=compat32)
    return _from_message(msg, 0)


def addresses(value: str | None, hint: str | None) -> list[tuple[str, str]]:
    """(display name, address) pairs of an address header, names decoded."""
    if not value:
        return []
    from normalizer.mail.decode import recover_8bit

    text = recover_8bit(re.sub(r"\r?\n(?=[ \t])", "", value), hint)
    out = []
    for name, addr in email.utils.getaddresses([text]):
        name = decode_header(name, hint).strip().strip('"').strip()
        addr = addr.strip().strip("<>").strip()
        if name or addr:
            out.append((name, addr))
    return out


def _msgids(value: str | None) -> list[str]:
    return _MSGIDS.findall(value or "")


def _from_message(msg: Message, depth: int) -> ParsedMail:
    raw_headers = [(k, v if isinstance(v, str) else str(v)) for k, v in msg.raw_items()]
    hint = header_charset_hint(raw_headers)
    pm = ParsedMail(raw_headers=raw_headers, header_hint=hint)
    pm.subject = pm.header("Subject") or ""
    raw_from = next((v for k, v in raw_headers if k.lower() == "from"), None)
    people = addresses(raw_from, hint)
    if people:
        pm.from_name = people[0][0] or None
        pm.from_email = people[0][1].lower() or None
    for name, target in (("To", pm.to), ("Cc", pm.cc)):
        for k, v in raw_headers:
            if k.lower() == name.lower():
                target.extend(a for _, a in addresses(v, hint) if a)
    date = pm.header("Date")
    if date:
        try:
            pm.date = email.utils.parsedate_to_datetime(date)
        except (TypeError, ValueError, IndexError):
            pm.date = None
    ids = _msgids(pm.header("Message-ID"))
    pm.message_id = ids[0] if ids else None
    pm.in_reply_to = _msgids(pm.header("In-Reply-To"))
    pm.references = _msgids(pm.header("References"))
    pm.content_type = msg.get_content_type()
    state = _WalkState()
    _walk(msg, pm, state, depth, attachments_only=False)
    plain = [t for kind, t in state.texts if kind == "plain" and t.strip()]
    html = [t for kind, t in state.texts if kind == "html" and t.strip()]
    if plain:
        pm.text = normalize_text("\n\n".join(plain))
    elif html:
        pm.text = normalize_text("\n\n".join(html))
        pm.html_only = True
    return pm


@dataclass
class _WalkState:
    texts: list[tuple[str, str]] = field(default_factory=list)


def _decode_text(part: Message, pm: ParsedMail) -> str:
    data = part.get_payload(decode=True)
    if not isinstance(data, bytes):
        data = str(data or "").encode("utf-8", "surrogateescape")
    charset = part.get_content_charset()
    if charset is None and part.get_content_type() == "text/html":
        m = _META_CHARSET.search(data[:4096])
        charset = m.group(1).decode("ascii") if m else None
    dec = decode_bytes(data, charset)
    if dec.charset not in pm.charsets and dec.charset != "us-ascii":
        pm.charsets.append(dec.charset)
    if dec.guessed and dec.charset != "us-ascii":
        pm.guessed_charset = True
    return dec.text


def _filename(part: Message, hint: str | None) -> str | None:
    for getter in (lambda: part.get_param("filename", header="content-disposition"),
                   lambda: part.get_param("name")):
        value = getter()
        if not value:
            continue
        if isinstance(value, tuple):  # RFC 2231: (charset, language, %-decoded text)
            charset, _lang, text = value
            data = text.encode("latin-1", "surrogateescape") if isinstance(text, str) else text
            return decode_bytes(data, charset or "utf-8").text
        return decode_header(email.utils.unquote(value), hint)
    return None


def _repair_boundary(part: Message) -> Message | None:
    """A multipart whose declared boundary never appears: re-parse with the one it uses."""
    body = part.get_payload()
    if not isinstance(body, str):
        return None
    m = _BOUNDARY_LINE.search(body)
    if not m or m.group(1) == part.get_boundary():
        return None
    fixed = email.message_from_bytes(part.as_bytes(), policy=compat32)
    fixed.set_boundary(m.group(1))
    fixed = email.message_from_bytes(fixed.as_bytes(), policy=compat32)
    return fixed if fixed.is_multipart() else None


def _walk(part: Message, pm: ParsedMail, state: _WalkState, depth: int,
          attachments_only: bool) -> None:
    pm.defects.extend(type(d).__name__ for d in part.defects)
    ctype = part.get_content_type()
    if depth > MAX_DEPTH:
        pm.defects.append("MaxDepthExceeded")
        return
    if ctype == "message/rfc822" or (ctype.startswith("message/") and part.is_multipart()
                                     and ctype not in ("message/delivery-status",)):
        inner = part.get_payload()
        inner_msg = inner[0] if isinstance(inner, list) and inner else None
        if isinstance(inner_msg, Message):
            nested = _from_message(inner_msg, depth + 1)
            if pm.is_report:
                return  # the returned message of a bounce is not a forward
            pm.forwarded.append(nested)
            data = inner_msg.as_bytes()
            name = _filename(part, pm.header_hint) or (nested.subject or "forwarded") + ".eml"
            pm.attachments.append(MailAttachment(
                data=data, filename=safe_filename(name, "message/rfc822",
                                                  len(pm.attachments) + 1),
                mime="message/rfc822", declared_mime=ctype, role="forwarded",
                origin="forwarded"))
            for att in nested.attachments:
                att.origin = "forwarded"
                pm.attachments.append(att)
        return
    if ctype.startswith("multipart/"):
        if not part.is_multipart():
            fixed = _repair_boundary(part)
            if fixed is None:
                # no usable boundary at all: the body is the best text there is
                if not attachments_only:
                    state.texts.append(("plain", _strip_mime_noise(_decode_text(part, pm))))
                return
            pm.defects.append("BoundaryRepaired")
            part = fixed
        subparts = [p for p in part.get_payload() if isinstance(p, Message)]
        if ctype == "multipart/report":
            pm.is_report = True
        if ctype == "multipart/alternative":
            chosen = _choose_alternative(subparts, pm)
            for sp in subparts:
                _walk(sp, pm, state, depth, attachments_only or sp is not chosen)
            return
        for sp in subparts:
            _walk(sp, pm, state, depth, attachments_only)
        return
    if ctype in ("message/delivery-status", "message/disposition-notification",
                 "text/rfc822-headers", "message/feedback-report"):
        pm.is_report = True
        return
    disposition = (part.get_content_disposition() or "").lower()
    filename = _filename(part, pm.header_hint)
    is_body_text = (ctype in ("text/plain", "text/html") and disposition != "attachment"
                    and not filename)
    if is_body_text:
        if not attachments_only:
            text = _decode_text(part, pm)
            state.texts.append(("plain", text) if ctype == "text/plain"
                               else ("html", html_to_text(text)))
        return
    data = part.get_payload(decode=True)
    if not isinstance(data, bytes):
        data = b""
    if ctype == "application/ms-tnef" or (filename or "").lower() == "winmail.dat":
        if _unpack_tnef(data, pm, state, attachments_only):
            return
    mime = sniff(data, ctype)
    cid = part.get("Content-ID")
    pm.attachments.append(MailAttachment(
        data=data, filename=safe_filename(filename, mime, len(pm.attachments) + 1),
        mime=mime, declared_mime=ctype, role="inline" if cid and disposition != "attachment"
        and mime.startswith("image/") else role_for(mime),
        content_id=cid.strip().strip("<>") if cid else None,
        inline=disposition == "inline" or bool(cid and disposition != "attachment")))


def _choose_alternative(subparts: list[Message], pm: ParsedMail) -> Message | None:
    """The plain-text alternative if it has text, else the richest other one."""
    for sp in subparts:
        if sp.get_content_type() == "text/plain":
            data = sp.get_payload(decode=True)
            if isinstance(data, bytes) and data.strip():
                return sp
    for sp in reversed(subparts):
        if sp.get_content_type() in ("text/html", "multipart/related", "multipart/mixed"):
            return sp
    return subparts[0] if subparts else None


def _strip_mime_noise(text: str) -> str:
    """Drop boundary lines and part headers from a multipart that could not be split."""
    out = []
    for line in text.split("\n"):
        if _BOUNDARY_LINE.match(line.strip()):
            continue
        if re.match(r"^(Content-[A-Za-z-]+|MIME-Version):", line.strip(), re.I):
            continue
        out.append(line)
    return "\n".join(out)


def _unpack_tnef(data: bytes, pm: ParsedMail, state: _WalkState, attachments_only: bool
                 ) -> bool:
    """Unpack winmail.dat; False when it is not TNEF after all (kept as a file then)."""
    try:
        from tnefparse import TNEF

        tnef = TNEF(data, do_checksum=False)
    except Exception:
        pm.defects.append("TnefUnreadable")
        return False
    codepage = getattr(tnef, "codepage", None)
    for i, att in enumerate(tnef.attachments, 1):
        try:
            name = att.long_filename()
        except UnicodeDecodeError:
            raw_name = att._name if isinstance(att._name, bytes) else b""
            name = decode_bytes(raw_name.rstrip(b"\x00"), codepage).text
        payload = att.data if isinstance(att.data, bytes) else b""
        mime = sniff(payload)
        pm.attachments.append(MailAttachment(
            data=payload, filename=safe_filename(name, mime, i), mime=mime,
            declared_mime="application/ms-tnef", role=role_for(mime), origin="tnef"))
    if not attachments_only:
        body = tnef.body
        if isinstance(body, bytes):
            body = decode_bytes(body.rstrip(b"\x00"), codepage).text
        if isinstance(body, str) and body.strip():
            state.texts.append(("plain", body))
        elif isinstance(tnef.htmlbody, (str, bytes)):
            html = tnef.htmlbody if isinstance(tnef.htmlbody, str) else \
                decode_bytes(tnef.htmlbody, codepage).text
            state.texts.append(("html", html_to_text(html)))
    return True
