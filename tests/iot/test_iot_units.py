"""Decoders, fault codes, registry and config: no broker needed."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
from pydantic import ValidationError

from connectors.base import payload_json
from connectors.iot.config import MqttConfig
from connectors.iot.connector import MqttConnector
from connectors.iot.decoders import DecodeError, parse_time
from normalizer.iot.faults import classify_codes
from normalizer.iot.registry import DeviceRegistry
from tests.iot.test_mqtt_pipeline import CHIRPSTACK, TTS

NOW = datetime(2026, 11, 24, 12, tzinfo=timezone.utc)


def connector(**sub) -> MqttConnector:
    cfg = MqttConfig(name="lights", host="h", client_id="c",
                     subscriptions=[{"topic": "t/#", **sub}])
    return MqttConnector(cfg)


def test_json_decoder_with_field_mapping_and_codes() -> None:
    c = connector(fields={"device_id": "dev.id", "event_id": "seq", "time": "ts",
                          "fault": "alarm", "values": "m"}, codes={"A7": "relay_failure"})
    body = {"dev": {"id": "SL-9"}, "seq": 5, "ts": 1764000000, "alarm": ["A7", "Z9"],
            "m": {"v": 230}}
    rec = c.to_record("t/x", json.dumps(body).encode(), NOW)
    rep = rec.payload["report"]
    assert rec.source_ref == "SL-9:5"
    assert rep["status"] == "fault" and rep["faults"] == ["relay_failure", "other"]
    assert rep["unknown_codes"] == ["Z9"] and rep["values"] == {"v": 230}
    assert rep["time"].startswith("2025-11-24T16:00:00")


def test_payload_hash_when_no_event_id_is_stable() -> None:
    c = connector()
    a = c.to_record("t/x", b'{"device_id": "d1", "time": "2026-11-24T01:00:00Z"}', NOW)
    b = c.to_record("t/x", b'{"device_id": "d1", "time": "2026-11-24T01:00:00Z"}', NOW)
    other = c.to_record("t/x", b'{"device_id": "d1", "time": "2026-11-24T01:00:01Z"}', NOW)
    assert a.source_ref == b.source_ref != other.source_ref
    assert a.payload["report"]["status"] == "heartbeat"


def test_chirpstack_and_tts_formats() -> None:
    cs = connector(decoder="chirpstack").to_record("t/x", json.dumps(CHIRPSTACK).encode(), NOW)
    assert cs.source_ref == "a840410000000001:3ac7e3c4-4401-4b8d-9386-a5c902f9202d"
    assert cs.payload["report"]["faults"] == ["lamp_failure"]
    assert cs.payload["report"]["time"] == "2026-11-24T20:01:02.123456+00:00"
    assert cs.payload["report"]["lorawan"]["fCnt"] == 42
    tts = connector(decoder="tts").to_record("t/x", json.dumps(TTS).encode(), NOW)
    assert tts.source_ref == "0004A30B001C0530:as:up:01HZX4Q8B8K2C3D4E5F6G7H8J9"
    assert tts.payload["report"]["faults"] == ["supply_loss"]
    with pytest.raises(DecodeError, match="ChirpStack"):
        connector(decoder="chirpstack").to_record("t/x", json.dumps(TTS).encode(), NOW)


@pytest.mark.parametrize("payload,reason", [
    (b"\xff\x00", "not UTF-8"), (b"{", "not valid JSON"), (b"3", "JSON object"),
    (b'{"device_id": ""}', "device_id"), (b'{"device_id": "a", "time": "yesterday"}', "time"),
    (b'{"device_id": "a", "fault": {"x": 1}}', "fault"),
])
def test_garbage_is_rejected_with_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        connector().to_record("t/x", payload, NOW)


def test_codes_classification() -> None:
    assert classify_codes(["ok"], {}, False).status == "clear"
    assert classify_codes(["CLR1"], {"CLR1": "clear:lamp_failure"}, False).cleared == [
        "lamp_failure"]
    assert classify_codes([], {}, True).status == "telemetry"
    assert classify_codes([], {}, False).status == "heartbeat"
    assert classify_codes(["LampFailure"], {}, False).faults == ["lamp_failure"]


def test_parse_time_forms() -> None:
    assert parse_time("2026-11-24T20:01:02.123456789Z") == "2026-11-24T20:01:02.123456+00:00"
    assert parse_time("2026-11-24T20:01:02+08:00") == "2026-11-24T12:01:02.000000+00:00"
    assert parse_time(None) is None


def test_registry_csv_and_yaml(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("device_id,asset_id,lat,lon,street,interval\n"
                                    "ABC,P1,31.2,121.4,幸福路,15m\n", encoding="utf-8")
    reg = DeviceRegistry.load(tmp_path / "d.csv")
    dev = reg.get("abc")
    assert dev is not None and dev.asset_id == "P1" and dev.interval == 900
    (tmp_path / "d.yaml").write_text("devices:\n  - {device_id: X1, address: 人民路1号}\n",
                                     encoding="utf-8")
    assert DeviceRegistry.load(tmp_path / "d.yaml").get("x1").address == "人民路1号"
    (tmp_path / "bad.csv").write_text("device_id,lat\nA,north\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.csv entry 1: lat must be a number"):
        DeviceRegistry.load(tmp_path / "bad.csv")


def test_config_errors_name_the_problem() -> None:
    with pytest.raises(ValidationError, match="unknown target"):
        MqttConfig(name="x", host="h", client_id="c",
                   subscriptions=[{"topic": "t", "codes": {"E1": "broken"}}])
    with pytest.raises(ValidationError, match="unknown fault names"):
        MqttConfig(name="x", host="h", client_id="c", subscriptions=[{"topic": "t"}],
                   faults={"lamp": {"reports": 2}})
    with pytest.raises(ValidationError, match="function"):
        MqttConfig(name="x", host="h", client_id="c",
                   subscriptions=[{"topic": "t", "decoder": "function"}])


def test_unreachable_broker_fails_the_run_with_a_clear_error(tmp_path: Path) -> None:
    from connectors.base import IngestContext
    from connectors.iot.demo_replay import free_port
    from outbox.blobs import BlobStore

    cfg = MqttConfig(name="x", host="127.0.0.1", port=free_port(), client_id="c",
                     connect_timeout=1, subscriptions=[{"topic": "t"}])
    ctx = IngestContext(blobs=BlobStore(tmp_path), checkpoint=None, now=NOW)
    with pytest.raises(ConnectionError, match="cannot reach MQTT broker"):
        list(MqttConnector(cfg).fetch(ctx))


def test_trusted_raw_is_the_validated_record() -> None:
    from connectors.base import RawRecord, trusted_raw
    from normalizer.case import Channel

    fields = {"source": "lights", "channel": Channel.iot, "source_ref": "d:1",
              "received_at": NOW, "payload": {"report": {"device_id": "d"}}}
    rec = trusted_raw(**fields)
    assert rec == RawRecord(**fields)
    assert rec.model_dump() == RawRecord(**fields).model_dump()
    assert rec.model_fields_set == RawRecord.model_construct(**fields, attachments=[],
                                                             raw_blob=None).model_fields_set


BIG = 123456789012345678901234567890


@pytest.mark.parametrize("sub,body", [
    ({}, {"device_id": "d", "event_id": BIG, "fault": "E1", "values": {"n": [BIG, -BIG]}}),
    ({}, {"device_id": BIG, "event_id": 1, "fault": BIG, "values": {"n": 1.5}}),
    ({"fields": {"values": "m"}}, {"device_id": "d", "fault": "E1", "m": {"x": {"y": BIG}}}),
    ({"decoder": "chirpstack"}, {"deviceInfo": {"devEui": "a1"}, "deduplicationId": BIG,
                                 "fCnt": BIG, "object": {"fault": "E1", "n": BIG}}),
    ({"decoder": "chirpstack"}, {"deviceInfo": {"devEui": BIG}, "deduplicationId": "e",
                                 "time": "2026-11-24T20:01:02Z", "object": {"fault": BIG}}),
    ({"decoder": "chirpstack", "fields": {"device_id": "deviceInfo.devName"}},
     {"deviceInfo": {"devName": "p"}, "deduplicationId": "e", "fPort": BIG, "object": {}}),
    ({"decoder": "tts"}, {"end_device_ids": {"dev_eui": "e1"},
                          "received_at": "2026-11-24T20:05:00Z",
                          "uplink_message": {"f_cnt": BIG, "decoded_payload": {"fault": "E1",
                                                                               "v": -BIG}}}),
    ({}, {"device_id": "d", "fault": "E1", "values": {"f": 1e300, "g": -1e19}}),
])
def test_integers_beyond_64_bits_decode_as_json_reads_them(sub: dict, body: dict) -> None:
    c = connector(**sub)
    payload = json.dumps(body).encode()
    dec = c.decoders[0][1]
    # what the decoder would give if the JSON were read by the json module throughout
    exact = dec._from_doc(json.loads(payload))[0]
    assert dec.decode("t/x", payload) == exact
    rec = c.to_record("t/x", payload, NOW)
    assert rec.payload["report"] == exact
    assert json.loads(payload_json(rec.payload))["report"] == exact


def test_floats_stay_floats_and_ordinary_payloads_skip_the_second_parse(monkeypatch) -> None:
    import connectors.iot.decoders as decoders

    def no_second_parse(payload: bytes) -> dict:
        raise AssertionError("parsed twice")

    monkeypatch.setattr(decoders, "_exact_object", no_second_parse)
    cs = connector(decoder="chirpstack").decoders[0][1]
    rep = cs.decode("t/x", json.dumps(CHIRPSTACK).encode())
    assert rep["values"] == {"power_w": 0.0, "lamp_on": False}
    js = connector().decoders[0][1]
    rep = js.decode("t/x", b'{"device_id": "d", "fault": "E1", "values": {"a": 9.2e18, '
                           b'"b": 9223372036854775807, "c": -9223372036854775808}}')
    assert rep["values"] == {"a": 9.2e18, "b": 2**63 - 1, "c": -2**63}


@pytest.mark.parametrize("value", [10**25, -10**25, 1e300])
def test_epoch_times_out_of_range_are_decode_errors(value: float) -> None:
    with pytest.raises(DecodeError, match="out of range"):
        parse_time(value)
    payload = json.dumps({"device_id": "d", "time": value}).encode()
    with pytest.raises(DecodeError, match="time"):
        connector().to_record("t/x", payload, NOW)
