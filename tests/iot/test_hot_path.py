"""The MQTT hot path: the straight-line ChirpStack decoder, packed records and the decode-ahead
thread give what the general code gives (no broker needed; the broker tests are in
test_mqtt_overlap.py)."""

from __future__ import annotations

import itertools
import json
import threading
import time
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import pytest

from connectors.base import PackedRecords, payload_json
from connectors.iot.config import MqttConfig
from connectors.iot.connector import MqttConnector
from connectors.iot.decoders import DecodeError
from connectors.iot.prefetch import prefetch
from normalizer.case import Channel
from outbox.store.sql import _dumps
from outbox.store.timefmt import ts

NOW = datetime(2026, 11, 24, 12, tzinfo=timezone.utc)


def connector(**sub: Any) -> MqttConnector:
    cfg = MqttConfig(name="lights", host="h", client_id="c",
                     subscriptions=[{"topic": "t/#", "decoder": "chirpstack", **sub}])
    return MqttConnector(cfg)


def outcome(fn: Any, *args: Any) -> Any:
    try:
        return ("ok", fn(*args))
    except DecodeError as exc:
        return ("error", str(exc))


def chirpstack_variants() -> list[bytes]:
    """Uplinks with every field present, absent, empty or of a wrong type."""
    infos: list[Any] = [{"devEui": "a840410000000101"}, {"devEui": "  A84041  "}, {"devEui": ""},
                        {"devEui": 7}, {"devEui": True}, {"devEui": "x" * 201}, {}, None, "s"]
    dedups: list[Any] = ["3ac7e3c4", 12, 0, "", None, 1.5, ["l"], True]
    times: list[Any] = ["2026-11-24T20:01:02.123456789Z", "2026-11-24T20:01:02+08:00", None,
                        1764000000, 1764000000123, "yesterday", True]
    objects: list[Any] = [{"fault": "lamp_failure", "power_w": 0.0}, {"fault": ["E9", "ok"]},
                          {"fault": "ok"}, {"fault": ""}, {"fault": 3}, {"fault": True},
                          {"fault": {"x": 1}}, {"fault": None, "v": 1}, {"power_w": 78.5},
                          {}, None, [1], "o"]
    extras: list[dict[str, Any]] = [{"fCnt": 42, "fPort": 10}, {"fCnt": None},
                                    {"data": "AQID"}, {"data": "", "fPort": 0}, {}]
    out = []
    for info, dedup, t, obj, extra in itertools.product(infos, dedups, times, objects, extras):
        doc: dict[str, Any] = {"deviceInfo": info, "deduplicationId": dedup, "time": t,
                               "object": obj, **extra}
        out.append(json.dumps(doc).encode())
    # absent keys rather than nulls, garbage
    out += [b'{"deviceInfo": {"devEui": "d1"}}', b'{"deviceInfo": {"devEui": "d1"}, '
            b'"object": {"fault": "E1"}, "data": "AA=="}', b"[]", b"{", b"\xff", b"null"]
    # what the msgspec fast path must read as orjson (or json, for big integers) does
    ok = (b'{"deviceInfo": {"devEui": "d1", "x": [1, {"y": null}]}, "deduplicationId": "e1", '
          b'"time": "2026-11-24T20:01:02.5Z"')
    big = b"123456789012345678901234567890"
    for tail in [b"", b', "time": "2026-11-24T20:01:03Z"', b', "deviceInfo": {"devEui": "d2"}',
                 b', "object": {"fault": "E1", "fault": "ok", "n": ' + big + b"}",
                 b', "object": {"fault": "E1", "n": [-' + big + rb', 1.5e300, "\u00e9"]}',
                 b', "fCnt": ' + big, b', "fCnt": 1.0', b', "fCnt": true', b', "fPort": "10"',
                 b', "data": 5', b', "data": ""', b', "object": {"v": 1}, "data": "AQ=="',
                 rb', "rxInfo": [{"name": "\u8def\u706f", "s": "\ud83d\ude00"}]',
                 b', "tags": "caf\xc3\xa9 \xe8\xb7\xaf"', b', "tags": "\xff\xfe"',
                 b', "\xff": 1', rb', "x": "\ud800"', rb', "x": "\q"', b', "x": [1, 2,]',
                 b', "x": NaN', b', "x": 01', b', "x": "a\x01b"',
                 b', "x": ' + b"[" * 3000 + b"]" * 3000,
                 b', "object": {"fault": ["E1"]}', b', "object": {"fault": 7}',
                 b', "object": {"fault": {"a": 1}}', b', "object": []', b', "object": null',
                 b', "deduplicationId": 7', b', "time": 1764000000', b', "time": "2026-11-24"']:
        out.append(ok + tail + b"}")
    out += [ok + b"} x", b"\xef\xbb\xbf" + ok + b"}",
            ok.replace(b'"d1"', rb'"\u0064\u0031"') + b"}",
            ok.replace(b'"d1"', b'"  "') + b"}", ok.replace(b'"e1"', b'""') + b"}"]
    return out


@pytest.mark.parametrize("sub", [{}, {"codes": {"E9": "relay_failure", "ok": "clear:cycling"}},
                                 {"fields": {"fault": "alarm"}}])
def test_straight_line_chirpstack_decoder_matches_the_general_one(sub: dict[str, Any]) -> None:
    dec = connector(**sub).decoders[0][1]
    assert dec._chirpstack_plain
    payloads = chirpstack_variants()
    if sub.get("fields"):
        payloads = [p.replace(b'"fault"', b'"alarm"') for p in payloads]
    for payload in payloads:
        assert outcome(dec.decode, "t/x", payload) == outcome(
            dec.decode_general, "t/x", payload), payload
    assert sum(dec._chirpstack(p) is not None for p in payloads) > 50  # the fast path ran


def test_fast_path_takes_the_common_uplink() -> None:
    dec = connector().decoders[0][1]
    payload = json.dumps({"deviceInfo": {"devEui": "d"}, "deduplicationId": "e",
                          "time": "2026-11-24T20:01:02Z", "object": {"v": 1}}).encode()
    assert dec._chirpstack(payload) == dec.decode_general("t/x", payload)


def test_numbers_beyond_doubles_in_fields_not_read_are_accepted_by_the_fast_path() -> None:
    """The one documented difference: orjson refuses 1e400 anywhere, msgspec only where it
    reads the value; the fast path stores such an uplink (the raw text is kept)."""
    dec = connector().decoders[0][1]
    payload = (b'{"deviceInfo": {"devEui": "d"}, "deduplicationId": "e", "time": '
               b'"2026-11-24T20:01:02Z", "rxInfo": [{"rssi": 1e400}], "object": {"v": 1}}')
    assert dec.decode("t/x", payload)["device_id"] == "d"
    with pytest.raises(DecodeError, match="not valid JSON"):
        dec.decode_general("t/x", payload)


def test_field_paths_use_the_general_decoder() -> None:
    for sub in ({"fields": {"device_id": "deviceInfo.devName"}},
                {"fields": {"fault": "object.a.b"}}, {"decoder": "tts"}):
        assert not connector(**sub).decoders[0][1]._chirpstack_plain


def test_payload_json_is_what_the_store_writes() -> None:
    values = [{"topic": "a/b", "qos": 1, "report": {"v": [1, 2.5, -0.0, 1e-7, None, True]},
               "payload_text": '{"路灯": "\u2028 \\"q\\"\\n"}'},
              {"s": "\ud800"}, {"big": 2**70}, {"d": Decimal("1.10"), "t": NOW, 3: "k"}]
    for value in values:
        assert payload_json(value) == _dumps(value)


def test_packed_batch_reads_back_as_the_records_to_record_builds() -> None:
    c = connector()
    payloads = [json.dumps({"deviceInfo": {"devEui": f"d{i}"}, "deduplicationId": str(i),
                            "time": "2026-11-24T20:01:02Z", "object": {"fault": "E1"}}).encode()
                for i in range(3)] + [b"garbage"]
    rx = NOW.timestamp()
    msgs = [(1, i + 1, 1, b"t/x", p, rx, i == 2) for i, p in enumerate(payloads)]
    batch = c._batch(msgs)
    assert isinstance(batch.records, PackedRecords)
    assert len(batch.records) == 3 and len(batch.rejects) == 1
    assert batch.ack_token == [(1, [1, 2, 3, 4])]
    expected = [c.to_record("t/x", p, NOW, retain=i == 2) for i, p in enumerate(payloads[:3])]
    assert list(batch.records) == expected
    assert batch.records[1:] == expected[1:]
    assert batch.records.rows[0] == (expected[0].source_ref, ts(NOW),
                                     _dumps(expected[0].payload))


def test_packed_records_commit_like_a_list(tmp_path: Any) -> None:
    from outbox.blobs import BlobStore
    from outbox.store import open_store

    c = connector()
    payloads = [json.dumps({"deviceInfo": {"devEui": "d"}, "deduplicationId": str(i % 3),
                            "object": {"v": i}}).encode() for i in range(5)]
    msgs = [(1, i + 1, 1, b"t/x", p, NOW.timestamp(), False) for i, p in enumerate(payloads)]
    stores = []
    for name, records in (("packed", c._batch(msgs).records),
                          ("list", [c.to_record("t/x", p, NOW) for p in payloads])):
        store = open_store(f"sqlite:///{tmp_path / name}.db", BlobStore(tmp_path / name))
        res = store.commit_ingest("lights", records)
        assert (res.inserted, res.duplicates, len(res.raw_ids or [])) == (3, 2, 3)
        stores.append(store.query("SELECT source, channel, source_ref, received_at, payload, "
                                  "attachments, raw_blob, state FROM raw_records ORDER BY id"))
        store.close()
    assert stores[0] == stores[1]
    assert PackedRecords("s", Channel.iot).rows == []


# ------------------------------------------------------------------ prefetch
def test_prefetch_keeps_order_and_runs_ahead() -> None:
    produced: list[int] = []

    def items() -> Any:
        for i in range(5):
            produced.append(i)
            yield i

    ahead = prefetch(items(), "t")
    assert next(ahead) == 0
    deadline = time.monotonic() + 5
    while len(produced) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert produced == [0, 1, 2]  # one waiting in the queue, one in the worker's hand
    assert list(ahead) == [1, 2, 3, 4]


def test_prefetch_raises_the_workers_error_in_the_consumer() -> None:
    def items() -> Any:
        yield 1
        raise RuntimeError("decoder bug")

    ahead = prefetch(items(), "t")
    assert next(ahead) == 1
    with pytest.raises(RuntimeError, match="decoder bug"):
        next(ahead)


def test_prefetch_stops_and_closes_the_source_when_the_consumer_stops() -> None:
    closed = threading.Event()
    names: list[str] = []

    def items() -> Any:
        names.append(threading.current_thread().name)
        try:
            yield from itertools.count()
        finally:
            closed.set()

    ahead = prefetch(items(), "decode-ahead")
    assert next(ahead) == 0
    ahead.close()  # returns only once the worker has ended
    assert closed.is_set() and names == ["decode-ahead"]
    assert not any(t.name == "decode-ahead" for t in threading.enumerate())


def test_packed_records_read_back_integers_beyond_64_bits_exactly() -> None:
    c = connector()
    big = 98765432109876543210987654321
    payload = json.dumps({"deviceInfo": {"devEui": "d"}, "deduplicationId": "1",
                          "object": {"fault": "E1", "n": big}}).encode()
    batch = c._batch([(1, 1, 1, b"t/x", payload, NOW.timestamp(), False)])
    rec = batch.records[0]
    assert rec.payload["report"]["values"]["n"] == big
    assert type(rec.payload["report"]["values"]["n"]) is int
    assert rec == c.to_record("t/x", payload, NOW)


def test_ack_token_is_the_packet_ids_in_runs_of_one_connection() -> None:
    c = connector()
    good = json.dumps({"deviceInfo": {"devEui": "d"}, "deduplicationId": "e"}).encode()
    rx = NOW.timestamp()
    msgs = [(1, 5, 1, b"t/x", good, rx, False), (1, 0, 0, b"t/x", good, rx, False),
            (1, 7, 1, b"t/x", b"garbage", rx, False), (2, 1, 1, b"t/x", good, rx, False),
            (2, 2, 1, b"t/x", good, rx, False)]
    batch = c._batch(msgs)
    assert batch.ack_token == [(1, [5, 7]), (2, [1, 2])]  # QoS 0 needs no PUBACK
    assert len(batch.records) == 4 and len(batch.rejects) == 1
