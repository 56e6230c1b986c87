"""The jsonfile connector on real files: batches, quarantine, reparse."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from connectors.base import IngestContext, ReparseError
from connectors.jsonfile import JsonFileConfig, JsonFileConnector
from outbox.blobs import BlobStore


def ctx(tmp_path: Path) -> IngestContext:
    return IngestContext(blobs=BlobStore(tmp_path / "blobs"), checkpoint=None,
                         now=datetime(2026, 11, 24, tzinfo=timezone.utc))


def connector(tmp_path: Path, **kw) -> JsonFileConnector:
    (tmp_path / "in").mkdir(exist_ok=True)
    return JsonFileConnector(JsonFileConfig(name="up", path="in", **kw), tmp_path)


def test_undecodable_file_is_quarantined_with_a_reason_file(tmp_path: Path) -> None:
    conn = connector(tmp_path)
    (tmp_path / "in" / "gbk.json").write_bytes('{"title": "路灯"}'.encode("gbk"))
    (tmp_path / "in" / "ok.ndjson").write_text('{"id": 7, "title": "积水"}\n', encoding="utf-8")
    batches = list(conn.fetch(ctx(tmp_path)))
    assert [len(b.records) for b in batches] == [0, 1]
    assert "not UTF-8 text" in batches[0].rejects[0].reason
    for b in batches:
        conn.ack(b)
    assert (tmp_path / "in" / "quarantine" / "gbk.json").exists()
    reason = (tmp_path / "in" / "quarantine" / "gbk.json.reason.txt").read_text(encoding="utf-8")
    assert "not UTF-8 text" in reason
    assert (tmp_path / "in" / "done" / "ok.ndjson").exists()
    assert batches[1].records[0].source_ref == "id:7"


def test_oversized_file_and_record_limits(tmp_path: Path) -> None:
    conn = connector(tmp_path, max_file_size="1KB", max_record_size=200)
    (tmp_path / "in" / "big.json").write_text("[" + ",".join(["{}"] * 600) + "]")
    (tmp_path / "in" / "lines.ndjson").write_text(
        '{"id": 1, "title": "' + "长" * 100 + '"}\n{"id": 2, "title": "短"}\n', encoding="utf-8")
    big, lines = list(conn.fetch(ctx(tmp_path)))
    assert "over max_file_size 1000" in big.rejects[0].reason
    assert [r.source_ref for r in lines.records] == ["id:2"]
    assert "over max_record_size 200" in lines.rejects[0].reason


def test_records_without_id_get_a_content_hash_and_non_objects_are_rejected(
        tmp_path: Path) -> None:
    conn = connector(tmp_path)
    (tmp_path / "in" / "a.json").write_text('[{"title": "x"}, {"title": "x"}, 5]')
    (batch,) = list(conn.fetch(ctx(tmp_path)))
    refs = [r.source_ref for r in batch.records]
    assert refs[0] == refs[1] and refs[0].startswith("sha256:")
    assert batch.rejects[0].reason == "a.json#3: expected a JSON object, got int"


def test_reparse_accepts_corrected_bytes_and_refuses_garbage(tmp_path: Path) -> None:
    conn = connector(tmp_path)
    now = datetime(2026, 11, 24, tzinfo=timezone.utc)
    recs = conn.reparse('{"id": "A1", "title": "井盖"}'.encode(), None, now)
    assert recs[0].source_ref == "id:A1"
    with pytest.raises(ReparseError):
        conn.reparse(b'{"id": ', None, now)
