"""Content sniffing: what a file really is, from its bytes, never from its name or header.

Used by every channel that receives files (mail attachments, scans, upstream uploads).
:func:`sniff` looks at magic bytes (``filetype``) plus a few formats it misses (AMR voice
memos, TNEF, RFC 822 messages, text); :func:`role_for` says what the hub does with it, and
:func:`safe_filename` makes a client-supplied name safe to show and to write.
"""

from __future__ import annotations

import os
import re
import unicodedata

import filetype

#: bytes looked at when sniffing
HEAD = 8192
_EXT = {
    "image/jpeg": ".jpg", "image/png": ".png", "image/gif": ".gif", "image/webp": ".webp",
    "image/heic": ".heic", "image/bmp": ".bmp", "image/tiff": ".tif",
    "audio/amr": ".amr", "audio/mpeg": ".mp3", "audio/x-wav": ".wav", "audio/wav": ".wav",
    "audio/ogg": ".ogg", "audio/mp4": ".m4a", "audio/x-m4a": ".m4a", "audio/aac": ".aac",
    "video/mp4": ".mp4", "application/pdf": ".pdf", "application/zip": ".zip",
    "message/rfc822": ".eml", "application/ms-tnef": ".dat", "text/plain": ".txt",
    "text/html": ".html", "application/octet-stream": ".bin",
}
_TEXT_CTRL = re.compile(rb"[\x00-\x08\x0e-\x1a\x1c-\x1f]")
_RFC822 = re.compile(rb"^(?:[!-9;-~]+:[^\r\n]*\r?\n(?:[ \t][^\r\n]*\r?\n)*){2,}", re.M)
_MAIL_HEADERS = (b"from:", b"subject:", b"message-id:", b"date:", b"received:", b"to:",
                 b"mime-version:", b"return-path:")


def sniff(data: bytes, declared: str | None = None) -> str:
    """The MIME type of ``data`` from its content.

    Args:
        data: the file, or at least its first :data:`HEAD` bytes.
        declared: the type the sender claimed; used only to name text subtypes
            (``text/html`` vs ``text/plain``) once the bytes are known to be text.
    """
    head = data[:HEAD]
    if head.startswith(b"#!AMR-WB\n"):
        return "audio/amr-wb"
    if head.startswith(b"#!AMR\n"):
        return "audio/amr"
    if head.startswith(b"\x78\x9f\x3e\x22"):
        return "application/ms-tnef"
    kind = filetype.guess(head)
    if kind is not None:
        mime = kind.mime
        if mime == "video/mp4" and b"M4A " in head[:32]:
            return "audio/mp4"
        return mime
    if not head:
        return "application/x-empty"
    if _TEXT_CTRL.search(head) is None:
        lower = head[:2048].lower()
        if any(lower.startswith(h) or b"\n" + h in lower for h in _MAIL_HEADERS) and \
                _RFC822.match(head):
            return "message/rfc822"
        if declared in ("text/html", "text/csv", "text/calendar", "text/xml"):
            return declared
        if b"<html" in lower or b"<!doctype html" in lower:
            return "text/html"
        return "text/plain"
    return "application/octet-stream"


def role_for(mime: str) -> str:
    """What an attachment is to the hub: photo, voice, video, scan, document, message, file."""
    if mime.startswith("image/"):
        return "photo"
    if mime.startswith("audio/"):
        return "voice"
    if mime.startswith("video/"):
        return "video"
    if mime == "application/pdf":
        return "scan"
    if mime == "message/rfc822":
        return "forwarded"
    if mime.startswith("text/") or mime in ("application/msword",
                                            "application/vnd.openxmlformats-officedocument."
                                            "wordprocessingml.document"):
        return "document"
    return "file"


def extension_for(mime: str) -> str:
    """A file name extension for a MIME type."""
    return _EXT.get(mime, "." + mime.rsplit("/", 1)[-1].split("+")[0][:8] if "/" in mime
                    else ".bin")


def safe_filename(name: str | None, mime: str, index: int = 1, max_bytes: int = 180) -> str:
    """A file name with no path, no control characters and no surprises.

    Directory parts (``/`` and ``\\``), leading dots, reserved characters and control
    characters are removed; the name is NFC-normalised and shortened to ``max_bytes`` UTF-8
    bytes keeping its extension. An empty result becomes ``attachment-<index><ext>``.
    """
    base = (name or "").replace("\x00", "")
    base = re.split(r"[\\/]", base)[-1]
    base = unicodedata.normalize("NFC", base)
    base = "".join(ch for ch in base if unicodedata.category(ch)[0] != "C")
    base = re.sub(r'[<>:"|?*]', "_", base).strip().lstrip(".").strip()
    if base in ("", ".", ".."):
        return f"attachment-{index}{extension_for(mime)}"
    stem, ext = os.path.splitext(base)
    if len(ext) > 12:
        stem, ext = base, ""
    while len((stem + ext).encode("utf-8")) > max_bytes and stem:
        stem = stem[:-1]
    return (stem + ext) or f"attachment-{index}{extension_for(mime)}"
