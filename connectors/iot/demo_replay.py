"""A throwaway Mosquitto and a replayer of recorded reports, for tests, the demo and the bench.

Mosquitto runs with its own config file on a free loopback port, persistence off, and
``max_queued_messages 0`` (no limit): Mosquitto's default of 1000 would DROP most of an offline
persistent session's backlog, which is exactly what the hub must be able to drain.

Command line (used by ``samples/demo.sh``)::

    python -m connectors.iot.demo_replay start --state .demo/mqtt     # prints export MQTT_PORT=...
    python -m connectors.iot.demo_replay replay --port P samples/iot/reports.jsonl
    python -m connectors.iot.demo_replay stop --state .demo/mqtt

A recorded file has one JSON object per line: ``{"topic": ..., "payload": <object or string>,
"payload_b64": optional, "qos": 1}``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"

CONFIG = """\
# Throwaway Mosquitto written by connectors/iot/demo_replay.py
listener {port} 127.0.0.1
{listener_opts}
# stay the invoking user (as root Mosquitto would switch to 'mosquitto' and lose its folder)
user {user}
allow_anonymous {anonymous}
persistence {persistence}
persistence_location {dir}/
# keep an offline persistent session's whole backlog (the default 1000 drops the rest)
max_queued_messages 0
max_queued_bytes 0
max_inflight_messages {inflight}
log_dest file {dir}/mosquitto.log
log_type error
log_type warning
{extra}
"""


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mosquitto:
    """A Mosquitto broker in a folder of its own."""

    def __init__(self, folder: Path, port: int | None = None, *, persistence: bool = False,
                 inflight: int = 0, extra: str = "", listener_opts: str = "",
                 password_file: Path | None = None) -> None:
        self.folder = Path(folder)
        self.port = port or free_port()
        self.persistence = persistence
        self.inflight = inflight
        self.extra = extra
        self.listener_opts = listener_opts
        self.password_file = password_file
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def conf(self) -> Path:
        """The config file."""
        return self.folder / "mosquitto.conf"

    def start(self, timeout: float = 10.0) -> Mosquitto:
        """Write the config, start the broker and wait until it accepts connections."""
        self.folder.mkdir(parents=True, exist_ok=True)
        extra = self.extra
        if self.password_file:
            extra += f"\npassword_file {self.password_file}"
        self.conf.write_text(CONFIG.format(
            port=self.port, dir=self.folder, persistence="true" if self.persistence else "false",
            inflight=self.inflight, listener_opts=self.listener_opts,
            anonymous="false" if self.password_file else "true", extra=extra,
            user=pwd.getpwuid(os.getuid()).pw_name))
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"mosquitto exited: {err or self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    (self.folder / "pid").write_text(str(self.proc.pid))
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port}: {self.log()}")

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL)."""
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        """Stop and start again on the same port (persistence on keeps sessions)."""
        self.stop()
        self.start()

    def log(self) -> str:
        """The broker's log so far."""
        p = self.folder / "mosquitto.log"
        return p.read_text(errors="replace") if p.exists() else ""


def load_recording(path: Path) -> list[tuple[str, bytes, int]]:
    """Read a recorded file into (topic, payload bytes, qos)."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        rec = json.loads(line)
        if "payload_b64" in rec:
            payload = base64.b64decode(rec["payload_b64"])
        elif isinstance(rec.get("payload"), str):
            payload = rec["payload"].encode("utf-8")
        else:
            payload = json.dumps(rec.get("payload"), ensure_ascii=False).encode("utf-8")
        out.append((rec["topic"], payload, int(rec.get("qos", 1))))
    return out


def publish(port: int, messages: list[tuple[str, bytes, int]], host: str = "127.0.0.1",
            client_id: str = "fbhub-replay") -> None:
    """Publish messages with QoS 1 and wait until the broker has them all."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect(host, port)
    client.loop_start()
    try:
        infos = [client.publish(t, p, qos=q) for t, p, q in messages]
        for info in infos:
            info.wait_for_publish(60)
    finally:
        client.disconnect()
        client.loop_stop()


def main(argv: list[str] | None = None) -> int:
    """``start`` / ``replay`` / ``stop``."""
    ap = argparse.ArgumentParser(prog="python -m connectors.iot.demo_replay")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("start", help="start a throwaway broker; prints export MQTT_PORT=...")
    s.add_argument("--state", required=True, type=Path)
    s.add_argument("--port", type=int)
    r = sub.add_parser("replay", help="publish a recorded file (QoS 1)")
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--host", default="127.0.0.1")
    r.add_argument("file", type=Path)
    t = sub.add_parser("stop", help="stop the broker started with start")
    t.add_argument("--state", required=True, type=Path)
    args = ap.parse_args(argv)
    if args.cmd == "start":
        port_file = args.state / "port"
        pid_file = args.state / "pid"
        if pid_file.exists() and port_file.exists():
            try:
                os.kill(int(pid_file.read_text()), 0)
                print(f"export MQTT_PORT={port_file.read_text().strip()}")
                return 0
            except (ProcessLookupError, ValueError):
                pass
        broker = Mosquitto(args.state.resolve(), args.port, persistence=True)
        broker.start()
        port_file.write_text(str(broker.port))
        print(f"export MQTT_PORT={broker.port}")
        return 0
    if args.cmd == "replay":
        msgs = load_recording(args.file)
        publish(args.port, msgs, args.host)
        print(f"replayed {len(msgs)} messages from {args.file}", file=sys.stderr)
        return 0
    pid_file = args.state / "pid"
    if pid_file.exists():
        try:
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
        except (ProcessLookupError, ValueError):
            pass
        pid_file.unlink()
    return 0




if __name__ == "__main__":
    raise SystemExit(main())
