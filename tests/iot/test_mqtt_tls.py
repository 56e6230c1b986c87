"""TLS and username/password from the environment, against a real Mosquitto."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import trustme

from connectors.iot.demo_replay import Mosquitto
from hub.config import load_config
from hub.pipeline import Hub, run_once
from tests.conftest import jsonl_lines
from tests.iot.conftest import _ensure_mosquitto, report, write_hub_config

pytestmark = pytest.mark.integration


def test_tls_with_password_from_environment(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    problem = _ensure_mosquitto()
    if problem:
        pytest.skip(problem)
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    folder = tmp_path / "tls-broker"
    folder.mkdir()
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    cert.private_key_pem.write_to_path(str(folder / "server.key"))
    cert.cert_chain_pems[0].write_to_path(str(folder / "server.pem"))
    pw = folder / "passwd"
    pw.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(pw), "hub", "s3cret-mqtt"], check=True)
    broker = Mosquitto(folder, persistence=True, password_file=pw,
                       listener_opts=f"cafile {folder}/ca.pem\ncertfile {folder}/server.pem\n"
                                     f"keyfile {folder}/server.key").start()
    try:
        monkeypatch.setenv("MQTT_PASSWORD", "s3cret-mqtt")
        cfg = write_hub_config(tmp_path, broker, tls=True, ca_file=str(folder / "ca.pem"),
                               username="hub", password="${MQTT_PASSWORD}",
                               faults={"default": {"reports": 1, "seconds": 0}})
        with Hub(load_config(str(cfg))) as hub:
            assert not run_once(hub).connector_errors
        # publish over TLS too
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        pub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                          protocol=mqtt.MQTTv5)
        pub.tls_set(ca_certs=str(folder / "ca.pem"))
        pub.username_pw_set("hub", "s3cret-mqtt")
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        topic, payload, _ = report("SL-001", 1, "E01")
        pub.publish(topic, payload, qos=1).wait_for_publish(10)
        pub.disconnect()
        pub.loop_stop()
        with Hub(load_config(str(cfg))) as hub:
            assert not run_once(hub).connector_errors
        assert len(jsonl_lines(tmp_path / "out" / "cases.jsonl")) == 1
        # a wrong password: the run fails with the broker's reason, the secret is not shown
        monkeypatch.setenv("MQTT_PASSWORD", "wrong-one")
        cfg = write_hub_config(tmp_path, broker, tls=True, ca_file=str(folder / "ca.pem"),
                               username="hub", password="${MQTT_PASSWORD}",
                               connect_timeout="2s")
        with Hub(load_config(str(cfg))) as hub:
            res = run_once(hub, stages=("ingest",))
        assert res.ingest[0].error and "refused" in res.ingest[0].error
        assert "wrong-one" not in res.ingest[0].error
    finally:
        broker.stop()
