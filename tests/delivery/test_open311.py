"""open311 sink against a real GeoReport v2 receiver (tests/delivery/receivers.py).

Exactly once without an idempotency key: ambiguous failures (timeouts after the remote acted,
resets after sending, crashes between the POST and the receipt) are reconciled through
``GET requests.json`` before any re-post; the receiver counts 0 duplicates.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qs

import pytest

from hub.pipeline import deliver, run_once
from hub.replay import replay
from outbox.sinks.open311 import MAX_DESCRIPTION, description_for
from tests.delivery.conftest import GOOD, open311_sink, outbox_rows, seed, ticking, webhook_sink
from tests.delivery.receivers import Open311Receiver

pytestmark = pytest.mark.integration


def _drain(hub, rounds: int = 20) -> None:
    for _ in range(rounds):
        deliver(hub, now_fn=ticking())
        if all(r["state"] in ("delivered", "dead") for r in outbox_rows(hub)):
            return


def test_all_cases_posted_once_with_reference_and_attributes(make_hub, open311) -> None:
    hub = make_hub([open311_sink(open311)])
    seed(hub)
    summary = run_once(hub)
    assert summary.deliver.delivered == GOOD, summary.deliver.dead_reasons
    assert len(open311.requests) == GOOD and open311.duplicates() == 0
    rows = outbox_rows(hub)
    assert {r["remote_id"] for r in rows} == set(open311.requests)
    lamp = next(r for r in open311.requests.values() if r["service_code"] == "001")
    form = lamp["form"]
    ref = form["attribute[hub_reference]"][0]
    assert ref.startswith("FB-") and lamp["description"].endswith(f"[feedback-hub {ref}]")
    assert form["attribute[urgency]"][0] in ("normal", "urgent", "emergency")
    assert form["api_key"] == ["test-key"]
    assert open311.gets["services.json"] == 1  # cached
    assert open311.gets["services/001.json"] == 1
    assert run_once(hub).deliver.delivered == 0


def test_timeout_after_remote_acted_is_reconciled_not_reposted(make_hub, open311) -> None:
    hub = make_hub([open311_sink(open311)])
    seed(hub)
    open311.inject(("slow", 1.5), ("reset_after",), ("status", 502, None))
    _drain(hub)
    assert all(r["state"] == "delivered" for r in outbox_rows(hub))
    assert len(open311.requests) == GOOD and open311.duplicates() == 0
    adopted = hub.store.query("SELECT detail FROM receipts")
    assert sum('"reconciled":true' in r["detail"] for r in adopted) == 2
    assert open311.posts == GOOD + 1  # only the 502 (nothing created) was posted again


def test_token_answers_are_polled_and_never_reposted(make_hub) -> None:
    with Open311Receiver(token_mode=True, token_polls=8) as r:
        hub = make_hub([open311_sink(r, token_poll_limit=3)])
        seed(hub)
        first = deliver(hub, limit=GOOD)
        # 3 polls are not enough: each row keeps its token for the next attempt
        assert first.retried == GOOD
        err = json.loads(outbox_rows(hub)[0]["last_error"])
        assert err["token"].startswith("tok-")
        _drain(hub)
        assert all(rw["state"] == "delivered" for rw in outbox_rows(hub))
        assert r.posts == GOOD and len(r.requests) == GOOD and r.duplicates() == 0


def test_error_array_becomes_dead_letter_reason(make_hub, open311) -> None:
    hub = make_hub([open311_sink(open311, api_key="wrong")])
    seed(hub)
    run_once(hub)
    dls = hub.store.dead_letters(stage="deliver")
    assert len(dls) == GOOD
    assert "Open311 error 403: Invalid api_key" in dls[0]["reason"]
    assert "wrong" not in dls[0]["reason"]


def test_unknown_category_dead_letters_naming_the_mapping(make_hub, open311) -> None:
    hub = make_hub([open311_sink(open311, default_service_code=None)])
    seed(hub)
    run_once(hub)
    dls = hub.store.dead_letters(stage="deliver")
    assert len(dls) == GOOD - 3  # the three streetlight cases map to 001
    assert any("service_codes.noise.construction" in d["reason"] for d in dls)


def test_required_attribute_without_value_dead_letters(make_hub, open311) -> None:
    hub = make_hub([open311_sink(open311, attributes={})])
    seed(hub)
    run_once(hub)
    dls = hub.store.dead_letters(stage="deliver")
    assert len(dls) == 3
    assert "requires attribute 'urgency'" in dls[0]["reason"]


def test_500_then_400_then_replay(make_hub, open311) -> None:
    hub = make_hub([open311_sink(open311)])
    seed(hub)
    open311.inject(("status", 400, [{"code": 400, "description": "lat out of range"}]))
    deliver(hub)
    dl = hub.store.dead_letters(stage="deliver")[0]
    assert "Open311 error 400: lat out of range" in dl["reason"]
    replay(hub, dl["id"])
    deliver(hub)
    assert all(r["state"] == "delivered" for r in outbox_rows(hub))
    assert open311.duplicates() == 0 and len(open311.requests) == GOOD


def test_description_truncated_with_note_and_reference_kept() -> None:
    case = {"reference": "FB-20261124-000009", "title": "噪音", "description": "吵" * 5000}
    text = description_for(case)
    assert len(text) <= MAX_DESCRIPTION
    assert "truncated" in text and text.endswith("[feedback-hub FB-20261124-000009]")


def test_routing_sends_a_case_to_two_systems(make_hub, open311, webhook) -> None:
    hub = make_hub([open311_sink(open311), webhook_sink(webhook)],
                   routing=[{"categories": ["streetlight"], "sinks": ["city311", "workorders"],
                             "stop": True},
                            {"urgencies": ["emergency"], "sinks": ["workorders"]},
                            {"sinks": ["city311"]}])
    seed(hub)
    run_once(hub)
    lamps = hub.store.query("SELECT case_id FROM cases WHERE category_code = 'streetlight'")
    for row in lamps:
        sinks = sorted(r["sink"] for r in hub.store.deliveries(row["case_id"]))
        assert sinks == ["city311", "workorders"]
    receipts = hub.store.query("SELECT sink, COUNT(*) AS n FROM receipts GROUP BY sink")
    by_sink = {r["sink"]: r["n"] for r in receipts}
    assert by_sink["workorders"] == len(webhook.created) == 3 + 1  # lamps + the gas leak
    assert by_sink["city311"] == GOOD
    assert open311.duplicates() == 0


def test_crash_between_post_and_receipt_is_reconciled_on_restart(tmp_path: Path, cli,
                                                                 open311) -> None:
    from hub.config import load_config
    from hub.pipeline import Hub
    from tests.conftest import settled, write_config

    cfg = write_config(tmp_path, sinks=[open311_sink(open311)],
                       delivery={"backoff_initial": "1s", "max_attempts": 5})
    with Hub(load_config(cfg)) as hub:
        seed(hub)
    crashed = cli(cfg, "run", "--once", env={"FEEDBACK_HUB_CRASH_AT": "after_sink_call:4"})
    assert crashed.returncode == -9
    # calls running on other threads at the kill may still be finishing in the server: count
    # the requests it created once that number has stopped changing
    created = settled(lambda: len(open311.requests))
    # receipts are committed per chunk of concurrent calls: the crash came before the first
    # chunk's commit, so none was recorded although the remote created these requests
    assert created >= 4
    with Hub(load_config(cfg)) as hub:
        assert hub.store.query("SELECT COUNT(*) AS n FROM receipts")[0]["n"] == 0
    res = cli(cfg, "run", "--once", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["deliver"]["delivered"] == GOOD
    assert len(open311.requests) == GOOD and open311.duplicates() == 0
    # the requests made before the crash were adopted through GET requests.json
    assert open311.posts == GOOD
    with Hub(load_config(cfg)) as hub:
        details = [json.loads(r["detail"]) for r in hub.store.query("SELECT detail FROM receipts")]
    assert sum(bool(d.get("reconciled")) for d in details) == created


def test_form_is_form_encoded_with_location(open311) -> None:
    from outbox.sinks.base import Delivery
    from outbox.sinks.open311 import Open311Sink, Open311SinkConfig

    sink = Open311Sink(Open311SinkConfig(**open311_sink(open311)))
    case = {"case_id": "c", "reference": "FB-20261124-000001", "title": "t", "description": "d",
            "classification": {"category_code": "road"}, "location": {"address": "幸福路"},
            "reporter": {"name": "张三", "email": "z@example.com", "anonymous": False}}
    receipt = sink.deliver(Delivery(outbox_id=1, kind="case", idempotency_key="k", case=case))
    form = open311.requests[receipt.remote_id]["form"]
    assert form["address_string"] == ["幸福路"] and "lat" not in form
    assert form["last_name"] == ["张"] and form["first_name"] == ["三"]
    anon = {**case, "reference": "FB-20261124-000002",
            "reporter": {"name": "李四", "anonymous": True}}
    r2 = sink.deliver(Delivery(outbox_id=2, kind="case", idempotency_key="k2", case=anon))
    assert "first_name" not in open311.requests[r2.remote_id]["form"]
    upd = sink.deliver(Delivery(outbox_id=3, kind="update", idempotency_key="k3", case=case,
                                update={"text": "x"}, remote_id=receipt.remote_id))
    assert "skipped" in upd.detail
    assert parse_qs("a=1")  # form parsing is the receiver's (real server)
    sink.close()


def test_updates_go_to_mysociety_extension_when_configured(make_hub, open311) -> None:
    from normalizer.case import CaseUpdate
    from outbox.store.timefmt import now_utc as _now

    hub = make_hub([open311_sink(open311, updates="mysociety")])
    seed(hub, 2)
    deliver(hub)
    case_id = outbox_rows(hub)[0]["case_id"]
    with hub.store.process_tx() as tx:
        upd = CaseUpdate(case_id=case_id, update_id="reply-1", kind="reply", at=_now(),
                         text="居民补充：路灯仍然不亮")
        assert tx.save_update(upd, tx.case_sinks(case_id))
    assert deliver(hub).delivered == 1
    (form,) = open311.updates.values()
    assert form["description"] == ["居民补充：路灯仍然不亮"]
    assert form["service_request_id"] == [outbox_rows(hub)[0]["remote_id"]]


def test_webhook_batching_through_the_delivery_loop(make_hub, webhook) -> None:
    hub = make_hub([webhook_sink(webhook, batch_size=10, concurrency=2)])
    seed(hub)
    assert deliver(hub).delivered == GOOD
    assert webhook.requests == 3 and len(webhook.created) == GOOD
    assert webhook.redeliveries() == 0


def test_calls_still_queued_at_the_lease_margin_are_not_made(make_hub, open311) -> None:
    """Open311 has no idempotency key, so a call must never start after its claim's lease
    margin (another worker may have the row by then): on the thread pool, calls still queued
    behind slow ones at ``start_by`` are not made, their recorded attempts are withdrawn and
    the rows given back untouched; the next run posts each of them once."""
    from hub.pipeline import CallPool
    from tests.delivery.conftest import feed_past_start_by

    hub = make_hub([open311_sink(open311, concurrency=2)])
    seed(hub)
    open311.inject(("slow", 0.3), ("slow", 0.3))  # both threads busy for 0.3 s
    rows, state, chunk = feed_past_start_by(hub, "city311", CallPool)
    assert chunk == 8
    made = [d for d in rows if state[d.id]["state"] == "delivered"]
    given_back = [d for d in rows if state[d.id]["state"] == "pending"]
    assert len(made) == 2 and len(open311.requests) == 2 and open311.posts == 2
    assert len(given_back) == 6
    assert all(state[d.id]["attempts"] == 0 and state[d.id]["claimed_by"] is None
               and state[d.id]["first_attempt_at"] is None for d in given_back)
    _drain(hub)
    assert len(open311.requests) == GOOD and open311.duplicates() == 0
    # the withdrawn attempts were never made: no reconciliation GET was needed for them
    assert all(r["attempts"] == 1 for r in outbox_rows(hub))
