"""MQTT → episodes → cases, against a real Mosquitto (started per test)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from connectors.iot.demo_replay import Mosquitto
from hub.config import load_config
from hub.pipeline import Hub, run_once
from tests.conftest import jsonl_lines
from tests.iot.conftest import report, send, write_hub_config

pytestmark = pytest.mark.integration


def run(cfg: Path):
    with Hub(load_config(str(cfg))) as hub:
        summary = run_once(hub)
        assert not summary.connector_errors, summary.ingest
        return summary


def prime(cfg: Path) -> None:
    """Create the persistent session (the broker queues for it from now on)."""
    run(cfg)


def cases(tmp: Path) -> list[dict]:
    return [x for x in jsonl_lines(tmp / "out" / "cases.jsonl") if x["kind"] == "case"]


def updates(tmp: Path) -> list[dict]:
    return [x for x in jsonl_lines(tmp / "out" / "cases.jsonl") if x["kind"] == "update"]


@pytest.mark.parametrize("client", ["native", "paho"])
def test_fault_persists_then_clears_then_new_episode(tmp_path: Path, broker: Mosquitto,
                                                     client: str) -> None:
    cfg = write_hub_config(tmp_path, broker, client=client)
    prime(cfg)
    # a heartbeat, one fault report (pending), a second (case), a third (update, not delivered)
    send(broker, [report("SL-001", 1), report("SL-001", 2, "E01"), report("SL-001", 3, "E01"),
                  report("SL-001", 4, "E01")])
    s = run(cfg)
    assert s.ingest[0].inserted == 4
    got = cases(tmp_path)
    assert len(got) == 1
    case = got[0]["case"]
    assert case["kind"] == "device_fault"
    assert "灯具故障" in case["title"] and "P-001" in case["title"]
    assert case["location"]["address"] == "幸福路1号"
    assert case["location"]["source"] == "device_registry"
    assert case["extra"]["fault"] == "lamp_failure"
    assert updates(tmp_path) == []  # the count bump is recorded, not delivered
    # clear → restored update; a new fault after it opens a new episode (and a new case)
    send(broker, [report("SL-001", 5, "OK"), report("SL-001", 6, "E01"),
                  report("SL-001", 7, "E01")])
    run(cfg)
    ups = updates(tmp_path)
    assert len(ups) == 1 and ups[0]["update"]["kind"] == "restored"
    assert "restored at" in ups[0]["update"]["text"]
    assert ups[0]["case"]["case_id"] == case["case_id"]
    got = cases(tmp_path)
    assert len(got) == 2 and got[1]["case"]["case_id"] != case["case_id"]
    # reprocessing the same input changes nothing
    run(cfg)
    assert len(jsonl_lines(tmp_path / "out" / "cases.jsonl")) == 3


def test_flapping_lamp_is_suppressed_then_becomes_cycling(tmp_path: Path,
                                                          broker: Mosquitto) -> None:
    cfg = write_hub_config(tmp_path, broker, flapping={"transitions": 4, "window": "1h"})
    prime(cfg)
    msgs = []
    for i in range(3):  # fault/clear/fault/clear...: never two faults in a row
        msgs += [report("SL-002", 10 + 2 * i, "E01"), report("SL-002", 11 + 2 * i, "OK")]
    send(broker, msgs)
    run(cfg)
    assert cases(tmp_path) == []  # suppressed: nothing reached the sink
    send(broker, [report("SL-002", 20, "E01"), report("SL-002", 21, "OK")])
    run(cfg)
    got = cases(tmp_path)
    assert len(got) == 1 and got[0]["case"]["extra"]["fault"] == "cycling"
    assert "闪烁" in got[0]["case"]["title"]


def test_unknown_device_and_garbage(tmp_path: Path, broker: Mosquitto) -> None:
    cfg = write_hub_config(tmp_path, broker)
    prime(cfg)
    send(broker, [report("XX-999", 1, "E02"), report("XX-999", 2, "E02"),
                  ("city/lights/x/report", b"\xff\xfe not json", 1),
                  ("city/lights/x/report", b'{"no_device": true}', 1),
                  ("city/lights/x/report", b"[1, 2]", 1)])
    s = run(cfg)
    assert s.ingest[0].inserted == 2 and s.ingest[0].dead == 3
    got = cases(tmp_path)
    assert len(got) == 1
    case = got[0]["case"]
    assert case["review"]["needs_review"] is True
    assert any(f["code"] == "unknown_device" for f in case["review"]["flags"])
    assert case["location"]["device_id"] == "XX-999"
    with Hub(load_config(str(cfg))) as hub:
        dead = hub.store.dead_letters()
        assert len(dead) == 3
        blobs = [hub.blobs.read(d["blob_sha256"]) for d in dead]
        reasons = " | ".join(d["reason"] for d in dead)
    assert "not UTF-8" in reasons and "device_id" in reasons and "JSON object" in reasons
    assert b"\xff\xfe not json" in blobs  # the raw bytes are kept


CHIRPSTACK = {
    "deduplicationId": "3ac7e3c4-4401-4b8d-9386-a5c902f9202d",
    "time": "2026-11-24T20:01:02.123456789Z",
    "deviceInfo": {"tenantId": "52f14cd4-c6f1-4fbd-8f87-4025e1d49242", "tenantName": "City",
                   "applicationId": "17c82e96-be03-4f38-aef3-f83d48582d97",
                   "applicationName": "streetlights", "deviceProfileId": "x",
                   "deviceProfileName": "lamp-controller", "deviceName": "pole-101",
                   "devEui": "a840410000000001", "tags": {}},
    "devAddr": "01e2f3a4", "adr": True, "dr": 5, "fCnt": 42, "fPort": 10, "confirmed": False,
    "data": "AQID", "object": {"fault": "lamp_failure", "power_w": 0.0, "lamp_on": False},
    "rxInfo": [{"gatewayId": "0016c001f153a14c", "rssi": -57, "snr": 10.5}],
    "txInfo": {"frequency": 868100000, "modulation": {"lora": {"bandwidth": 125000}}},
}
TTS = {
    "end_device_ids": {"device_id": "pole-201", "application_ids": {"application_id": "city"},
                       "dev_eui": "0004A30B001C0530", "join_eui": "800000000000000C",
                       "dev_addr": "00BCB929"},
    "correlation_ids": ["as:up:01HZX4Q8B8K2C3D4E5F6G7H8J9", "rpc:/ttn.lorawan.v3.AppAs/x"],
    "received_at": "2026-11-24T20:05:00.123456789Z",
    "uplink_message": {"session_key_id": "AXBSH1Pk6Z0G166", "f_port": 15, "f_cnt": 7,
                       "frm_payload": "AQ==",
                       "decoded_payload": {"fault": "supply_loss", "voltage": 0},
                       "rx_metadata": [{"gateway_ids": {"gateway_id": "gw1"}, "rssi": -42}],
                       "settings": {"data_rate": {"lora": {"bandwidth": 125000}}},
                       "received_at": "2026-11-24T20:05:00.100000000Z"},
}


def test_chirpstack_and_tts_uplinks(tmp_path: Path, broker: Mosquitto) -> None:
    cfg = write_hub_config(tmp_path, broker, faults={"default": {"reports": 1, "seconds": 0}})
    prime(cfg)
    cs_topic = "application/17c82e96-be03-4f38-aef3-f83d48582d97/device/a840410000000001/event/up"
    send(broker, [(cs_topic, json.dumps(CHIRPSTACK).encode(), 1),
                  (cs_topic, json.dumps(CHIRPSTACK).encode(), 1),  # a re-publish: same event
                  ("v3/city@ttn/devices/pole-201/up", json.dumps(TTS).encode(), 1)])
    s = run(cfg)
    assert s.ingest[0].inserted == 2 and s.ingest[0].duplicates == 1
    got = {c["case"]["extra"]["fault"]: c["case"] for c in cases(tmp_path)}
    assert set(got) == {"lamp_failure", "supply_loss"}
    assert got["lamp_failure"]["location"]["asset_id"] == "P-101"
    assert got["supply_loss"]["location"]["asset_id"] == "P-201"  # upper-case EUI matched
    with Hub(load_config(str(cfg))) as hub:
        refs = {r["source_ref"] for r in hub.store.query("SELECT source_ref FROM raw_records")}
    assert "a840410000000001:3ac7e3c4-4401-4b8d-9386-a5c902f9202d" in refs
    assert "0004A30B001C0530:as:up:01HZX4Q8B8K2C3D4E5F6G7H8J9" in refs


def test_user_decoder_for_binary_payloads(tmp_path: Path, broker: Mosquitto) -> None:
    cfg = write_hub_config(
        tmp_path, broker, faults={"default": {"reports": 1, "seconds": 0}},
        subscriptions=[{"topic": "bin/+", "decoder": "function",
                        "function": "tests.iot.binary_decoder:decode",
                        "codes": {"1": "lamp_failure", "0": "clear"}}])
    prime(cfg)
    send(broker, [("bin/SL-004", bytes([0x01, 0x00, 0x07, 0x01]), 1),
                  ("bin/SL-004", b"\x02", 1)])  # too short: dead letter
    s = run(cfg)
    assert s.ingest[0].inserted == 1 and s.ingest[0].dead == 1
    got = cases(tmp_path)
    assert len(got) == 1 and got[0]["case"]["location"]["street"] == "和平街"
    with Hub(load_config(str(cfg))) as hub:
        row = hub.store.query("SELECT payload FROM raw_records")[0]
    assert json.loads(row["payload"])["payload_b64"] == base64.b64encode(
        bytes([1, 0, 7, 1])).decode()


def test_three_lamps_out_on_one_street_is_urgent(tmp_path: Path, broker: Mosquitto) -> None:
    cfg = write_hub_config(tmp_path, broker, faults={"default": {"reports": 1, "seconds": 0}})
    prime(cfg)
    send(broker, [report("SL-001", 1, "E01"), report("SL-002", 1, "E01"),
                  report("SL-004", 1, "E01")])
    run(cfg)
    send(broker, [report("SL-003", 1, "E01")])
    run(cfg)
    by_dev = {c["case"]["extra"]["device_id"]: c["case"] for c in cases(tmp_path)}
    assert by_dev["SL-003"]["urgency"]["level"] == "urgent"
    assert "幸福路" in " ".join(by_dev["SL-003"]["urgency"]["reasons"])
    assert by_dev["SL-001"]["urgency"]["level"] == "normal"
    assert by_dev["SL-004"]["urgency"]["level"] == "normal"


def test_silent_device_gets_communication_lost_then_restored(tmp_path: Path,
                                                             broker: Mosquitto) -> None:
    import time

    cfg = write_hub_config(tmp_path, broker, silence_timeout="2s")
    prime(cfg)
    send(broker, [report("SL-004", 1)])  # a heartbeat
    run(cfg)
    assert cases(tmp_path) == []
    time.sleep(2.5)
    run(cfg)  # the sweep finds it silent
    got = cases(tmp_path)
    assert len(got) == 1 and got[0]["case"]["extra"]["fault"] == "communication_lost"
    run(cfg)
    assert len(cases(tmp_path)) == 1  # still one case
    send(broker, [report("SL-004", 2)])
    run(cfg)
    ups = updates(tmp_path)
    assert len(ups) == 1 and ups[0]["update"]["kind"] == "restored"


def test_two_faults_in_one_report_and_persistence_by_time(tmp_path: Path,
                                                          broker: Mosquitto) -> None:
    import time

    cfg = write_hub_config(tmp_path, broker, faults={
        "default": {"reports": 1, "seconds": 0},
        "high_temperature": {"reports": 5, "seconds": "4s"}})
    prime(cfg)
    send(broker, [report("SL-001", 1, ["E01", "E02"]),
                  report("SL-002", 1, "high_temperature")])
    run(cfg)
    faults = sorted(c["case"]["extra"]["fault"] for c in cases(tmp_path))
    assert faults == ["lamp_failure", "supply_loss"]  # the second one through the sweep
    time.sleep(3.5)
    run(cfg)  # no new report: the sweep sees the fault persisted for 4 s
    faults = sorted(c["case"]["extra"]["fault"] for c in cases(tmp_path))
    assert faults == ["high_temperature", "lamp_failure", "supply_loss"]


def test_integers_beyond_64_bits_arrive_exact(tmp_path: Path, broker: Mosquitto) -> None:
    """orjson reads a 25-digit integer as a float: the decoders read such payloads again
    with json, so the value is stored, and reaches the case, digit for digit."""
    big = 1234567890123456789012345
    cfg = write_hub_config(tmp_path, broker, faults={"default": {"reports": 1, "seconds": 0}})
    prime(cfg)
    cs_topic = "application/17c82e96-be03-4f38-aef3-f83d48582d97/device/a840410000000001/event/up"
    uplink = {**CHIRPSTACK, "object": {"fault": "lamp_failure", "meter": big}}
    send(broker, [report("SL-003", 1, "E01", meter=big, lamp_on=False),
                  (cs_topic, json.dumps(uplink).encode(), 1)])
    s = run(cfg)
    assert s.ingest[0].inserted == 2 and s.ingest[0].dead == 0
    descriptions = sorted(c["case"]["description"] for c in cases(tmp_path))
    assert len(descriptions) == 2
    assert all(f"meter={big}" in d for d in descriptions), descriptions
    with Hub(load_config(str(cfg))) as hub:
        rows = hub.store.query("SELECT payload FROM raw_records")
    values = [json.loads(r["payload"])["report"]["values"]["meter"] for r in rows]
    assert values == [big, big] and all(type(v) is int for v in values)
