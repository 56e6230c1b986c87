"""``feedback-hub listen`` with the MQTT connector: reports become cases while it runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from connectors.iot.demo_replay import Mosquitto
from tests.conftest import REPO, jsonl_lines, wait_for
from tests.iot.conftest import report, send, write_hub_config

pytestmark = pytest.mark.integration


def test_listen_turns_reports_into_cases_and_stops_on_sigterm(tmp_path: Path,
                                                              broker: Mosquitto) -> None:
    cfg = write_hub_config(tmp_path, broker, faults={"default": {"reports": 2, "seconds": 0}})
    out = tmp_path / "out" / "cases.jsonl"
    # create the persistent session first: reports published before listen is up are queued
    primed = subprocess.run([sys.executable, "-m", "hub.cli", "-c", str(cfg), "run", "--once",
                             "--stage", "ingest"], cwd=REPO, capture_output=True, timeout=120)
    assert primed.returncode == 0, primed.stderr
    proc = subprocess.Popen([sys.executable, "-m", "hub.cli", "-c", str(cfg), "listen",
                             "--tick", "0.2"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        send(broker, [report("SL-004", 1, "E01"), report("SL-004", 2, "E01")])
        assert wait_for(lambda: len(jsonl_lines(out)) == 1, timeout=30), proc.stderr
        send(broker, [report("SL-004", 3, "OK")])
        assert wait_for(lambda: len(jsonl_lines(out)) == 2, timeout=30)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
    lines = jsonl_lines(out)
    assert [x["kind"] for x in lines] == ["case", "update"]
    assert lines[1]["update"]["kind"] == "restored"
