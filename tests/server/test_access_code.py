"""Access codes for the progress page: with ``server.progress_secret`` a reference alone no
longer shows a case (references are sequential and could be walked)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.access_code import access_code, check, normalize
from hub.config import load_config
from hub.pipeline import Hub
from tests.conftest import write_config
from tests.server.conftest import API_KEY, KEY_ID, SECRET, record, serving, signed

PROGRESS_SECRET = "progress-secret-for-tests"


def test_codes_are_stable_per_secret_and_forgiving_to_type() -> None:
    code = access_code(PROGRESS_SECRET, "FB-20261124-000001")
    assert len(code) == 9 and code[4] == "-"
    assert not set(code.replace("-", "")) & set("ILOU")  # Crockford: easy to read out
    assert code == access_code(PROGRESS_SECRET, "FB-20261124-000001")
    assert code != access_code(PROGRESS_SECRET, "FB-20261124-000002")
    assert code != access_code("another secret", "FB-20261124-000001")
    typed = code.lower().replace("-", " ").replace("1", "l").replace("0", "o")
    assert normalize(typed) == code and check(PROGRESS_SECRET, "FB-20261124-000001", typed)
    assert not check(PROGRESS_SECRET, "FB-20261124-000001", None)
    assert not check(PROGRESS_SECRET, "FB-20261124-000002", code)


@pytest.fixture
def coded_hub(tmp_path: Path) -> Iterator[Hub]:
    cfg = write_config(tmp_path, server={"source": "upstream-api", "hmac_secrets": {
        KEY_ID: SECRET}, "api_keys": [API_KEY], "progress_secret": "${PROGRESS_SECRET}"})
    hub = Hub(load_config(cfg, env={"PROGRESS_SECRET": PROGRESS_SECRET}))
    yield hub
    hub.close()


def test_progress_needs_the_code_from_the_intake_answer(coded_hub: Hub) -> None:
    with serving(coded_hub) as client:
        body, headers = signed({"records": [record(1), record(2)]})
        got = client.post("/v1/records", content=body, headers=headers).json()["records"]
        ref, code = got[0]["reference"], got[0]["access_code"]
        assert code == access_code(PROGRESS_SECRET, ref)
        assert client.get(f"/v1/cases/{ref}", params={"code": code}).json()["reference"] == ref
        assert client.get(f"/v1/cases/{ref}", params={"code": code.lower()}).status_code == 200
        # without it, with a wrong one, with another case's: the answer of an unknown case
        for params in ({}, {"code": "0000-0000"}, {"code": got[1]["access_code"]}):
            r = client.get(f"/v1/cases/{ref}", params=params)
            assert r.status_code == 404 and r.json() == {"error": "not found"}
        metrics = client.get("/metrics").text
        assert 'feedback_hub_intake_refused_total{endpoint="cases",reason="no_code"} 1.0' in \
            metrics
        assert 'endpoint="cases",reason="bad_code"} 2.0' in metrics
        # Open311's status lookup is no way around it: it needs a configured api_key then
        sr = f"/open311/v2/requests/{ref}.json"
        assert client.get(sr).status_code == 403
        assert client.get(sr, params={"api_key": "guess"}).status_code == 403
        assert client.get(sr, params={"api_key": API_KEY}).json()[0]["service_request_id"] == ref
        # a duplicate gets the same reference and so the same code
        body, headers = signed({"records": [record(1)]}, now=time.time() + 1)
        again = client.post("/v1/records", content=body, headers=headers).json()["records"][0]
        assert again["status"] == "duplicate" and again["access_code"] == code


def test_cases_show_tells_the_agent_the_code(hub_dir: Path, cli) -> None:
    cfg = write_config(hub_dir, server={"progress_secret": PROGRESS_SECRET})
    assert cli(cfg, "run", "--once").returncode == 0
    with Hub(load_config(cfg)) as hub:
        ref = hub.store.list_cases(1)[0]["reference"]
    shown = cli(cfg, "cases", "show", ref)
    assert shown.returncode == 0, shown.stderr
    assert f"access code {access_code(PROGRESS_SECRET, ref)}" in shown.stdout
    doc = json.loads(cli(cfg, "cases", "show", ref, "--json").stdout)
    assert doc["access_code"] == access_code(PROGRESS_SECRET, ref)
    # no secret configured: no code shown (the page is open by reference)
    (hub_dir / "plain").mkdir()
    plain = write_config(hub_dir / "plain", store=f"sqlite:///{hub_dir / 'hub.db'}")
    shown = cli(plain, "cases", "show", ref)
    assert shown.returncode == 0 and "access code" not in shown.stdout
