"""The jsonl sink: one line per idempotency key, even across crashes and instances."""

from __future__ import annotations

import json
from pathlib import Path

from outbox.sinks.base import Delivery
from outbox.sinks.jsonl import JsonlSink, JsonlSinkConfig


def delivery(key: str) -> Delivery:
    return Delivery(outbox_id=1, kind="case", idempotency_key=key,
                    case={"title": "路灯不亮", "reference": "FB-20261124-000001"})


def test_same_key_is_written_once_across_instances(tmp_path: Path) -> None:
    cfg = JsonlSinkConfig(name="f", path="out/cases.jsonl")
    a, b = JsonlSink(cfg, tmp_path), JsonlSink(cfg, tmp_path)
    assert a.deliver(delivery("k1")).remote_id == "line:1"
    again = b.deliver(delivery("k1"))  # another process after a crash before the receipt
    assert again.detail == {"already_present": True} and again.remote_id == "line:1"
    assert b.deliver(delivery("k2")).remote_id == "line:2"
    lines = (tmp_path / "out" / "cases.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(x)["idempotency_key"] for x in lines] == ["k1", "k2"]
    assert json.loads(lines[0])["case"]["title"] == "路灯不亮"


def test_torn_last_line_from_a_crash_is_not_counted(tmp_path: Path) -> None:
    path = tmp_path / "cases.jsonl"
    path.write_bytes(b'{"idempotency_key": "k1"}\n{"idempotency_key": "k2", "ca')
    sink = JsonlSink(JsonlSinkConfig(name="f", path=str(path)))
    sink.deliver(delivery("k2"))
    lines = path.read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[-1])["idempotency_key"] == "k2"
    assert sum(1 for x in lines if x.startswith('{"idempotency_key":"k2"')) == 1
