"""Mail parsing without a server: charsets, headers, bodies, trimming, sniffing, auto-replies."""

from __future__ import annotations

import base64

import pytest

from media.sniff import safe_filename, sniff
from normalizer.mail.autoreply import not_a_case_reason
from normalizer.mail.body import html_to_text, trim_reply
from normalizer.mail.decode import decode_bytes, decode_header
from normalizer.mail.parse import parse_mail
from tests.email import mails


def b64(text: str, enc: str) -> str:
    return base64.b64encode(text.encode(enc)).decode()


def test_encoded_words_split_mid_character_are_joined() -> None:
    data = "关于小区噪音扰民的投诉".encode("gbk")
    value = (f"=?GBK?B?{base64.b64encode(data[:5]).decode()}?=\r\n "
             f"=?GBK?B?{base64.b64encode(data[5:]).decode()}?=")
    assert decode_header(value) == "关于小区噪音扰民的投诉"


def test_charset_aliases() -> None:
    assert decode_header(f"=?gb2312?B?{b64('刘䶮', 'gb18030')}?=") == "刘䶮"
    assert decode_header(f"=?big5?B?{b64('香港𨋢', 'big5hkscs')}?=") == "香港𨋢"
    assert decode_bytes("𠮷野家".encode("gb18030"), "gbk").text == "𠮷野家"


def test_raw_8bit_header_bytes_are_recovered() -> None:
    raw = "投诉：路灯坏了".encode("gbk").decode("ascii", "surrogateescape")
    assert decode_header(raw) == "投诉：路灯坏了"
    raw5 = "路燈壞了三天".encode("big5").decode("ascii", "surrogateescape")
    assert decode_header(raw5) == "路燈壞了三天"


def test_labels_that_lie() -> None:
    utf8_as_gbk = decode_bytes("我们小区的电梯坏了".encode(), "gb2312")
    assert (utf8_as_gbk.text, utf8_as_gbk.charset) == ("我们小区的电梯坏了", "utf-8")
    gbk_as_latin1 = decode_bytes("我们小区的电梯坏了".encode("gbk"), "iso-8859-1")
    assert (gbk_as_latin1.text, gbk_as_latin1.guessed) == ("我们小区的电梯坏了", True)
    assert decode_bytes("Café".encode("latin-1"), "iso-8859-1").text == "Café"
    undeclared = decode_bytes("我們社區的路燈壞了三天了".encode("big5"), None)
    assert (undeclared.text, undeclared.charset) == ("我們社區的路燈壞了三天了", "big5hkscs")


def test_html_to_text() -> None:
    html = ("<div>你好<br>第二行</div><p>段落&amp;实体&nbsp;空格</p><ul><li>一</li><li>二</li>"
            "</ul><style>x{}</style><script>alert(1)</script>")
    assert html_to_text(html) == "你好\n第二行\n段落&实体 空格\n- 一\n- 二"


@pytest.mark.parametrize("marker", [
    "在 2026年11月24日 09:15，王先生 <w@qq.example> 写道：",
    "王先生 <w@qq.example> 于2026年11月24日周二 09:15写道：",
    "On Tue, Nov 24, 2026 at 9:15 AM Wang <w@qq.example> wrote:",
    "-----Original Message-----",
    "------------------ 原始邮件 ------------------",
    "________________________________",
])
def test_quoted_history_is_trimmed(marker: str) -> None:
    text = f"新情况：又漏水了。\n\n{marker}\n> 旧内容"
    assert trim_reply(text) == ("新情况：又漏水了。", True)


def test_outlook_header_block_and_signature_are_trimmed() -> None:
    text = ("楼道灯还没修。\n--\n李四\n幸福里3号楼\n\n发件人: 市民热线\n"
            "发送时间: 2026年11月24日 9:00\n收件人: 李四\n主题: 回复")
    assert trim_reply(text) == ("楼道灯还没修。", True)
    assert trim_reply("> only a quote") == ("> only a quote", False)


def test_sniff_and_safe_names() -> None:
    assert sniff(mails.PHOTO) == "image/png"
    assert sniff(mails.VOICE) == "audio/amr"
    assert sniff(b"%PDF-1.7\n") == "application/pdf"
    assert sniff("居民来信".encode()) == "text/plain"
    assert safe_filename("../../etc/passwd", "text/plain") == "passwd"
    assert safe_filename("..\\..\\boot.ini", "text/plain") == "boot.ini"
    assert safe_filename("..", "image/png", 3) == "attachment-3.png"
    assert safe_filename("a\x00b\x07c<>.jpg", "image/jpeg") == "abc__.jpg"
    long = safe_filename("照" * 200 + ".jpg", "image/jpeg")
    assert long.endswith(".jpg") and len(long.encode()) <= 180


def test_auto_reply_and_bounce_rules() -> None:
    def reason(headers: str) -> str | None:
        raw = (headers + "From: a@b.example\nSubject: x\n\nhi\n").encode()
        return not_a_case_reason(parse_mail(raw), "X-Feedback-Hub-Loop")

    assert reason("") is None
    assert reason("Auto-Submitted: no\n") is None
    assert reason("Auto-Submitted: auto-generated\n") == \
        "auto-reply: Auto-Submitted: auto-generated"
    assert reason("Precedence: bulk\n") == "auto-reply: Precedence: bulk"
    assert reason("X-Autoreply: yes\n") == "auto-reply: X-Autoreply: yes"
    assert reason("X-Autorespond: yes\n") == "auto-reply: X-Autorespond: yes"
    assert reason("Return-Path: <>\n") == "bounce: empty Return-Path"
    assert not_a_case_reason(parse_mail(b"From: postmaster@x.example\n\nfailed\n"),
                             "X-Feedback-Hub-Loop") == "bounce: sent by postmaster"
    assert reason("X-Feedback-Hub-Loop: other\n").startswith("loop: ")


def test_rfc2231_and_encoded_word_filenames() -> None:
    parsed = parse_mail(mails.photo_and_voice())
    assert [a.filename for a in parsed.attachments] == ["现场照片.jpg", "语音留言.amr"]
    raw = ("From: a@b.example\nSubject: x\nMIME-Version: 1.0\n"
           'Content-Type: multipart/mixed; boundary="B"\n\n--B\nContent-Type: text/plain\n\nhi\n'
           f'--B\nContent-Type: image/png; name="=?GBK?B?{b64("照片.png", "gbk")}?="\n'
           "Content-Transfer-Encoding: base64\n\n"
           + base64.encodebytes(mails.PHOTO).decode() + "--B--\n").encode()
    assert [a.filename for a in parse_mail(raw).attachments] == ["照片.png"]
