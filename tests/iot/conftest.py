"""Fixtures for the IoT channel: a real Mosquitto broker and hub configs that subscribe to it.

Each test gets its own broker (own config file, free loopback port, persistence in a temp
folder, no queue limit), so sessions never leak between tests. Mosquitto is installed with
apt-get when missing (as ``make test`` does); without it the tests are skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from connectors.iot.demo_replay import Mosquitto, publish

REGISTRY = """\
device_id,asset_id,asset_type,address,lat,lon,district,street,community,interval
SL-001,P-001,streetlight,幸福路1号,31.2301,121.4701,黄浦区,幸福路,幸福社区,
SL-002,P-002,streetlight,幸福路3号,31.2302,121.4702,黄浦区,幸福路,幸福社区,
SL-003,P-003,streetlight,幸福路5号,31.2303,121.4703,黄浦区,幸福路,幸福社区,
SL-004,P-004,streetlight,和平街2号,31.2401,121.4801,黄浦区,和平街,和平社区,
a840410000000001,P-101,streetlight,人民路8号,31.2501,121.4901,静安区,人民路,人民社区,
0004A30B001C0530,P-201,streetlight,建国路10号,31.2601,121.5001,徐汇区,建国路,建国社区,
"""


def _ensure_mosquitto() -> str | None:
    if shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists():
        return None
    if os.geteuid() != 0:
        return "mosquitto is not installed (apt-get install mosquitto mosquitto-clients)"
    try:
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                        "mosquitto", "mosquitto-clients"], check=True, capture_output=True,
                       timeout=600, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    except (subprocess.SubprocessError, OSError) as exc:
        return f"could not install mosquitto: {exc}"
    return None


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A running throwaway Mosquitto (persistence on, in this test's folder)."""
    problem = _ensure_mosquitto()
    if problem:
        pytest.skip(problem)
    b = Mosquitto(tmp_path / "broker", persistence=True).start()
    try:
        yield b
    finally:
        b.stop()


def mqtt_entry(broker: Mosquitto, **overrides: Any) -> dict[str, Any]:
    """A connector entry subscribing to the test topics with all three decoders."""
    entry: dict[str, Any] = {
        "name": "streetlights", "type": "mqtt", "host": "127.0.0.1", "port": broker.port,
        "client_id": "fbhub-test", "idle_timeout": "1s", "max_duration": "60s",
        "batch_size": 200, "receive_maximum": 1000, "registry": "devices.csv",
        "sweep_interval": 0,
        "faults": {"default": {"reports": 2, "seconds": "1h"}},
        "subscriptions": [
            {"topic": "city/lights/+/report", "decoder": "json",
             "codes": {"E01": "lamp_failure", "E02": "supply_loss", "OK": "clear"}},
            {"topic": "application/+/device/+/event/up", "decoder": "chirpstack"},
            {"topic": "v3/+/devices/+/up", "decoder": "tts"},
        ],
    }
    entry.update(overrides)
    return entry


def write_hub_config(folder: Path, broker: Mosquitto, **overrides: Any) -> Path:
    """feedback-hub.yaml: broker → SQLite → jsonl sink, with the test registry."""
    (folder / "devices.csv").write_text(REGISTRY, encoding="utf-8")
    cfg = {
        "store": "sqlite:///hub.db", "blobs": "blobs",
        "connectors": [mqtt_entry(broker, **overrides)],
        "sinks": [{"name": "case-file", "type": "jsonl", "path": "out/cases.jsonl"}],
        "logging": {"level": "WARNING"},
    }
    path = folder / "feedback-hub.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def report(device: str, seq: int, fault: str | None = None, t: str | None = None,
           **values: Any) -> tuple[str, bytes, int]:
    """A plain-JSON streetlight report."""
    body: dict[str, Any] = {"device_id": device, "event_id": seq,
                            "time": t or f"2026-11-24T20:{seq // 60 % 60:02d}:{seq % 60:02d}Z"}
    if fault is not None:
        body["fault"] = fault
    if values:
        body["values"] = values
    return (f"city/lights/{device}/report", json.dumps(body).encode(), 1)


def send(broker: Mosquitto, msgs: list[tuple[str, bytes, int]]) -> None:
    """Publish with QoS 1 and wait for the broker's PUBACKs."""
    publish(broker.port, msgs)
