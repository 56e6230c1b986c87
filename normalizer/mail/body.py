"""Mail body text: HTML to readable text, and quoted history and signatures trimmed.

The converter is deliberately plain (no Markdown): block elements become line breaks, list
items get a dash, scripts and styles are dropped, entities are decoded. Trimming recognises the
reply markers of the mail clients residents use (Outlook and Foxmail in Chinese, QQ Mail,
NetEase, Gmail, Apple Mail) and the usual signature lines.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

_BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul",
          "ol", "blockquote", "pre", "hr", "section", "article", "header", "footer", "dt", "dd",
          "address", "center", "form", "fieldset", "title"}
_SKIP = {"script", "style", "head", "template", "noscript", "xml"}


class _TextParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip = 0
        self.pre = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP:
            self.skip += 1
        elif tag == "br":
            self.parts.append("\n")
        elif tag == "li":
            self.parts.append("\n- ")
        elif tag in ("td", "th"):
            self.parts.append(" ")
        elif tag == "pre":
            self.pre += 1
            self.parts.append("\n")
        elif tag in _BLOCK:
            self.parts.append("\n")
        elif tag == "img":
            alt = dict(attrs).get("alt")
            if alt:
                self.parts.append(f"[{alt}]")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self.skip = max(0, self.skip - 1)
        elif tag == "pre":
            self.pre = max(0, self.pre - 1)
            self.parts.append("\n")
        elif tag in _BLOCK and tag != "br":
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self.skip:
            return
        if self.pre:
            self.parts.append(data.replace("\r\n", "\n"))
        else:
            self.parts.append(re.sub(r"[ \t\r\n\f]+", " ", data))


def html_to_text(html: str) -> str:
    """Readable plain text from an HTML body."""
    p = _TextParser()
    p.feed(html)
    p.close()
    text = "".join(p.parts).replace("\xa0", " ")
    # block boundaries stack up newlines; one line per block reads best in a case description
    lines = [re.sub(r"[ \t]+", " ", line).strip() for line in text.split("\n")]
    return "\n".join(line for line in lines if line)


def normalize_text(text: str) -> str:
    """Line endings to LF, trailing spaces off, at most one empty line in a row."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\ufeff", "")
    lines = [line.rstrip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


# --------------------------------------------------------------------------- trimming
#: A line at which quoted history starts (everything from it on is history).
_QUOTE_HEADERS = [
    r"-{2,}\s*(?:Original Message|原始邮件|原始郵件|原邮件|回复的原邮件)\s*-{2,}",
    r"-{5,}\s*(?:原始邮件|原始郵件)\s*-{5,}",
    r"(?:On|Am|Le)\s.{4,200}\s(?:wrote|schrieb|a écrit)\s*:",
    r"在\s?.{4,120}(?:写道|寫道)\s*[:：]",
    r".{2,120}于\s?\d{4}\s?年.{2,80}(?:写道|寫道)\s*[:：]",
    r".{0,120}\d{4}[-/年].{2,60}(?:写道|寫道)\s*[:：]",
    r"_{20,}",
]
_QUOTE_START = re.compile(r"^\s*(?:" + "|".join(_QUOTE_HEADERS) + r")\s*$", re.I)
#: Outlook-style header blocks: "发件人: ..." followed by "发送时间:" / "Sent:" etc.
_OUTLOOK_FROM = re.compile(r"^\s*\**\s*(?:发件人|發件人|寄件者|From)\s*\**\s*[:：]", re.I)
_OUTLOOK_NEXT = re.compile(r"^\s*\**\s*(?:发送时间|發送時間|寄件日期|日期|时间|Sent|Date|收件人|"
                           r"To)\s*\**\s*[:：]", re.I)
_SIGNATURE = re.compile(
    r"^(?:-- ?|——+|"
    r"(?:发自|發自|来自|來自|Sent from|Get Outlook for)\s?(?:我的)?\s?\S.{0,40}|"
    r"(?:发自|来自)(?:网易|QQ|腾讯|新浪).{0,20})$", re.I)


def trim_reply(text: str) -> tuple[str, bool]:
    """Cut quoted reply history and a trailing signature; returns (text, trimmed?).

    Nothing is cut when it would leave no text (a mail that is only a quote keeps it all).
    """
    lines = text.split("\n")
    cut = len(lines)
    for i, line in enumerate(lines):
        if _QUOTE_START.match(line):
            cut = i
            break
        if _OUTLOOK_FROM.match(line) and any(_OUTLOOK_NEXT.match(x) for x in lines[i + 1:i + 4]):
            cut = i
            break
        if line.startswith(">") and all(x.startswith(">") or not x.strip()
                                        for x in lines[i:]):
            cut = i
            break
    for i in range(min(cut, len(lines)) - 1, -1, -1):
        if _SIGNATURE.match(lines[i].strip()):
            # a signature block is short and at the end of what is left
            if cut - i <= 8:
                cut = i
            break
    kept = "\n".join(lines[:cut]).strip()
    if not kept:
        return text, False
    return kept, cut < len(lines)
