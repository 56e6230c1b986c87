"""P7: publish → sink receipt latency under ``feedback-hub listen`` at 100 msg/s.

Every message is a fault report from a new device with ``reports: 1`` so each one becomes a case
delivered to the jsonl sink; latency is the sink's ``delivered_at`` minus the publish time (one
machine, one clock). The limit measured in the same run is a bare paho subscriber's receive
latency for the same stream (the broker + client floor).

``python -m bench.bench_mqtt_latency [--rate 100] [--seconds 30]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from bench.common import WORK, write_results
from connectors.iot.demo_replay import Mosquitto

REPO = Path(__file__).resolve().parent.parent


def _pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def p7(rate: float = 100.0, seconds: float = 30.0) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    work = WORK / "mqtt-p7"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    broker = Mosquitto(work / "broker").start()
    cfg = {
        "store": "sqlite:///hub.db", "blobs": "blobs",
        "connectors": [{"name": "lights", "type": "mqtt", "host": "127.0.0.1",
                        "port": broker.port, "client_id": "bench-p7", "batch_size": 100,
                        "batch_linger": "20ms", "faults": {"default": {"reports": 1,
                                                                       "seconds": 0}},
                        "street_rule": None,
                        "subscriptions": [{"topic": "p7/+/report", "decoder": "json"}]}],
        "sinks": [{"name": "out", "type": "jsonl", "path": "out/cases.jsonl", "fsync": True}],
        "logging": {"level": "WARNING"},
    }
    (work / "feedback-hub.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    out = work / "out" / "cases.jsonl"
    n = int(rate * seconds)
    sent: dict[str, float] = {}
    floor: list[float] = []
    proc = subprocess.Popen([sys.executable, "-m", "hub.cli", "-c",
                             str(work / "feedback-hub.yaml"), "listen", "--tick", "1"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # the floor: a bare paho subscriber on the same stream
    sub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)

    def on_msg(_c: Any, _u: Any, msg: Any) -> None:
        dev = json.loads(msg.payload)["device_id"]
        if dev in sent:
            floor.append(time.time() - sent[dev])

    sub.on_message = on_msg
    sub.connect("127.0.0.1", broker.port)
    sub.subscribe("p7/+/report", qos=1)
    sub.loop_start()
    pub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    try:
        time.sleep(3.0)  # the hub subscribes
        start = time.monotonic()
        for i in range(n):
            target = start + i / rate
            delay = target - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            dev = f"P7-{i:06d}"
            body = json.dumps({"device_id": dev, "event_id": i, "fault": "lamp_failure"})
            sent[dev] = time.time()
            pub.publish(f"p7/{dev}/report", body, qos=1)
        deadline = time.monotonic() + 120
        lines: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            if out.exists():
                lines = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()
                         if x.endswith("}")]
                if len(lines) >= n:
                    break
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
        pub.loop_stop()
        sub.loop_stop()
        broker.stop()
    lat = []
    for line in lines:
        dev = line["case"]["extra"]["device_id"]
        lat.append(datetime.fromisoformat(line["delivered_at"]).timestamp() - sent[dev])
    if len(lat) < n:
        raise RuntimeError(f"only {len(lat)} of {n} cases reached the sink")
    p95_floor = _pct(floor, 95) if floor else None
    rows = [
        {"measure": f"publish → sink receipt p95 under listen at {rate:g} msg/s "
                    f"({n} reports, each a new case)", "value": _pct(lat, 95), "unit": "s",
         "limit": p95_floor, "goal": 1.0},
        {"measure": "publish → sink receipt p50", "value": _pct(lat, 50), "unit": "s"},
        {"measure": "publish → sink receipt p99", "value": _pct(lat, 99), "unit": "s"},
        {"measure": "publish → sink receipt max", "value": max(lat), "unit": "s"},
    ]
    write_results("P7", "MQTT listen latency (publish → sink)", rows,
                  notes="limit: p95 receive latency of a bare paho subscriber on the same stream "
                        "in the same run. Hub: listen --tick 1, batch_size 100, batch_linger 20ms,"
                        " jsonl sink with fsync; every report is a new device-fault case "
                        "(decode, commit, ack, episode, enrichment, routing, delivery).")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--seconds", type=float, default=30.0)
    args = ap.parse_args()
    p7(args.rate, args.seconds)


if __name__ == "__main__":
    main()
