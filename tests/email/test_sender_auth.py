"""Spoofed senders: the receiving server's Authentication-Results (RFC 8601), read only under
the configured authserv-id. A forged From never writes into an existing case; with
``on_auth_fail: dead_letter`` the mail is dead-lettered with its raw bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectors.email.demo_server import Dovecot
from normalizer.mail.authres import check_sender, parse
from tests.email import mails
from tests.email.conftest import write_hub_config
from tests.email.test_imap_pipeline import cases_by_msgid, folder_count, rows, run

MX = "mx.city.example"


def with_auth(mail: bytes, *values: str) -> bytes:
    """The mail as the border server hands it on: its Authentication-Results on top."""
    return b"".join(f"Authentication-Results: {v}\r\n".encode() for v in values) + mail


def headers(*pairs: tuple[str, str]) -> list[tuple[str, str]]:
    return list(pairs)


def test_header_parsing_drops_comments_and_reads_properties() -> None:
    server, results = parse("mx.city.example 1; (checked by a gateway)\r\n dkim=pass "
                            "(2048-bit key) header.d=qq.example header.s=s201512;\r\n spf=pass"
                            " (domain of x@qq.example designates 1.2.3.4) smtp.mailfrom="
                            "x@qq.example; dmarc=pass (p=QUARANTINE) header.from=qq.example")
    assert server == MX
    assert [(r.method, r.result) for r in results] == [("dkim", "pass"), ("spf", "pass"),
                                                      ("dmarc", "pass")]
    assert results[0].props == {"header.d": "qq.example", "header.s": "s201512"}
    assert parse("mx.city.example; none") == (MX, [])


@pytest.mark.parametrize(("values", "sender", "verdict"), [
    ([f"{MX}; dmarc=pass header.from=qq.example"], "a@qq.example", "pass"),
    ([f"{MX}; dmarc=fail (p=reject) header.from=qq.example"], "a@qq.example", "fail"),
    # no DMARC record: an aligned DKIM or SPF pass is enough (a subdomain counts)
    ([f"{MX}; dkim=pass header.d=mail.qq.example"], "a@qq.example", "pass"),
    ([f"{MX}; spf=pass smtp.mailfrom=bounce@qq.example"], "a@qq.example", "pass"),
    # a pass for somebody else's domain proves nothing about the From address
    ([f"{MX}; dkim=pass header.d=spammer.example; spf=softfail smtp.mailfrom=x@qq.example"],
     "a@qq.example", "fail"),
    ([f"{MX}; dkim=pass header.d=spammer.example"], "a@qq.example", "none"),
    # only the trusted server's header counts: one the sender wrote in is ignored
    (["mx.city.example.evil; dmarc=pass header.from=qq.example",
      f"{MX}; dmarc=fail header.from=qq.example"], "a@qq.example", "fail"),
    (["gateway.other.example; dmarc=pass header.from=qq.example"], "a@qq.example", "none"),
    ([f"{MX.upper()}; dmarc=pass header.from=qq.example"], "a@qq.example", "pass"),
])
def test_verdicts(values: list[str], sender: str, verdict: str) -> None:
    hdrs = [("Authentication-Results", v) for v in values] + [("From", sender)]
    assert check_sender(hdrs, MX, sender).verdict == verdict


def test_several_from_addresses_fail_whatever_the_results_say() -> None:
    ok = ("Authentication-Results", f"{MX}; dmarc=pass header.from=qq.example")
    two_headers = headers(ok, ("From", "a@qq.example"), ("From", "mayor@city.example"))
    assert check_sender(two_headers, MX, "a@qq.example").detail == "2 From headers"
    two_addresses = headers(ok, ("From", "a@qq.example, mayor@city.example"))
    assert check_sender(two_addresses, MX, "a@qq.example").verdict == "fail"
    assert check_sender(headers(ok, ("From", '"Wang, Li" <a@qq.example>')), MX,
                        "a@qq.example").verdict == "pass"


def test_a_forged_reply_opens_a_flagged_case_and_never_touches_the_victims_case(
        tmp_path: Path, dovecot: Dovecot, mailbox: str, imap_env: dict[str, str]) -> None:
    cfg = write_hub_config(tmp_path, dovecot, mailbox, authserv_id=MX)
    dovecot.append(mailbox, [with_auth(mails.gbk_plain(),
                                       f"{MX}; dkim=pass header.d=qq.example; dmarc=pass "
                                       "header.from=qq.example")])
    run(cfg)
    ref = rows(tmp_path, "SELECT reference FROM cases")[0]["reference"]
    forged = with_auth(mails.reply(msgid="<forged@attacker.example>"),
                       f"{MX}; spf=fail smtp.mailfrom=wang.resident@qq.example; "
                       "dmarc=fail (p=reject) header.from=qq.example")
    # the attacker also writes a header of its own claiming a pass: ignored
    forged = with_auth(forged, "mx.attacker.example; dmarc=pass header.from=qq.example")
    genuine = with_auth(mails.reply(msgid="<reply-genuine@mail.qq.example>"),
                        f"{MX}; dmarc=pass header.from=qq.example")
    dovecot.append(mailbox, [forged, genuine])
    summary = run(cfg)
    assert summary.process.cases_new == 1 and summary.process.updates == 1
    cases = cases_by_msgid(tmp_path)
    original = cases["<gbk-0001@mail.qq.example>"]
    assert original["extra"]["email"]["sender_auth"]["verdict"] == "pass"
    flagged = cases["<forged@attacker.example>"]
    (flag,) = flagged["review"]["flags"]
    assert flag["code"] == "sender_spoofed" and "dmarc=fail" in flag["reason"]
    assert f"looks like a reply to case {ref}" in flag["reason"]
    replies = rows(tmp_path, "SELECT data FROM case_events WHERE case_id = ? AND kind = "
                             "'reply'", (original["case_id"],))
    assert len(replies) == 1 and "reply-genuine" in replies[0]["data"]


def test_dead_letter_mode_keeps_the_raw_mail_and_acknowledges_it(
        tmp_path: Path, dovecot: Dovecot, mailbox: str, imap_env: dict[str, str]) -> None:
    cfg = write_hub_config(tmp_path, dovecot, mailbox, authserv_id=MX,
                           on_auth_fail="dead_letter")
    forged = with_auth(mails.gbk_plain(msgid="<spoof-1@attacker.example>"),
                       f"{MX}; dmarc=fail header.from=qq.example")
    dovecot.append(mailbox, [forged, with_auth(mails.big5_plain(), f"{MX}; dmarc=none")])
    summary = run(cfg)
    assert summary.ingest[0].inserted == 2 and summary.process.cases_new == 1
    (dl,) = rows(tmp_path, "SELECT stage, reason, raw_record_id FROM dead_letters")
    assert dl["stage"] == "process"
    assert dl["reason"].endswith(f"sender authentication failed at {MX}: "
                                 "dmarc=fail")
    raw = rows(tmp_path, "SELECT raw_blob FROM raw_records WHERE id = ?",
               (dl["raw_record_id"],))[0]["raw_blob"]
    from hub.config import load_config
    from hub.pipeline import Hub

    with Hub(load_config(cfg)) as hub:  # the raw bytes are kept, for a look or a replay
        assert b"Message-ID: <spoof-1@attacker.example>" in hub.blobs.read(raw)
    assert folder_count(dovecot, mailbox, "INBOX") == 0  # acknowledged after the commit
