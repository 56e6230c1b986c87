"""webhook sink against a real receiver (tests/delivery/receivers.py) that verifies signatures.

Every failure class of the issue: 500, 429 + Retry-After, slow answers past the timeout,
connection resets, refused connections, 400 (dead letter), then replay after the fix.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest

from hub.pipeline import deliver, run_once
from hub.replay import replay
from outbox.sinks.base import Delivery
from outbox.sinks.signing import signature
from outbox.sinks.webhook import WebhookSink, WebhookSinkConfig
from outbox.store.timefmt import now_utc, parse_ts
from tests.delivery.conftest import GOOD, outbox_rows, seed, ticking, webhook_sink
from tests.delivery.receivers import WebhookReceiver

pytestmark = pytest.mark.integration


def test_every_case_delivered_once_signed_and_schema_versioned(make_hub, webhook) -> None:
    hub = make_hub([webhook_sink(webhook)])
    seed(hub)
    summary = run_once(hub)
    assert summary.deliver.delivered == GOOD
    assert len(webhook.created) == GOOD and webhook.redeliveries() == 0
    assert webhook.bad_signatures == 0
    doc = next(iter(webhook.created.values()))
    assert doc["schema"] == "feedback-hub.delivery/1" and doc["case"]["schema_version"] == "1.0"
    receipts = hub.store.query("SELECT remote_id, status_code FROM receipts")
    assert len(receipts) == GOOD and all(r["status_code"] == 200 for r in receipts)
    assert {r["remote_id"] for r in receipts} == set(webhook.ids.values())
    # a second run (and a replayed export) sends nothing again
    assert run_once(hub).deliver.delivered == 0
    assert webhook.requests == GOOD


def test_wrong_secret_is_refused_and_dead_lettered(make_hub, webhook) -> None:
    hub = make_hub([webhook_sink(webhook, secret="not-the-secret")])
    seed(hub)
    run_once(hub)
    # 401 is a final 4xx: each case is dead-lettered with the answer's body
    assert webhook.bad_signatures == GOOD and not webhook.created
    dls = hub.store.dead_letters(stage="deliver")
    assert len(dls) == GOOD and "401" in dls[0]["reason"]
    assert dls[0]["detail"]["body"] == '{"error": "bad signature"}'
    assert "not-the-secret" not in json.dumps(dls)


@pytest.mark.parametrize("fault,ambiguous", [
    (("status", 500, {"error": "db down"}), True),
    (("status", 503, None), False),
    (("slow", 1.5), True),
    (("reset_after",), True),
    (("reset_before",), True),
])
def test_transient_failures_are_retried_then_delivered_once(make_hub, webhook, fault,
                                                            ambiguous) -> None:
    hub = make_hub([webhook_sink(webhook)])
    seed(hub)
    webhook.inject(fault)
    first = deliver(hub, limit=1)
    assert first.retried == 1 and first.delivered == 0
    row = next(r for r in outbox_rows(hub) if r["state"] == "retrying")
    err = json.loads(row["last_error"])
    assert err["retryable"] and err["ambiguous"] is ambiguous
    # the backoff is short in tests; later passes deliver everything
    for _ in range(20):
        deliver(hub, now_fn=ticking())
        if all(r["state"] == "delivered" for r in outbox_rows(hub)):
            break
    assert all(r["state"] == "delivered" for r in outbox_rows(hub))
    assert len(webhook.created) == GOOD
    # a slow answer or a reset after acting means the same key arrives twice: the receiver
    # dedupes it, and the idempotency key is the same both times
    assert webhook.redeliveries() == (1 if fault[0] in ("slow", "reset_after") else 0)


def test_429_retry_after_is_honoured(make_hub, webhook) -> None:
    hub = make_hub([webhook_sink(webhook)])
    seed(hub)
    webhook.inject(("status", 429, {"error": "slow down"}, {"Retry-After": "120"}))
    before = now_utc()
    assert deliver(hub, limit=1).retried == 1
    row = next(r for r in outbox_rows(hub) if r["state"] == "retrying")
    wait = (parse_ts(row["next_attempt_at"]) - before).total_seconds()
    assert 119 <= wait <= 125
    assert json.loads(row["last_error"])["retry_after"] == 120
    deliver(hub)  # not due yet
    assert next(r for r in outbox_rows(hub) if r["id"] == row["id"])["state"] == "retrying"
    deliver(hub, now_fn=lambda: now_utc() + timedelta(seconds=121))
    assert next(r for r in outbox_rows(hub) if r["id"] == row["id"])["state"] == "delivered"


def test_retry_after_http_date_and_cap() -> None:
    from outbox.sinks.http import parse_retry_after

    now = now_utc()
    date = (now + timedelta(seconds=90)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert 88 <= parse_retry_after(date, now) <= 91
    assert parse_retry_after("999999", cap=3600) == 3600
    assert parse_retry_after("soon") is None


def test_400_dead_letters_then_replay_after_fix_delivers_once(make_hub, webhook) -> None:
    hub = make_hub([webhook_sink(webhook)])
    seed(hub)
    webhook.inject(("status", 400, {"error": "field case.title too long"}))
    stats = deliver(hub)
    assert stats.dead == 1 and stats.delivered == GOOD - 1
    dl = hub.store.dead_letters(stage="deliver")[0]
    assert "HTTP 400" in dl["reason"] and "not retryable" in dl["reason"]
    assert "too long" in dl["detail"]["body"]
    row = next(r for r in outbox_rows(hub) if r["state"] == "dead")
    replay(hub, dl["id"])
    assert deliver(hub).delivered == 1
    after = next(r for r in outbox_rows(hub) if r["id"] == row["id"])
    assert after["state"] == "delivered"
    assert after["idempotency_key"] == row["idempotency_key"]
    assert len(webhook.created) == GOOD and webhook.redeliveries() == 0


def test_connection_refused_is_retryable_not_ambiguous_and_gives_up(make_hub) -> None:
    hub = make_hub([{"name": "down", "type": "webhook", "url": "http://127.0.0.1:9/hook",
                     "timeout": 0.5, "connect_timeout": 0.5}])
    seed(hub)
    for _ in range(6):
        deliver(hub, now_fn=ticking())
    dls = hub.store.dead_letters(stage="deliver")
    assert len(dls) == GOOD
    assert "gave up after 5 attempts" in dls[0]["reason"]
    assert "cannot connect" in dls[0]["reason"]
    assert dls[0]["detail"]["ambiguous"] is False


def test_batching_posts_several_cases_per_request(webhook) -> None:
    sink = WebhookSink(WebhookSinkConfig(name="b", url=webhook.url, secret=webhook.secret,
                                         batch_size=10))
    ds = [Delivery(outbox_id=i, kind="case", idempotency_key=f"k{i}", case={"case_id": str(i)})
          for i in range(10)]
    out = sink.deliver_batch(ds)
    assert [o.remote_id for o in out] == [f"WH-{i + 1}" for i in range(10)]
    assert webhook.requests == 1 and len(webhook.created) == 10
    sink.close()


def test_signature_is_documented_scheme() -> None:
    # what docs/sinks.md tells a receiver to compute
    import hashlib
    import hmac

    body = b'{"a":1}'
    expected = "v1=" + hmac.new(b"s3cret", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert signature("s3cret", "1700000000", body) == expected


def test_receiver_rejects_stale_timestamp() -> None:
    with WebhookReceiver(window=300) as w:
        import requests

        body = b'{"idempotency_key":"x"}'
        old = "1700000000"
        r = requests.post(w.url, data=body, timeout=5, headers={
            "X-FeedbackHub-Timestamp": old,
            "X-FeedbackHub-Signature": signature(w.secret, old, body)})
        assert r.status_code == 401


def test_tls_is_verified_by_default(make_hub, tmp_path) -> None:
    import ssl

    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    with WebhookReceiver(tls=ctx) as w:
        hub = make_hub([webhook_sink(w), webhook_sink(w, name="trusted", ca_bundle=str(bundle))])
        seed(hub, 3)
        stats = deliver(hub)
        assert stats.by_sink["trusted"] == 3
        dls = hub.store.dead_letters(stage="deliver")
        assert len(dls) == 3 and all("TLS error" in d["reason"] for d in dls)
        assert len(w.created) == 3


def test_crash_between_post_and_receipt_resends_with_the_same_key(tmp_path, cli,
                                                                   webhook) -> None:
    from hub.config import load_config
    from hub.pipeline import Hub
    from tests.conftest import settled, write_config

    cfg = write_config(tmp_path, sinks=[webhook_sink(webhook)])
    with Hub(load_config(cfg)) as hub:
        seed(hub)
    crashed = cli(cfg, "run", "--once", env={"FEEDBACK_HUB_CRASH_AT": "after_sink_call:4"})
    assert crashed.returncode == -9
    # requests already written at the kill may still be arriving (the kernel sends what the
    # process wrote before it died): count what was stored once that has stopped changing
    before = settled(lambda: len(webhook.created))
    assert before >= 4  # reached the receiver; receipts are committed per chunk, so none was
    res = cli(cfg, "run", "--once", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["deliver"]["delivered"] == GOOD
    # what reached the receiver before the crash came again with the same key: stored once
    assert len(webhook.created) == GOOD
    assert webhook.redeliveries() == before


def test_rows_are_released_rather_than_sent_after_the_lease(make_hub, webhook) -> None:
    # a 1 s lease cannot cover 25 calls of up to 0.5 s: rows beyond the first chunk are
    # released and claimed again instead of being sent on an expired lease
    hub = make_hub([webhook_sink(webhook)], delivery={"lease": "1s", "batch_size": 100})
    seed(hub)
    assert deliver(hub).delivered == GOOD
    assert len(webhook.created) == GOOD and webhook.redeliveries() == 0
    attempts = hub.store.query("SELECT MAX(attempts) AS m FROM outbox")[0]["m"]
    assert attempts == 1  # a released row was never attempted


def test_pipelined_chunks_record_every_outcome_once(make_hub, webhook) -> None:
    """Many small chunks (concurrency 2: 8 rows each) overlap; a failure in one of them is
    retried alone, and every row gets exactly one receipt, one event and its own attempts."""
    hub = make_hub([webhook_sink(webhook, concurrency=2)])
    seed(hub)
    webhook.inject(("status", 503, None))
    stats = deliver(hub)
    assert stats.retried == 1
    for _ in range(10):  # the backoff is short in tests: the retry may already be done
        if stats.delivered == GOOD:
            break
        stats.delivered += deliver(hub, now_fn=ticking()).delivered
    assert stats.delivered == GOOD
    rows = outbox_rows(hub)
    assert all(r["state"] == "delivered" and r["remote_id"] for r in rows)
    assert sorted(r["attempts"] for r in rows) == [1] * (GOOD - 1) + [2]
    assert all(r["claimed_by"] is None for r in rows)
    receipts = hub.store.query("SELECT outbox_id, remote_id FROM receipts")
    assert sorted(r["outbox_id"] for r in receipts) == [r["id"] for r in rows]
    assert {r["id"]: r["remote_id"] for r in rows} == {r["outbox_id"]: r["remote_id"]
                                                       for r in receipts}
    events = hub.store.query("SELECT case_id FROM case_events WHERE kind = 'delivered'")
    assert len(events) == GOOD and len({e["case_id"] for e in events}) == GOOD
    statuses = hub.store.query("SELECT status FROM cases")
    assert {s["status"] for s in statuses} == {"delivered"}
    assert len(webhook.created) == GOOD and webhook.redeliveries() == 0


def test_claims_smaller_than_a_chunk_overlap_and_deliver_each_row_once(make_hub,
                                                                       webhook) -> None:
    """Claims of 7 rows with chunks of 16 (concurrency 4): each claim's last chunk is still in
    flight while the next claim is made; a 503 in the middle is retried alone."""
    hub = make_hub([webhook_sink(webhook, concurrency=4)], delivery={"batch_size": 7})
    seed(hub)
    webhook.inject(("status", 503, None))
    stats = deliver(hub)
    for _ in range(10):  # the backoff is short in tests: the retry may already be done
        if stats.delivered == GOOD:
            break
        stats.delivered += deliver(hub, now_fn=ticking()).delivered
    assert stats.delivered == GOOD
    assert len(webhook.created) == GOOD and webhook.redeliveries() == 0
    rows = outbox_rows(hub)
    assert sorted(r["attempts"] for r in rows) == [1] * (GOOD - 1) + [2]
    assert len(hub.store.query("SELECT id FROM receipts")) == GOOD


def test_a_chunk_that_waited_past_the_lease_margin_is_released_unattempted(
        make_hub, webhook) -> None:
    """Two chunks in flight, a third must wait for the first: when that wait ends after the
    deadline of the third's claim, its rows are released before their attempts are written
    and never sent; the first chunk's receipts are still committed."""

    from hub.pipeline import DeliverStats, _SinkFlow
    from outbox.store.timefmt import now_utc

    hub = make_hub([webhook_sink(webhook, concurrency=2)])
    seed(hub)
    webhook.inject(*[("slow", 0.15)] * 8)  # the first chunk (8 calls on 2 connections): 0.6 s
    rows = hub.store.claim_due(hub.worker_id, 24, 300)
    flow = _SinkFlow(hub, hub.sink("workorders"), DeliverStats(), now_utc, lease=2.0)
    assert flow.chunk == 8
    try:
        flow.feed(rows[:8])
        flow.feed(rows[8:16])
        flow.feed(rows[16:], deadline=time.monotonic() + 0.2)  # waits 0.6 s for the first
        assert len(flow.flying) == 1  # the second chunk; the third never started
        flow.drain()
    finally:
        flow.close()
    state = {r["id"]: r for r in outbox_rows(hub)}
    assert all(state[d.id]["state"] == "delivered" for d in rows[:16])
    assert all(state[d.id]["state"] == "pending" and state[d.id]["attempts"] == 0
               for d in rows[16:])
    assert not {d.idempotency_key for d in rows[16:]} & set(webhook.keys)
    assert len(webhook.created) == 16


def test_calls_still_queued_on_the_multiplexer_at_the_lease_margin_are_not_made(
        make_hub, webhook) -> None:
    """The multiplexer keeps calls queued until a connection is free: one still queued at
    ``start_by`` is not sent; its attempt is withdrawn and the row given back untouched."""
    from hub.pipeline import MuxPool
    from tests.delivery.conftest import feed_past_start_by

    hub = make_hub([webhook_sink(webhook, concurrency=2)])
    seed(hub)
    webhook.inject(("slow", 0.3), ("slow", 0.3))  # both connections busy for 0.3 s
    rows, state, _ = feed_past_start_by(hub, "workorders", MuxPool)
    given_back = [d for d in rows if state[d.id]["state"] == "pending"]
    assert sum(state[d.id]["state"] == "delivered" for d in rows) == 2
    assert len(given_back) == 6 and len(webhook.created) == 2
    assert all(state[d.id]["attempts"] == 0 and state[d.id]["claimed_by"] is None
               for d in given_back)
    assert not {d.idempotency_key for d in given_back} & set(webhook.keys)
