"""The email channel end to end against a real Dovecot: mailbox → store → cases → jsonl sink.

Server: Dovecot started by tests/email/conftest.py (STARTTLS with a throwaway CA).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from connectors.email.demo_server import Dovecot
from hub.config import load_config
from hub.pipeline import Hub, RunSummary, run_once
from tests.conftest import jsonl_lines
from tests.email import mails
from tests.email.conftest import write_hub_config

pytestmark = pytest.mark.integration


def run(cfg: Path) -> RunSummary:
    hub = Hub(load_config(cfg))
    try:
        return run_once(hub)
    finally:
        hub.close()


def rows(folder: Path, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
    with sqlite3.connect(folder / "hub.db") as conn:
        conn.row_factory = sqlite3.Row
        return list(conn.execute(sql, params))


def cases_by_msgid(folder: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for r in rows(folder, "SELECT body FROM cases"):
        body = json.loads(r["body"])
        out[body["extra"]["email"]["message_id"]] = body
    return out


def folder_count(dovecot: Dovecot, user: str, folder: str) -> int:
    c = dovecot.client(user)
    try:
        if not c.folder_exists(folder):
            return 0
        return int(c.folder_status(folder, ["MESSAGES"])[b"MESSAGES"])
    finally:
        c.logout()


ALL = [
    mails.gbk_plain(), mails.big5_plain(), mails.eightbit_undeclared(), mails.gb18030_only(),
    mails.html_only(), mails.photo_and_voice(), mails.inline_image(), mails.nested_forward(),
    mails.winmail(), mails.auto_reply(), mails.bounce(), mails.reply(),
    mails.broken_boundary(), mails.empty(), mails.own_loop(),
]


def test_mailbox_to_cases_updates_and_ignored(tmp_path: Path, dovecot: Dovecot, mailbox: str,
                                              imap_env: dict[str, str]) -> None:
    dovecot.append(mailbox, ALL)
    cfg = write_hub_config(tmp_path, dovecot, mailbox)
    summary = run(cfg)

    assert summary.ingest[0].error is None
    assert summary.ingest[0].inserted == len(ALL)
    assert summary.process.cases_new == 10
    assert summary.process.updates == 1
    assert summary.process.ignored == 4
    assert summary.process.failed == 0

    ignored = {r["source_ref"].split("|")[0]: r["state_reason"] for r in rows(
        tmp_path, "SELECT source_ref, state_reason FROM raw_records WHERE state = 'ignored'")}
    assert ignored == {
        "<auto-0001@qq.example>": "auto-reply: Auto-Submitted: auto-replied",
        "<bounce-0001@mx.city.example>": "bounce: delivery status notification "
                                         "(multipart/report)",
        "<loop-0001@city.example>": "loop: sent by a Feedback Hub (X-Feedback-Hub-Loop: demo)",
        "<empty-0001@qq.example>": "empty: no subject, text or attachment",
    }

    cases = cases_by_msgid(tmp_path)
    gbk = cases["<gbk-0001@mail.qq.example>"]
    assert gbk["title"] == mails.GBK_SUBJECT
    assert gbk["description"] == mails.GBK_TEXT
    assert gbk["reporter"] == {"name": "王先生", "phone": "13812345678",
                               "email": "wang.resident@qq.example", "anonymous": False,
                               "preferred_language": None}
    assert gbk["language"] == "zh-Hans" and gbk["origin"]["channel"] == "email"
    assert gbk["links"]["updates"] == 1

    big5 = cases["<big5-0001@netvigator.example>"]
    assert (big5["title"], big5["description"]) == (mails.BIG5_SUBJECT, mails.BIG5_TEXT)
    assert big5["reporter"]["name"] == "陳大文" and big5["language"] == "zh-Hant"

    # no Message-ID, raw 8-bit GBK headers and body, no charset declared
    eight = next(c for m, c in cases.items() if m.endswith("@generated.feedback-hub.invalid>"))
    assert eight["title"] == mails.EIGHTBIT_SUBJECT
    assert eight["description"] == mails.EIGHTBIT_TEXT
    assert eight["reporter"]["name"] == mails.EIGHTBIT_NAME
    assert eight["reporter"]["phone"] == "02162345678"

    gb = cases["<gb18030-0001@sina.example>"]
    assert gb["description"] == mails.GB18030_TEXT and gb["reporter"]["name"] == "刘䶮"
    assert gb["title"] == "人行道砖松动"

    html = cases["<html-0001@126.example>"]
    assert html["description"] == mails.HTML_TEXT
    assert html["extra"]["email"]["html_only"] is True

    photo = cases["<photo-0001@gmail.example>"]
    assert photo["description"] == "照片和语音见附件。"  # signature trimmed
    atts = [(a["filename"], a["mime"], a["role"], a["size"]) for a in photo["attachments"]]
    assert atts == [("现场照片.jpg", "image/png", "photo", len(mails.PHOTO)),
                    ("语音留言.amr", "audio/amr", "voice", len(mails.VOICE))]

    inline = cases["<inline-0001@outlook.example>"]
    assert inline["description"] == "建设路和解放路路口的路面塌陷了，见图。"
    assert [(a["filename"], a["role"]) for a in inline["attachments"]] == [
        ("image001.png", "inline")]

    fwd = cases["<fwd-0001@city.example>"]
    assert fwd["title"] == "井盖丢失"
    assert fwd["description"] == (
        "请处理下面居民的来信。\n\n---------- 转发的邮件 / Forwarded message ----------\n"
        "发件人 From: 孙大爷 <sun.daye@qq.example>\n主题 Subject: 井盖丢失\n\n"
        + mails.FORWARD_INNER_TEXT)
    assert [(a["filename"], a["role"]) for a in fwd["attachments"]] == [
        ("井盖丢失.eml", "forwarded"), ("jinggai.png", "photo")]

    tnef = cases["<tnef-0001@corp.example>"]
    assert [(a["filename"], a["mime"], a["size"]) for a in tnef["attachments"]] == [
        ("楼顶.png", "image/png", len(mails.TNEF_PHOTO))]

    broken = cases["<broken-0001@sohu.example>"]
    assert (broken["title"], broken["description"]) == ("消防通道被堵", mails.BROKEN_TEXT)
    assert broken["reporter"]["name"] == "周女士"

    # the reply became an update of the GBK case, delivered as an update
    lines = jsonl_lines(tmp_path / "out" / "cases.jsonl")
    assert sum(1 for line in lines if line["kind"] == "case") == 10
    updates = [line for line in lines if line["kind"] == "update"]
    assert len(updates) == 1
    assert updates[0]["case"]["case_id"] == gbk["case_id"]
    assert updates[0]["update"]["kind"] == "reply"
    assert updates[0]["update"]["text"] == mails.REPLY_TEXT

    # acknowledged only after the commit: everything moved out of INBOX
    assert folder_count(dovecot, mailbox, "INBOX") == 0
    assert folder_count(dovecot, mailbox, "Processed") == len(ALL)

    # a second run finds nothing new and delivers nothing twice
    again = run(cfg)
    assert again.ingest[0].inserted == 0 and again.deliver.delivered == 0
    assert len(jsonl_lines(tmp_path / "out" / "cases.jsonl")) == len(lines)


def test_reference_in_subject_threads_only_for_the_reporter(
        tmp_path: Path, dovecot: Dovecot, mailbox: str, imap_env: dict[str, str]) -> None:
    dovecot.append(mailbox, [mails.gbk_plain()])
    cfg = write_hub_config(tmp_path, dovecot, mailbox)
    run(cfg)
    ref = rows(tmp_path, "SELECT reference FROM cases")[0]["reference"]
    same = mails.reply(in_reply_to="", subject=f"[{ref}] 还是没人处理",
                       msgid="<ref-same@qq.example>")
    other = mails.reply(in_reply_to="", subject=f"[{ref}] 我也被吵到了",
                        sender=("邻居", "neighbour@163.example"), msgid="<ref-other@163.example>")
    dovecot.append(mailbox, [same, other])
    summary = run(cfg)
    assert summary.process.updates == 1 and summary.process.cases_new == 1
    cases = cases_by_msgid(tmp_path)
    stranger = cases["<ref-other@163.example>"]
    assert stranger["review"]["flags"][0]["code"] == "reference_sender_mismatch"
    timeline = rows(tmp_path, "SELECT kind, text FROM case_events WHERE case_id = ? AND "
                              "kind = 'reply'", (cases["<gbk-0001@mail.qq.example>"]["case_id"],))
    assert [r["text"] for r in timeline] == [mails.REPLY_TEXT]


def test_oversized_mail_is_dead_lettered_and_quarantined(
        tmp_path: Path, dovecot: Dovecot, mailbox: str, imap_env: dict[str, str]) -> None:
    dovecot.append(mailbox, [mails.huge(), mails.gbk_plain()])
    cfg = write_hub_config(tmp_path, dovecot, mailbox)
    summary = run(cfg)
    assert summary.ingest[0].inserted == 1 and summary.ingest[0].dead == 1
    dead = rows(tmp_path, "SELECT reason, blob_sha256, detail FROM dead_letters")
    assert len(dead) == 1
    assert dead[0]["reason"].startswith("mail is ") and "over max_message_size 25000000" in \
        dead[0]["reason"] and dead[0]["reason"].endswith("moved to Quarantine")
    detail = json.loads(dead[0]["detail"])
    assert detail["kept"] == "raw" and detail["message_id"] == "<huge-0001@qq.example>"
    blob = tmp_path / "blobs" / dead[0]["blob_sha256"][:2] / dead[0]["blob_sha256"][2:4] / \
        dead[0]["blob_sha256"]
    assert blob.stat().st_size == detail["size"] > 30_000_000
    assert folder_count(dovecot, mailbox, "Quarantine") == 1
    assert folder_count(dovecot, mailbox, "INBOX") == 0
    assert folder_count(dovecot, mailbox, "Processed") == 1


def test_oversized_beyond_the_hard_cap_keeps_headers_only(
        tmp_path: Path, dovecot: Dovecot, mailbox: str, imap_env: dict[str, str]) -> None:
    dovecot.append(mailbox, [mails.huge(2_000_000)])
    cfg = write_hub_config(tmp_path, dovecot, mailbox, max_message_size="1MB",
                           dead_letter_max_size="1.5MB")
    summary = run(cfg)
    assert summary.ingest[0].dead == 1
    dead = rows(tmp_path, "SELECT reason, blob_sha256 FROM dead_letters")[0]
    assert "only its headers were kept" in dead["reason"]
    kept = (tmp_path / "blobs" / dead["blob_sha256"][:2] / dead["blob_sha256"][2:4]
            / dead["blob_sha256"]).read_bytes()
    assert kept.startswith(b"Content-Type: multipart/mixed") and b"Message-ID: <huge-0001" in kept
    assert len(kept) < 2000
    assert folder_count(dovecot, mailbox, "Quarantine") == 1


def test_seen_mode_flags_and_leaves_mail(tmp_path: Path, dovecot: Dovecot, mailbox: str,
                                         imap_env: dict[str, str]) -> None:
    dovecot.append(mailbox, [mails.gbk_plain(), mails.big5_plain()])
    cfg = write_hub_config(tmp_path, dovecot, mailbox, after_commit="seen")
    assert run(cfg).ingest[0].inserted == 2
    c = dovecot.client(mailbox)
    try:
        c.select_folder("INBOX")
        assert sorted(c.search(["SEEN"])) == sorted(c.search(["ALL"])) and len(c.search()) == 2
    finally:
        c.logout()
    assert run(cfg).ingest[0].inserted == 0  # the UID checkpoint, not \Seen, decides


def test_uidvalidity_change_rescans_without_duplicates(
        tmp_path: Path, dovecot: Dovecot, mailbox: str, imap_env: dict[str, str]) -> None:
    first = [mails.gbk_plain(), mails.big5_plain(), mails.html_only()]
    dovecot.append(mailbox, first, folder="Complaints")
    cfg = write_hub_config(tmp_path, dovecot, mailbox, folders=["Complaints"],
                           after_commit="seen")
    assert run(cfg).ingest[0].inserted == 3
    cp_before = rows(tmp_path, "SELECT value FROM checkpoints")[0]["value"]
    # the folder is recreated (a server migration): new UIDVALIDITY, the same mail again
    c = dovecot.client(mailbox)
    try:
        c.delete_folder("Complaints")
        c.create_folder("Complaints")
    finally:
        c.logout()
    dovecot.append(mailbox, [*first, mails.gb18030_only()], folder="Complaints")
    summary = run(cfg)
    assert summary.ingest[0].inserted == 1 and summary.ingest[0].duplicates == 3
    cp_after = rows(tmp_path, "SELECT value FROM checkpoints")[0]["value"]
    assert json.loads(cp_after)["folders"]["Complaints"]["uidvalidity"] != json.loads(
        cp_before)["folders"]["Complaints"]["uidvalidity"]
    assert len(rows(tmp_path, "SELECT case_id FROM cases")) == 4
    assert len(jsonl_lines(tmp_path / "out" / "cases.jsonl")) == 4


def test_same_message_id_different_bytes_is_a_duplicate(
        tmp_path: Path, dovecot: Dovecot, mailbox: str, imap_env: dict[str, str]) -> None:
    original = mails.gbk_plain()
    # delivered twice (two aliases): a different trace header, the same Message-ID
    copy = b"Received: from mx2.city.example by imap.city.example\r\n" + original
    dovecot.append(mailbox, [original, copy])
    cfg = write_hub_config(tmp_path, dovecot, mailbox)
    summary = run(cfg)
    assert summary.ingest[0].inserted == 2
    assert summary.process.cases_new == 1 and summary.process.ignored == 1
    reason = rows(tmp_path, "SELECT state_reason FROM raw_records WHERE state = 'ignored'")[0][0]
    assert reason.startswith("duplicate: another copy of <gbk-0001@mail.qq.example>")


def test_nothing_is_flagged_or_moved_when_storing_fails(
        tmp_path: Path, dovecot: Dovecot, mailbox: str, imap_env: dict[str, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from outbox.blobs import PackWriter

    dovecot.append(mailbox, [mails.gbk_plain(), mails.big5_plain()])
    cfg = write_hub_config(tmp_path, dovecot, mailbox)

    def disk_full(self: PackWriter, blobs: Any) -> Any:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(PackWriter, "append", disk_full)  # the batch's pack write fails
    summary = run(cfg)
    assert summary.ingest[0].error == "OSError: [Errno 28] No space left on device"
    assert rows(tmp_path, "SELECT COUNT(*) AS n FROM raw_records")[0]["n"] == 0
    c = dovecot.client(mailbox)
    try:
        c.select_folder("INBOX")
        assert len(c.search(["ALL"])) == 2 and c.search(["SEEN"]) == []
    finally:
        c.logout()
    monkeypatch.undo()
    monkeypatch.setenv("IMAP_PASSWORD", dovecot.password)
    assert run(cfg).ingest[0].inserted == 2  # the next run picks them up
    assert folder_count(dovecot, mailbox, "INBOX") == 0


def test_a_failed_move_fails_the_run_and_the_next_run_moves_without_duplicates(
        tmp_path: Path, dovecot: Dovecot, mailbox: str, imap_env: dict[str, str]) -> None:
    dovecot.append(mailbox, [mails.numbered(i) for i in range(7)])
    # the processed folder is missing and may not be created: the MOVE (sent on the
    # acknowledging connection, after the commit) fails
    cfg = write_hub_config(tmp_path, dovecot, mailbox, create_folders=False)
    summary = run(cfg)
    assert summary.ingest[0].inserted == 7
    assert summary.ingest[0].error is not None and "Processed" in summary.ingest[0].error
    assert folder_count(dovecot, mailbox, "INBOX") == 7  # committed, still waiting
    c = dovecot.client(mailbox)
    try:
        c.create_folder("Processed")
    finally:
        c.logout()
    again = run(cfg)
    assert again.ingest[0].error is None and again.ingest[0].inserted == 0
    assert folder_count(dovecot, mailbox, "INBOX") == 0
    assert folder_count(dovecot, mailbox, "Processed") == 7
    assert rows(tmp_path, "SELECT COUNT(*) AS n FROM raw_records")[0]["n"] == 7


def test_moves_are_gathered_across_batches(tmp_path: Path, dovecot: Dovecot, mailbox: str,
                                           imap_env: dict[str, str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from connectors.email.imap import ImapSession

    moves: list[int] = []
    real_move = ImapSession.move

    def counting_move(self: ImapSession, uids: Any, target: str) -> None:
        moves.append(len(uids))
        real_move(self, uids, target)

    monkeypatch.setattr(ImapSession, "move", counting_move)
    dovecot.append(mailbox, [mails.numbered(i) for i in range(12)])
    cfg = write_hub_config(tmp_path, dovecot, mailbox, batch_size=2, ack_every=5)
    summary = run(cfg)
    assert summary.ingest[0].inserted == 12 and summary.ingest[0].batches == 6
    assert moves == [6, 6]  # 3 batches gathered per MOVE (>= 5 waiting), not 6 MOVEs
    assert folder_count(dovecot, mailbox, "Processed") == 12
