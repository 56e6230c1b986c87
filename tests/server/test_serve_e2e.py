"""``serve`` as a real process (uvicorn) → records posted over HTTP → delivered to a webhook."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import REPO, free_port, write_config
from tests.delivery.receivers import WebhookReceiver
from tests.server.conftest import KEY_ID, SECRET, record, signed

pytestmark = pytest.mark.integration


def test_serve_intake_then_delivery(tmp_path: Path, cli) -> None:
    with WebhookReceiver() as hook:
        port = free_port()
        cfg = write_config(tmp_path, sinks=[{"name": "workorders", "type": "webhook",
                                             "url": hook.url, "secret": hook.secret}],
                           server={"port": port, "hmac_secrets": {KEY_ID: SECRET}})
        proc = subprocess.Popen([sys.executable, "-m", "hub.server", "-c", str(cfg), "serve"],
                                cwd=REPO, env={**os.environ}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        try:
            base = f"http://127.0.0.1:{port}"
            for _ in range(100):
                try:
                    if requests.get(base + "/healthz", timeout=1).status_code == 200:
                        break
                except requests.ConnectionError:
                    time.sleep(0.1)
            else:
                pytest.fail(proc.stderr.read().decode() if proc.poll() is not None else
                            "server did not start")
            body, headers = signed({"records": [record(i) for i in range(5)]})
            r = requests.post(base + "/v1/records", data=body, headers=headers, timeout=10)
            assert r.status_code == 202, r.text
            refs = {x["reference"] for x in r.json()["records"]}
            res = cli(cfg, "run", "--once", "--stage", "deliver", "--json")
            assert res.returncode == 0, res.stderr
            assert json.loads(res.stdout)["deliver"]["delivered"] == 5
            assert {d["case"]["reference"] for d in hook.created.values()} == refs
            assert hook.redeliveries() == 0 and hook.bad_signatures == 0
            progress = requests.get(f"{base}/v1/cases/{sorted(refs)[0]}", timeout=5).json()
            assert progress["status"] == "delivered"
        finally:
            proc.terminate()
            proc.wait(timeout=10)
