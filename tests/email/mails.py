"""Mails as real clients emit them, built with the ``email`` package or as raw bytes.

Every builder returns RFC 822 bytes with CRLF line ends. The expected decoded texts live next
to the builders so tests assert exact strings.
"""

from __future__ import annotations

import base64
import os
import struct
import zlib
from email.header import Header
from email.message import EmailMessage
from email.mime.application import MIMEApplication
from email.mime.base import MIMEBase
from email.mime.image import MIMEImage
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.policy import SMTP, compat32
from email.utils import formataddr

DATE = "Tue, 24 Nov 2026 09:15:00 +0800"
HUB = "complaints@city.example"


def crlf(data: bytes) -> bytes:
    """Normalise line ends to CRLF (what IMAP servers store)."""
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def png(width: int = 8, height: int = 8, seed: int = 0) -> bytes:
    """A small valid PNG (a grey gradient)."""
    rows = b"".join(b"\x00" + bytes(((x * 16 + y * 8 + seed) % 256) for x in range(width))
                    for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


def amr(frames: int = 50) -> bytes:
    """An AMR-NB voice memo (12.2 kbit/s frames of silence), as phones record them."""
    return b"#!AMR\n" + (b"\x3c" + bytes(31)) * frames


def tnef(files: list[tuple[bytes, bytes]], body: bytes = b"", codepage: int = 936) -> bytes:
    """A winmail.dat (TNEF) holding ``(filename bytes, data)`` files and a plain body."""

    def attr(level: int, ident: int, kind: int, data: bytes) -> bytes:
        return (struct.pack("<BHHI", level, ident, kind, len(data)) + data
                + struct.pack("<H", sum(data) & 0xFFFF))

    out = struct.pack("<IH", 0x223E9F78, 0x0101)
    out += attr(1, 0x9006, 0x0008, struct.pack("<I", 0x00010000))  # attTnefVersion
    out += attr(1, 0x9007, 0x0006, struct.pack("<II", codepage, 0))  # attOemCodepage
    if body:
        out += attr(1, 0x800C, 0x0002, body)  # attBody
    for name, data in files:
        out += attr(2, 0x9002, 0x0006, bytes(14))  # attAttachRendData starts an attachment
        out += attr(2, 0x8010, 0x0001, name + b"\x00")  # attAttachTitle
        out += attr(2, 0x800F, 0x0006, data)  # attAttachData
    return out


# ----------------------------------------------------------------------------- texts
GBK_TEXT = ("您好：\n我是幸福里小区3号楼的居民，楼下的饭店每天凌晨两点还在营业，噪音扰民严重，"
            "油烟也很大。\n请相关部门尽快处理。\n联系电话：13812345678\n王先生")
GBK_SUBJECT = "关于幸福里小区饭店噪音扰民的投诉"
BIG5_TEXT = ("你好，\n本人住在和平路二十號，門前的路燈已經壞了一個星期，晚上很黑，"
             "老人家出入很危險。\n陳大文")
BIG5_SUBJECT = "和平路路燈壞了"
EIGHTBIT_SUBJECT = "垃圾站臭味太大"
EIGHTBIT_NAME = "李阿姨"
EIGHTBIT_TEXT = "光明街道的垃圾站一直没人清理，夏天臭味很大，苍蝇很多。电话 021-62345678"
GB18030_NAME = "刘䶮"
GB18030_TEXT = "我叫刘䶮，𠮷野家门口的人行道砖松动了，已经有人摔倒。"
HTML_SUBJECT = "建议在公园增加座椅"
HTML_TEXT = ("各位领导好：\n人民公园里可以休息的座椅太少，老人走累了 没地方坐。\n建议：\n"
             "- 沿湖步道每隔100米放一张长椅\n- 儿童乐园旁边增加遮阳棚\n谢谢！")
REPLY_TEXT = "补充一下：昨晚又吵到三点，麻烦尽快处理。"
FORWARD_INNER_TEXT = "我家楼下的井盖丢了，很危险，请尽快补上。地址：建设路88号门口。"


def _addr(name: str, addr: str, charset: str = "utf-8") -> str:
    return formataddr((name, addr), charset=charset)


def gbk_plain(msgid: str = "<gbk-0001@mail.qq.example>") -> bytes:
    """Foxmail-style: GBK body (base64), GBK encoded-word subject and sender name."""
    msg = MIMEText(GBK_TEXT, "plain", "gbk")
    msg["Subject"] = Header(GBK_SUBJECT, "gbk")
    msg["From"] = _addr("王先生", "wang.resident@qq.example", "gbk")
    msg["To"] = HUB
    msg["Date"] = DATE
    msg["Message-ID"] = msgid
    return crlf(msg.as_bytes(policy=compat32))


def big5_plain() -> bytes:
    """A Hong Kong client: Big5 quoted-printable body, Big5 subject, declared as "big5"."""
    msg = MIMEText(BIG5_TEXT, "plain", "big5")
    msg["Subject"] = Header(BIG5_SUBJECT, "big5")
    msg["From"] = _addr("陳大文", "chan.taiman@netvigator.example", "big5")
    msg["To"] = HUB
    msg["Date"] = DATE
    msg["Message-ID"] = "<big5-0001@netvigator.example>"
    return crlf(msg.as_bytes(policy=compat32))


def eightbit_undeclared(with_message_id: bool = False) -> bytes:
    """Old webmail: raw 8-bit GBK in headers AND body, no charset declared, no Message-ID."""
    lines = [
        b"From: " + EIGHTBIT_NAME.encode("gbk") + b" <li.ayi@163.example>",
        b"To: " + HUB.encode(),
        b"Subject: " + EIGHTBIT_SUBJECT.encode("gbk"),
        b"Date: " + DATE.encode(),
        b"MIME-Version: 1.0",
        b"Content-Type: text/plain",
        b"Content-Transfer-Encoding: 8bit",
    ]
    if with_message_id:
        lines.append(b"Message-ID: <eightbit@163.example>")
    return crlf(b"\n".join(lines) + b"\n\n" + EIGHTBIT_TEXT.encode("gbk") + b"\n")


def gb18030_only() -> bytes:
    """Characters only GB18030 has (CJK Ext A and B), labelled gb2312 as clients still do."""
    body = GB18030_TEXT.encode("gb18030")
    name = base64.b64encode(GB18030_NAME.encode("gb18030")).decode()
    return crlf(
        b"From: =?gb2312?B?" + name.encode() + b"?= <liu.yan@sina.example>\n"
        b"To: " + HUB.encode() + b"\nSubject: =?gb2312?B?"
        + base64.b64encode("人行道砖松动".encode("gb18030")) + b"?=\n"
        b"Date: " + DATE.encode() + b"\nMessage-ID: <gb18030-0001@sina.example>\n"
        b"MIME-Version: 1.0\nContent-Type: text/plain; charset=gb2312\n"
        b"Content-Transfer-Encoding: base64\n\n" + base64.encodebytes(body))


HTML_BODY = """<html><head><style>p {{ color: red }}</style><title>x</title></head><body>
<div>各位领导好：</div><p>人民公园里可以休息的座椅太少，老人走累了&nbsp;没地方坐。</p>
<p><b>建议</b>：</p><ul><li>沿湖步道每隔100米放一张长椅</li><li>儿童乐园旁边增加遮阳棚</li></ul>
<div>谢谢！</div><script>track()</script></body></html>"""


def html_only() -> bytes:
    """NetEase webmail style: only an HTML part, UTF-8, quoted-printable."""
    msg = EmailMessage(policy=SMTP)
    msg["Subject"] = HTML_SUBJECT
    msg["From"] = _addr("赵女士", "zhao@126.example")
    msg["To"] = HUB
    msg["Date"] = DATE
    msg["Message-ID"] = "<html-0001@126.example>"
    msg.set_content(HTML_BODY.format(), subtype="html", cte="quoted-printable")
    return msg.as_bytes()


PHOTO = png(seed=1)
VOICE = amr()


def photo_and_voice() -> bytes:
    """A phone client: text, a photo sent as octet-stream with an RFC 2231 Chinese name, and
    a voice memo whose name tries path traversal."""
    msg = MIMEMultipart("mixed")
    msg["Subject"] = Header("人行道上的共享单车堆成山", "utf-8")
    msg["From"] = _addr("张先生", "zhang@gmail.example")
    msg["To"] = HUB
    msg["Date"] = DATE
    msg["Message-ID"] = "<photo-0001@gmail.example>"
    msg.attach(MIMEText("照片和语音见附件。\n\n发自我的iPhone", "plain", "utf-8"))
    photo = MIMEApplication(PHOTO, "octet-stream")
    photo.add_header("Content-Disposition", "attachment",
                     filename=("utf-8", "", "现场照片.jpg"))
    msg.attach(photo)
    voice = MIMEBase("audio", "mpeg")
    voice.set_payload(base64.encodebytes(VOICE).decode())
    voice["Content-Transfer-Encoding"] = "base64"
    voice.add_header("Content-Disposition", "attachment", filename="../../etc/语音留言.amr")
    msg.attach(voice)
    return crlf(msg.as_bytes(policy=compat32))


INLINE_PNG = png(seed=7)


def inline_image() -> bytes:
    """Outlook style: alternative (plain + related(html + CID image))."""
    msg = MIMEMultipart("alternative")
    msg["Subject"] = "路面塌陷"
    msg["From"] = _addr("Chen Jing", "chen.jing@outlook.example")
    msg["To"] = HUB
    msg["Date"] = DATE
    msg["Message-ID"] = "<inline-0001@outlook.example>"
    msg.attach(MIMEText("建设路和解放路路口的路面塌陷了，见图。", "plain", "utf-8"))
    related = MIMEMultipart("related")
    related.attach(MIMEText('<p>建设路和解放路路口的路面塌陷了，见图。</p><img src="cid:img1">',
                            "html", "utf-8"))
    img = MIMEImage(INLINE_PNG, "png")
    img["Content-ID"] = "<img1>"
    img.add_header("Content-Disposition", "inline", filename="image001.png")
    related.attach(img)
    msg.attach(related)
    return crlf(msg.as_bytes(policy=compat32))


def nested_forward() -> bytes:
    """A community worker forwards a resident's GBK mail (with a photo) as an attachment."""
    inner = MIMEMultipart("mixed")
    inner["Subject"] = Header("井盖丢失", "gbk")
    inner["From"] = _addr("孙大爷", "sun.daye@qq.example", "gbk")
    inner["To"] = "shequ@city.example"
    inner["Date"] = DATE
    inner["Message-ID"] = "<inner-0001@qq.example>"
    inner.attach(MIMEText(FORWARD_INNER_TEXT, "plain", "gbk"))
    inner.attach(MIMEImage(png(seed=3), "png", name="jinggai.png"))
    outer = MIMEMultipart("mixed")
    outer["Subject"] = Header("转发: 井盖丢失", "utf-8")
    outer["From"] = _addr("幸福里社区居委会", "shequ@city.example")
    outer["To"] = HUB
    outer["Date"] = DATE
    outer["Message-ID"] = "<fwd-0001@city.example>"
    outer.attach(MIMEText("请处理下面居民的来信。", "plain", "utf-8"))
    outer.attach(MIMEMessage(inner))
    return crlf(outer.as_bytes(policy=compat32))


TNEF_PHOTO = png(seed=5)


def winmail() -> bytes:
    """Outlook with rich text: the attachment arrives inside winmail.dat (TNEF)."""
    msg = MIMEMultipart("mixed")
    msg["Subject"] = "违章搭建"
    msg["From"] = _addr("Zhou Min", "zhou.min@corp.example")
    msg["To"] = HUB
    msg["Date"] = DATE
    msg["Message-ID"] = "<tnef-0001@corp.example>"
    msg.attach(MIMEText("楼顶有人违章搭建，照片在附件里。", "plain", "utf-8"))
    dat = MIMEApplication(tnef([("楼顶.png".encode("gbk"), TNEF_PHOTO)]), "ms-tnef",
                          name="winmail.dat")
    dat.add_header("Content-Disposition", "attachment", filename="winmail.dat")
    msg.attach(dat)
    return crlf(msg.as_bytes(policy=compat32))


def auto_reply() -> bytes:
    """An out-of-office answer to a mail the hub sent (RFC 3834)."""
    msg = MIMEText("我正在休假，11月30日回来。", "plain", "utf-8")
    msg["Subject"] = Header("自动回复: 您的投诉已受理", "utf-8")
    msg["From"] = _addr("王先生", "wang.resident@qq.example")
    msg["To"] = HUB
    msg["Date"] = DATE
    msg["Message-ID"] = "<auto-0001@qq.example>"
    msg["Auto-Submitted"] = "auto-replied"
    return crlf(msg.as_bytes(policy=compat32))


def bounce() -> bytes:
    """A DSN (RFC 3464) from MAILER-DAEMON with an empty Return-Path and no Auto-Submitted."""
    return crlf(f"""Return-Path: <>
From: MAILER-DAEMON@mx.city.example (Mail Delivery System)
To: {HUB}
Subject: Undelivered Mail Returned to Sender
Date: {DATE}
Message-ID: <bounce-0001@mx.city.example>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
 boundary="DSN-BOUNDARY"

--DSN-BOUNDARY
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mx.city.example.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients.

--DSN-BOUNDARY
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.city.example

Final-Recipient: rfc822; nobody@example.invalid
Action: failed
Status: 5.1.1

--DSN-BOUNDARY
Content-Type: message/rfc822

From: {HUB}
To: nobody@example.invalid
Subject: =?UTF-8?B?5oKo55qE5oqV6K+J5bey5Y+X55CG?=
Message-ID: <ack-0001@city.example>

Your complaint was received.

--DSN-BOUNDARY--
""".encode())


def reply(in_reply_to: str = "<gbk-0001@mail.qq.example>", subject: str | None = None,
          sender: tuple[str, str] = ("王先生", "wang.resident@qq.example"),
          msgid: str = "<reply-0001@mail.qq.example>", references: bool = True) -> bytes:
    """A resident answers: new text on top, the quoted history below (QQ Mail style)."""
    body = (f"{REPLY_TEXT}\n\n发自我的华为手机\n\n"
            "------------------ 原始邮件 ------------------\n"
            "发件人: \"王先生\" <wang.resident@qq.example>;\n发送时间: 2026年11月24日(星期二) "
            "上午9:15\n收件人: \"complaints\" <complaints@city.example>;\n\n"
            + "\n".join("> " + line for line in GBK_TEXT.split("\n")))
    msg = MIMEText(body, "plain", "gb18030")
    msg["Subject"] = Header(subject or f"回复：{GBK_SUBJECT}", "gb18030")
    msg["From"] = _addr(*sender, "gbk")
    msg["To"] = HUB
    msg["Date"] = "Tue, 24 Nov 2026 21:40:00 +0800"
    msg["Message-ID"] = msgid
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
        if references:
            msg["References"] = in_reply_to
    return crlf(msg.as_bytes(policy=compat32))


def huge(size: int = 30 * 1024 * 1024) -> bytes:
    """A mail of about ``size`` bytes (a long video attached)."""
    msg = MIMEMultipart("mixed")
    msg["Subject"] = "视频证据"
    msg["From"] = _addr("钱先生", "qian@qq.example")
    msg["To"] = HUB
    msg["Date"] = DATE
    msg["Message-ID"] = "<huge-0001@qq.example>"
    msg.attach(MIMEText("视频太大了。", "plain", "utf-8"))
    video = MIMEApplication(os.urandom(size * 3 // 4), "octet-stream", name="video.mp4")
    msg.attach(video)
    return crlf(msg.as_bytes(policy=compat32))


BROKEN_TEXT = "小区东门的消防通道被私家车堵住了，物业不管。"


def broken_boundary() -> bytes:
    """The declared boundary is not the one the body uses, and the close boundary is missing."""
    body = base64.encodebytes(BROKEN_TEXT.encode("gbk")).decode()
    return crlf((
        "From: =?GBK?B?" + base64.b64encode("周女士".encode("gbk")).decode()
        + "?= <zhou@sohu.example>\n"
        "To: complaints@city.example\nSubject: =?GBK?B?"
        + base64.b64encode("消防通道被堵".encode("gbk")).decode() + "?=\n"
        f"Date: {DATE}\nMessage-ID: <broken-0001@sohu.example>\nMIME-Version: 1.0\n"
        'Content-Type: multipart/mixed; boundary="----=_Part_DECLARED"\n\n'
        "This is a multi-part message in MIME format.\n\n"
        "------=_Part_ACTUAL\n"
        "Content-Type: text/plain; charset=GBK\nContent-Transfer-Encoding: base64\n\n"
        + body + "\n").encode("ascii"))


def empty() -> bytes:
    """A mail with no subject and no body (sent by mistake)."""
    return crlf(b"From: someone@qq.example\nTo: complaints@city.example\n"
                b"Date: " + DATE.encode() + b"\nMessage-ID: <empty-0001@qq.example>\n\n")


def own_loop() -> bytes:
    """A mail the hub itself sent, come back (its loop header)."""
    msg = MIMEText("您的投诉 FB-20261124-000001 已受理。", "plain", "utf-8")
    msg["Subject"] = "您的投诉已受理"
    msg["From"] = HUB
    msg["To"] = HUB
    msg["Date"] = DATE
    msg["Message-ID"] = "<loop-0001@city.example>"
    msg["X-Feedback-Hub-Loop"] = "demo"
    return crlf(msg.as_bytes(policy=compat32))


STREETS = ["建设路", "解放路", "人民路", "和平路", "光明街", "幸福里", "中山路", "新华街"]
PROBLEMS = ["电梯坏了", "路灯不亮", "下水道堵了", "垃圾没人清", "噪音扰民", "井盖松动"]


def numbered(i: int, size: int = 0) -> bytes:
    """The i-th of many distinct complaints (recovery tests and the benchmark); ``size`` adds
    an attachment of that many bytes."""
    street, problem = STREETS[i % len(STREETS)], PROBLEMS[i % len(PROBLEMS)]
    text = f"{street}{i % 97 + 1}号{problem}，已经第{i}天了，请尽快处理。"
    if size:
        msg: MIMEMultipart | MIMEText = MIMEMultipart("mixed")
        msg.attach(MIMEText(text, "plain", "gbk"))
        msg.attach(MIMEApplication(os.urandom(size), "octet-stream", name=f"photo{i}.jpg"))
    else:
        msg = MIMEText(text, "plain", "gbk")
    msg["Subject"] = Header(f"{street}{problem}（第{i}封）", "gbk")
    msg["From"] = _addr(f"居民{i}", f"resident{i}@qq.example", "gbk")
    msg["To"] = HUB
    msg["Date"] = DATE
    msg["Message-ID"] = f"<n{i:06d}@qq.example>"
    return crlf(msg.as_bytes(policy=compat32))
