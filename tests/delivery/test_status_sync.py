"""Closed loop: status read back from the Open311 receiver into the case timeline."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from hub.pipeline import run_once
from hub.status import collect_status
from outbox.status_sync import sync_status
from tests.delivery.conftest import GOOD, open311_sink, outbox_rows, seed

pytestmark = pytest.mark.integration


def later(hours: float) -> str:
    """A remote update time ``hours`` after now (cases are created now, and an update older
    than what was already recorded is ignored as out of order)."""
    return (datetime.now(timezone.utc) + timedelta(hours=hours)).isoformat()


def test_status_changes_recorded_once_and_out_of_order_ignored(make_hub, open311) -> None:
    hub = make_hub([open311_sink(open311, status_batch=10)])
    seed(hub)
    run_once(hub, stages=("ingest", "process", "deliver"))  # status pulled by hand below
    rows = outbox_rows(hub)
    sr = rows[0]["remote_id"]
    case_id = rows[0]["case_id"]
    open311.set_status(sr, "open", "已派单至路灯管理所", later(1))
    open311.set_status(rows[1]["remote_id"], "closed", "已修复", later(2))
    stats = sync_status(hub)
    # every delivered case is polled (in batches of 10); those still at their creation time
    # are recorded as open once
    assert stats.polled == GOOD and not stats.errors
    assert open311.gets["requests.json"] == 3
    first = stats.changes
    assert first == GOOD
    again = sync_status(hub)
    assert again.changes == 0  # repeated answers add nothing
    # an older update arriving later is ignored
    open311.set_status(sr, "closed", "旧状态", later(0.5))
    assert sync_status(hub).changes == 0
    # a newer one is recorded and closes the case
    open311.set_status(sr, "closed", "已修复，路灯恢复照明", later(10))
    assert sync_status(hub).changes == 1
    events = [e for e in hub.store.timeline(case_id) if e["kind"] == "status"]
    assert [e["data"]["status"] for e in events] == ["open", "closed"]
    assert events[-1]["data"]["agency_responsible"] == "城市管理局"
    assert hub.store.case_row(case_id)["status"] == "closed"
    by_status = collect_status(hub)["cases"]["by_status"]
    assert by_status == {"closed": 2, "open": GOOD - 2}
    # closed cases are no longer polled
    assert sync_status(hub).polled == GOOD - 2


def test_cases_show_prints_the_timeline(make_hub, open311, cli, tmp_path) -> None:
    hub = make_hub([open311_sink(open311)])
    refs = seed(hub)
    run_once(hub)
    row = outbox_rows(hub)[0]
    open311.set_status(row["remote_id"], "closed", "已处理完毕", later(10))
    sync_status(hub)
    res = cli(tmp_path / "feedback-hub.yaml", "cases", "show", refs[0])
    assert res.returncode == 0, res.stderr
    assert "delivered to city311" in res.stdout and "已处理完毕" in res.stdout
    res = cli(tmp_path / "feedback-hub.yaml", "status", "--json")
    assert json.loads(res.stdout)["cases"]["by_status"]["closed"] == 1


def test_status_sync_survives_an_unreachable_endpoint(make_hub, open311) -> None:
    hub = make_hub([open311_sink(open311)])
    seed(hub)
    run_once(hub)
    open311.stop()
    hub.sink("city311").transport.close()  # drop the kept-alive connection too
    stats = sync_status(hub)
    assert stats.errors and "cannot connect" in stats.errors[0]
