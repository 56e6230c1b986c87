"""Intake while another worker holds the process stage: 503 + Retry-After, nothing lost."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.config import load_config
from hub.pipeline import PROCESS_LEASE, Hub
from tests.conftest import write_config
from tests.server.conftest import API_KEY, KEY_ID, SECRET, record, signed

OTHER = "other-host:1:worker"


@pytest.fixture
def server_hub(tmp_path: Path) -> Iterator[Hub]:
    """As in conftest, but intake does not wait for the process stage."""
    cfg = write_config(tmp_path, server={"source": "upstream-api", "hmac_secrets": {
        KEY_ID: SECRET}, "api_keys": [API_KEY]}, process={"lease_wait": 0})
    hub = Hub(load_config(cfg))
    yield hub
    hub.close()


def test_busy_stage_is_503_and_the_retry_gets_the_reference(client, server_hub) -> None:
    store = server_hub.store
    assert store.acquire_lock(PROCESS_LEASE, OTHER, 60)
    body, headers = signed({"records": [record(1)]})
    r = client.post("/v1/records", content=body, headers=headers)
    assert r.status_code == 503 and r.headers["Retry-After"] == "5"
    assert "post the same batch again" in r.json()["error"]
    # stored, not processed: the holder (or the retry) will process it
    assert store.query("SELECT state FROM raw_records")[0]["state"] == "pending"
    form = {"api_key": API_KEY, "service_code": "streetlight", "lat": "31.2",
            "long": "121.4", "description": "路灯不亮"}
    services = client.get("/open311/v2/services.json").json()
    form["service_code"] = services[0]["service_code"]
    r = client.post("/open311/v2/requests.json", data=form)
    assert r.status_code == 503 and r.json()[0]["code"] == 503
    store.release_lock(PROCESS_LEASE, OTHER)
    body, headers = signed({"records": [record(1)]}, now=time.time() + 1)  # signed anew
    r = client.post("/v1/records", content=body, headers=headers)
    assert r.status_code == 202, r.text
    assert r.json()["records"][0]["reference"].startswith("FB-")
    assert store.query("SELECT COUNT(*) AS n FROM cases")[0]["n"] == 2  # and the Open311 one
