"""Charsets and headers of Chinese mail: labels that lie, 8-bit headers, split encoded words.

* Charset aliases: every GB label (gb2312, gbk, cp936...) decodes as gb18030, its superset;
  every Big5 label as big5hkscs (Hong Kong supplementary characters).
* Bytes that are valid UTF-8 are UTF-8 whatever the label says (webmail often mislabels).
* Undeclared or wrong charsets are detected with charset-normalizer; what was guessed is
  reported so the mapper can flag it.
* RFC 2047 encoded words are decoded per charset after joining adjacent words at the byte
  level (clients split words mid-character); raw 8-bit header bytes are recovered too.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import quopri
import re
from dataclasses import dataclass

import charset_normalizer

#: label → codec actually used
CHARSET_ALIASES: dict[str, str] = {
    **dict.fromkeys(("gb2312", "gbk", "x-gbk", "cp936", "ms936", "windows-936", "euc-cn",
                     "gb_2312-80", "gb2312-80", "chinese", "csgb2312", "x-euc-cn", "hz-gb-2312",
                     "gb18030", "gb-18030"), "gb18030"),
    **dict.fromkeys(("big5", "big-5", "cn-big5", "csbig5", "x-x-big5", "big5-hkscs",
                     "big5hkscs", "cp950", "ms950", "windows-950", "x-big5"), "big5hkscs"),
    "unicode-1-1-utf-7": "utf-7",
    "utf8": "utf-8",
    "ascii": "us-ascii",
}
#: labels that decode any byte, so a failed decode can never reveal that they lie
_SINGLE_BYTE = {"us-ascii", "iso-8859-1", "latin1", "latin-1", "windows-1252", "cp1252",
                "iso-8859-15", "unknown-8bit", "x-unknown", "8bit", "default"}


@dataclass
class Decoded:
    """Text and how it was decoded."""

    text: str
    charset: str
    declared: str | None
    guessed: bool = False
    lossy: bool = False


def codec_for(label: str | None) -> str | None:
    """The Python codec for a MIME charset label (aliases applied), or None if unknown."""
    if not label:
        return None
    name = label.strip().strip('"').lower()
    name = CHARSET_ALIASES.get(name, name)
    try:
        return codecs.lookup(name).name if name not in _SINGLE_BYTE else name
    except LookupError:
        return None


def _strict(data: bytes, codec: str) -> str | None:
    try:
        return data.decode(codec)
    except (UnicodeDecodeError, LookupError):
        return None


def _cjk_ratio(text: str) -> float:
    """Share of Han characters among the non-ASCII characters of a text."""
    wide = [ch for ch in text if ord(ch) >= 0x80]
    if not wide:
        return 0.0
    cjk = sum(1 for ch in wide if "\u3000" <= ch <= "\u9fff" or "\uf900" <= ch <= "\uffef"
              or "\U00020000" <= ch <= "\U0002ffff")
    return cjk / len(wide)


def _common_share(text: str, codec: str) -> float:
    """Share of characters among the most common Hanzi of a codec's base set.

    GB2312 level 1 (lead bytes B0-D7) holds the 3,755 most common simplified characters;
    Big5 A440-C67E the 5,401 common traditional ones. Short texts that both codecs decode
    are told apart by which reading is made of common characters.
    """
    base, lo, hi = ("gb2312", 0xB0, 0xD7) if codec == "gb18030" else ("big5", 0xA4, 0xC6)
    han = common = 0
    for ch in text:
        if ord(ch) < 0x80:
            continue
        han += 1
        try:
            b = ch.encode(base)
        except UnicodeEncodeError:
            continue
        if len(b) == 2 and lo <= b[0] <= hi:
            common += 1
    return common / han if han else 0.0


def detect(data: bytes) -> tuple[str, str]:
    """Guess the charset of 8-bit text (UTF-8, GB18030, Big5-HKSCS first); returns (text,
    codec)."""
    utf8 = _strict(data, "utf-8")
    if utf8 is not None:
        return utf8, "utf-8"
    readings = {c: t for c in ("gb18030", "big5hkscs") if (t := _strict(data, c)) is not None}
    if len(readings) == 1:
        codec, text = next(iter(readings.items()))
        return text, codec
    if len(readings) == 2:
        gb, b5 = (_common_share(readings[c], c) for c in ("gb18030", "big5hkscs"))
        if abs(gb - b5) > 0.05:
            codec = "gb18030" if gb > b5 else "big5hkscs"
            return readings[codec], codec
    best = charset_normalizer.from_bytes(data).best()
    if best is not None:
        codec = codec_for(best.encoding) or best.encoding
        text = _strict(data, codec)
        if text is not None:
            return text, codec
    if readings:
        codec, text = next(iter(readings.items()))
        return text, codec
    return data.decode("gb18030", "replace"), "gb18030"


def decode_bytes(data: bytes, declared: str | None) -> Decoded:
    """Decode body or header bytes, trusting the label only as far as the bytes agree."""
    label = declared.strip().strip('"').lower() if declared else None
    if not data or (data.isascii() and label not in ("utf-7", "unicode-1-1-utf-7")):
        return Decoded(data.decode("ascii", "replace") if data else "", "us-ascii", label)
    codec = codec_for(label)
    if codec and codec not in _SINGLE_BYTE:
        if codec != "utf-8":
            # valid UTF-8 with 8-bit bytes is UTF-8, whatever the label (mislabelled webmail)
            utf8 = _strict(data, "utf-8")
            if utf8 is not None and codec in ("gb18030", "big5hkscs"):
                return Decoded(utf8, "utf-8", label, guessed=True)
        text = _strict(data, codec)
        if text is not None:
            return Decoded(text, codec, label)
    elif codec in _SINGLE_BYTE and label not in (None, "unknown-8bit", "x-unknown", "8bit",
                                                 "default"):
        # a Latin label on CJK bytes is the classic lie: believe it unless a Chinese reading
        # made of common characters (or valid UTF-8) fits
        utf8 = _strict(data, "utf-8")
        if utf8 is not None:
            return Decoded(utf8, "utf-8", label, guessed=True)
        best: tuple[float, str, str] | None = None
        for cand in ("gb18030", "big5hkscs"):
            text = _strict(data, cand)
            if text is None or _cjk_ratio(text) < 0.3:
                continue
            share = _common_share(text, cand)
            if share >= 0.6 and (best is None or share > best[0]):
                best = (share, cand, text)
        if best is not None:
            return Decoded(best[2], best[1], label, guessed=True)
        return Decoded(data.decode(codec if codec != "us-ascii" else "latin-1"), codec, label)
    text, guess = detect(data)
    return Decoded(text, guess, label, guessed=True, lossy="\ufffd" in text)


# ---------------------------------------------------------------------------- headers
_EW = re.compile(r"=\?([^?\s]+?)(?:\*[^?\s]*)?\?([QqBb])\?([^?\s]*?)\?=")
_FOLD = re.compile(r"\r?\n(?=[ \t])")


def _ew_bytes(enc: str, payload: str) -> bytes | None:
    try:
        if enc in "Bb":
            pad = "=" * (-len(payload) % 4)
            return base64.b64decode(payload + pad)
        return quopri.decodestring(payload.replace("_", " ").encode("ascii"), header=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return None


def recover_8bit(value: str, hint: str | None = None) -> str:
    """Turn a header value holding raw 8-bit bytes (as surrogate escapes) into text."""
    if not any("\udc80" <= ch <= "\udcff" for ch in value):
        return value
    data = value.encode("utf-8", "surrogateescape")
    return decode_bytes(data, hint).text


def decode_header(value: str | None, hint: str | None = None) -> str:
    """Decode a header value: unfold, recover 8-bit bytes, decode RFC 2047 words.

    Adjacent encoded words in the same charset are joined before decoding (a character may be
    split between them); whitespace between encoded words is dropped (RFC 2047 section 6.2).

    Args:
        value: the raw header value (``str`` with surrogate escapes for 8-bit bytes).
        hint: the charset to try first for raw 8-bit bytes (e.g. the body's charset).
    """
    if not value:
        return ""
    text = recover_8bit(_FOLD.sub("", value), hint)
    if "=?" not in text:
        return text.strip()
    out: list[str] = []
    pending: list[tuple[str, bytes]] = []  # (charset, bytes) of adjacent encoded words
    pos = 0

    def flush() -> None:
        if not pending:
            return
        groups: list[tuple[str, bytearray]] = []
        for cs, data in pending:
            if groups and groups[-1][0] == cs:
                groups[-1][1].extend(data)
            else:
                groups.append((cs, bytearray(data)))
        for cs, data in groups:
            out.append(decode_bytes(bytes(data), cs).text)
        pending.clear()

    for m in _EW.finditer(text):
        between = text[pos:m.start()]
        if between and not (pending and between.isspace()):
            flush()
            out.append(between)
        data = _ew_bytes(m.group(2), m.group(3))
        if data is None:
            flush()
            out.append(m.group(0))
        else:
            pending.append((m.group(1).lower(), data))
        pos = m.end()
    flush()
    out.append(text[pos:])
    return "".join(out).strip()


def header_charset_hint(raw_headers: list[tuple[str, str]]) -> str | None:
    """The first charset named in a Content-Type header (used for raw 8-bit headers)."""
    for name, value in raw_headers:
        if name.lower() == "content-type":
            m = re.search(r'charset\s*=\s*"?([A-Za-z0-9_.:-]+)', value, re.I)
            if m:
                return m.group(1)
    return None
