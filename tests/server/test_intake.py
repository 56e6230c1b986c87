"""``POST /v1/records``: signed, idempotent intake; every refusal stores nothing."""

from __future__ import annotations

import json
import time

import pytest

from hub.pipeline import Hub, deliver
from tests.conftest import jsonl_lines
from tests.server.conftest import record, signed


def _count(hub, table: str) -> int:
    return int(hub.store.query(f"SELECT COUNT(*) AS n FROM {table}")[0]["n"])


def test_valid_batch_is_committed_processed_and_delivered(client, server_hub, tmp_path) -> None:
    body, headers = signed({"records": [record(1), record(2, kind="求助")]})
    r = client.post("/v1/records", content=body, headers=headers)
    assert r.status_code == 202, r.text
    out = r.json()
    assert out["accepted"] == 2
    refs = [x["reference"] for x in out["records"]]
    assert all(ref.startswith("FB-") for ref in refs)
    assert [x["status"] for x in out["records"]] == ["new", "new"]
    # committed before the answer: cases and outbox rows exist now
    assert _count(server_hub, "cases") == 2 and _count(server_hub, "outbox") == 2
    assert deliver(server_hub).delivered == 2
    lines = jsonl_lines(tmp_path / "out" / "cases.jsonl")
    assert sorted(line["case"]["reference"] for line in lines) == sorted(refs)
    assert lines[0]["case"]["origin"]["source"] == "upstream-api"


def test_same_record_twice_returns_the_same_reference(client, server_hub) -> None:
    body, headers = signed({"records": [record(7)]})
    first = client.post("/v1/records", content=body, headers=headers).json()
    # an honest retry signs again (new timestamp) and gets the same reference back
    body2, headers2 = signed({"records": [record(7)]}, now=time.time() + 1)
    second = client.post("/v1/records", content=body2, headers=headers2)
    assert second.status_code == 202
    assert second.json()["records"][0]["reference"] == first["records"][0]["reference"]
    assert second.json()["records"][0]["status"] == "duplicate"
    assert _count(server_hub, "cases") == 1 and _count(server_hub, "outbox") == 1


def _assert_nothing_stored(hub) -> None:
    assert _count(hub, "raw_records") == 0 and _count(hub, "cases") == 0
    assert _count(hub, "dead_letters") == 0


@pytest.mark.parametrize("case", ["bad_signature", "unknown_key", "stale", "future", "missing",
                                  "tampered"])
def test_authentication_failures_are_401_without_detail(client, server_hub, case) -> None:
    doc = {"records": [record(1)]}
    if case == "bad_signature":
        body, headers = signed(doc, secret="not-the-secret")
    elif case == "unknown_key":
        body, headers = signed(doc, key_id="someone-else")
    elif case == "stale":
        body, headers = signed(doc, now=time.time() - 301)
    elif case == "future":
        body, headers = signed(doc, now=time.time() + 301)
    elif case == "missing":
        body, headers = signed(doc)
        headers = {"Content-Type": "application/json"}
    else:
        body, headers = signed(doc)
        body = body.replace(b"WX-00001", b"WX-00002")
    r = client.post("/v1/records", content=body, headers=headers)
    assert r.status_code == 401
    assert r.json() == {"error": "unauthorized"}  # the same answer for every reason
    _assert_nothing_stored(server_hub)


def test_replayed_request_is_refused(client, server_hub) -> None:
    body, headers = signed({"records": [record(1)]})
    assert client.post("/v1/records", content=body, headers=headers).status_code == 202
    again = client.post("/v1/records", content=body, headers=headers)
    assert again.status_code == 409
    assert _count(server_hub, "raw_records") == 1


def test_replay_is_refused_by_another_server_process_on_the_same_store(client,
                                                                       server_hub) -> None:
    """The signatures seen live in the store, so a request replayed to a second ``serve``
    (another process or host behind the load balancer) is refused as well."""
    from tests.server.conftest import serving

    body, headers = signed({"records": [record(1)]})
    assert client.post("/v1/records", content=body, headers=headers).status_code == 202
    other = Hub(server_hub.config)
    try:
        with serving(other) as second:
            assert second.post("/v1/records", content=body, headers=headers).status_code == 409
            # an honest retry signs again (timestamps have whole seconds: a later one)
            fresh_body, fresh_headers = signed({"records": [record(1)]}, now=time.time() + 1)
            again = second.post("/v1/records", content=fresh_body, headers=fresh_headers)
            assert again.status_code == 202 and again.json()["records"][0]["status"] == \
                "duplicate"
    finally:
        other.close()
    assert _count(server_hub, "raw_records") == 1


def test_signature_ledger_forgets_expired_signatures(server_hub) -> None:
    import threading

    from hub.server.auth import SignatureLedger

    ledger = SignatureLedger(server_hub.store, threading.Lock(), window=0.05, purge_every=0)
    assert ledger.check_and_add("v1=aa") and not ledger.check_and_add("v1=aa")
    assert ledger.check_and_add("v1=bb")
    time.sleep(0.15)  # both held for twice the window, now expired
    assert ledger.check_and_add("v1=cc")  # purges the expired rows first
    names = [r["name"] for r in server_hub.store.query("SELECT name FROM locks")]
    assert len(names) == 1 and names[0].startswith(SignatureLedger.PREFIX)
    assert ledger.check_and_add("v1=aa")  # its time is over: a stale timestamp anyway


def test_oversized_body_is_413(client, server_hub) -> None:
    doc = {"records": [record(i) for i in range(100)]}
    body, headers = signed(doc)
    assert len(body) > 16384
    r = client.post("/v1/records", content=body, headers=headers)
    assert r.status_code == 413
    # without Content-Length (chunked) the limit still holds while the body streams in
    headers.pop("Content-Length", None)
    r = client.post("/v1/records", content=iter([body[:9000], body[9000:]]), headers=headers)
    assert r.status_code == 413
    _assert_nothing_stored(server_hub)


def test_invalid_json_is_400(client, server_hub) -> None:
    body, headers = signed(None, raw=b'{"records": [')
    r = client.post("/v1/records", content=body, headers=headers)
    assert r.status_code == 400 and r.json()["error"] == "body is not valid JSON"
    _assert_nothing_stored(server_hub)


def test_missing_fields_are_400_with_paths(client, server_hub) -> None:
    bad = record(2)
    del bad["id"]
    empty = {"id": "X-3"}
    body, headers = signed({"records": [record(1), bad, empty]})
    r = client.post("/v1/records", content=body, headers=headers)
    assert r.status_code == 400
    fields = r.json()["fields"]
    assert {"path": "records[1].id", "message": "Field required"} in fields
    assert any(f["path"] == "records[2]" and "title or a description" in f["message"]
               for f in fields)
    body, headers = signed({"items": []}, now=time.time() + 2)
    r = client.post("/v1/records", content=body, headers=headers)
    assert r.status_code == 400
    assert {f["path"] for f in r.json()["fields"]} == {"records", "items"}
    _assert_nothing_stored(server_hub)


def test_case_progress_has_no_personal_data(client, server_hub) -> None:
    body, headers = signed({"records": [record(1)]})
    ref = client.post("/v1/records", content=body, headers=headers).json()["records"][0][
        "reference"]
    deliver(server_hub)
    r = client.get(f"/v1/cases/{ref}")
    assert r.status_code == 200
    doc = r.json()
    assert doc["reference"] == ref and doc["status"] == "delivered"
    assert [e["event"] for e in doc["timeline"]] == ["created", "delivered"]
    text = json.dumps(doc, ensure_ascii=False)
    for pii in ("13812345678", "王小明", "幸福路", "case-file", "upstream-api"):
        assert pii not in text
    assert client.get("/v1/cases/FB-20990101-000001").status_code == 404
    assert client.get("/v1/cases/not-a-reference").status_code == 404


def test_health_and_metrics(client) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    body, headers = signed({"records": [record(1)]})
    client.post("/v1/records", content=body, headers=headers)
    client.post("/v1/records", content=body, headers=headers)
    text = client.get("/metrics").text
    assert 'feedback_hub_intake_records_total{endpoint="records",outcome="new"} 1.0' in text
    assert 'feedback_hub_intake_refused_total{endpoint="records",reason="replayed"} 1.0' in text
    assert 'feedback_hub_outbox_rows{sink="case-file",state="pending"} 1.0' in text
    assert "feedback_hub_http_request_duration_seconds_bucket" in text
