"""Fixtures: real receivers on free ports and a hub whose sinks point at them."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from hub.config import load_config
from hub.pipeline import Hub
from tests.conftest import SAMPLES, write_config
from tests.delivery.receivers import Open311Receiver, WebhookReceiver

GOOD = 25  # cases seeded per test
T0 = datetime(2026, 11, 24, 2, 0, tzinfo=timezone.utc)
FAST_POLICY = {"backoff_initial": "0.01s", "backoff_max": "0.05s", "max_attempts": 5,
               "jitter": 0.0}


@pytest.fixture
def open311() -> Iterator[Open311Receiver]:
    with Open311Receiver() as r:
        yield r


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as r:
        yield r


def open311_sink(receiver: Open311Receiver, **over: Any) -> dict[str, Any]:
    cfg = {"name": "city311", "type": "open311", "base_url": receiver.url + "/open311/v2/",
           "api_key": "test-key", "service_codes": {"streetlight": "001"},
           "default_service_code": "002", "attributes": {"urgency": "urgency.level"},
           "default_address": "市民中心", "timeout": 0.5, "connect_timeout": 0.5,
           "token_poll_interval": 0.01, "token_poll_limit": 5}
    cfg.update(over)
    return cfg


def webhook_sink(receiver: WebhookReceiver, **over: Any) -> dict[str, Any]:
    cfg = {"name": "workorders", "type": "webhook", "url": receiver.url + "/hook",
           "secret": receiver.secret, "timeout": 0.5, "connect_timeout": 0.5}
    cfg.update(over)
    return cfg


HubFactory = Callable[..., Hub]

#: (category, urgency, has location) of the 25 seeded cases: 3 streetlight, 1 gas emergency.
CATEGORIES = (["streetlight"] * 3 + ["utility.gas"] + ["noise.construction"] * 3
              + ["road", "drainage", "sanitation", "greenery", "parking", "property",
                 "food_safety", "traffic", "public_transport", "utility.water", "noise.business",
                 "noise.neighbour", "illegal_construction", "elevator_retrofit", None, None,
                 "utility.power", "policy.household"])


def seed(hub: Hub, n: int = GOOD, source: str = "city-app") -> list[str]:
    """Save ``n`` cases (independent of mappers and enrichment) routed by the hub's rules."""
    from hub.routing import route
    from normalizer.case import (
        Case,
        CaseKind,
        Channel,
        Classification,
        Location,
        Origin,
        Reporter,
        Urgency,
        UrgencyInfo,
        case_id_for,
    )

    refs = []
    with hub.store.process_tx() as tx:
        for i in range(n):
            cat = CATEGORIES[i % len(CATEGORIES)]
            urgency = Urgency.emergency if cat == "utility.gas" else Urgency.normal
            loc = (Location(address=f"幸福路{i}号", lat=31.2 + i / 1000, lon=121.4)
                   if i % 6 else Location())
            case = Case(case_id=case_id_for(source, f"id:{i}"),
                        origin=Origin(channel=Channel.forward, source=source,
                                      source_ref=f"id:{i}", received_at=T0),
                        kind=CaseKind.complaint, title=f"问题{i}",
                        description=f"第{i}号问题的描述。", reporter=Reporter(
                            name="王小明", phone="13812345678"), location=loc,
                        classification=Classification(category_code=cat),
                        urgency=UrgencyInfo(level=urgency))
            sinks = route(case, hub.config.routing, hub.sink_names())
            saved, _ = tx.save_case(case, None, sinks)
            refs.append(saved.reference or "")
    return refs


@pytest.fixture
def make_hub(tmp_path: Path) -> Iterator[HubFactory]:
    """Build a Hub over the sample exports with the given sinks (closed at the end)."""
    hubs: list[Hub] = []

    def build(sinks: list[dict[str, Any]], samples: bool = False, **over: Any) -> Hub:
        over.setdefault("delivery", FAST_POLICY)
        write_config(tmp_path, sinks=sinks, **over)
        if samples:
            for f in (SAMPLES / "forward").iterdir():
                shutil.copy(f, tmp_path / "inbox" / f.name)
        hub = Hub(load_config(tmp_path / "feedback-hub.yaml"))
        hubs.append(hub)
        return hub

    yield build
    for h in hubs:
        h.close()


def ticking(step: float = 10.0) -> Callable[[], datetime]:
    """A clock that moves ``step`` seconds ahead on every call (backoffs pass at once)."""
    import itertools

    from outbox.store.timefmt import now_utc

    counter = itertools.count(1)
    return lambda: now_utc() + timedelta(seconds=step * next(counter))


def outbox_rows(hub: Hub, sink: str | None = None) -> list[dict[str, Any]]:
    sql = "SELECT * FROM outbox" + (" WHERE sink = ?" if sink else "") + " ORDER BY id"
    return hub.store.query(sql, (sink,) if sink else ())


def feed_past_start_by(hub: Hub, sink: str, pool: type, rows: int = 8, start_in: float = 0.1
                       ) -> tuple[list[Any], dict[int, dict[str, Any]], int]:
    """Claim ``rows`` rows and feed them as one chunk to ``sink``'s flow (its pool must be a
    ``pool``) with queued calls allowed to start only for ``start_in`` seconds; returns the
    claimed rows, the outbox rows by id afterwards and the flow's chunk size."""
    import time

    from hub.pipeline import DeliverStats, _SinkFlow
    from outbox.store.timefmt import now_utc

    claimed = hub.store.claim_due(hub.worker_id, rows, 300)
    flow = _SinkFlow(hub, hub.sink(sink), DeliverStats(), now_utc, lease=300)
    assert isinstance(flow.pool, pool)
    try:
        flow.feed(claimed, start_by=time.monotonic() + start_in)
        flow.drain()
    finally:
        flow.close()
    return claimed, {r["id"]: r for r in outbox_rows(hub)}, flow.chunk
