"""``feedback-hub report`` over a real SQLite store filled by the enricher chain.

Cases go through the default enrichment chain inside the store's own process transaction (so
linking runs against the store's index-backed ``nearby_cases``), downstream status arrives as
``status`` events, and the report is checked against what was put in.
"""

from __future__ import annotations

import csv
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from hub.report import build_report, parse_period, report_command, write_chart, write_csv
from normalizer.enrichment_config import build_enrichers
from normalizer.similarity import fingerprint
from outbox.blobs import BlobStore
from outbox.store import open_store
from tests.normalizer.helpers import make_case

T0 = datetime(2026, 11, 2, 1, 0, tzinfo=timezone.utc)  # a Monday, 09:00 in Shanghai
MESSAGES = [
    ("光明小区3号楼门口的路灯不亮了，晚上很黑", "13800000001"),
    ("光明小区3号楼门口路灯还是不亮，晚上太黑了", "13800000002"),
    ("光明小区门口的路灯坏了好几天了", "13800000003"),
    ("光明小区垃圾桶满了没人清运", "13800000004"),
    ("锦绣花园夜间施工噪音扰民", "13800000005"),
    ("请问社保卡丢了怎么补办？", "13800000006"),
    ("光明小区3号楼路灯又坏了，我上周就反映过，怎么还不修", "13800000001"),
]


@pytest.fixture
def store(tmp_path: Path):
    st = open_store(f"sqlite:///{tmp_path / 'hub.db'}", BlobStore(tmp_path / "blobs"))
    chain = build_enrichers({})
    saved = []
    with st.process_tx(T0) as tx:
        for i, (text, phone) in enumerate(MESSAGES):
            case = make_case(text, case_id=f"case-{i}", phone=phone,
                             received_at=T0 + timedelta(hours=i))
            for e in chain:
                e.enrich(case, tx)
            case, _ = tx.save_case(case, None, [], [],
                                   fingerprint(f"{case.title}\n{case.description}"))
            saved.append(case)
    # downstream: case-0 acknowledged in 2 h and closed next day; case-3 closed after 10 days;
    # case-5 acknowledged late (30 h)
    st.add_event("case-0", "s1", "status", "open", {"status": "open"}, at=T0 + timedelta(hours=2),
                 status="open")
    st.add_event("case-0", "s2", "status", "closed", {"status": "closed"},
                 at=T0 + timedelta(days=1), status="closed")
    st.add_event("case-3", "s3", "status", "closed", {"status": "closed"},
                 at=T0 + timedelta(days=10), status="closed")
    st.add_event("case-5", "s4", "status", "open", {"status": "open"},
                 at=T0 + timedelta(hours=35), status="open")
    yield st, saved
    st.close()


def test_linking_against_the_real_store(store) -> None:
    _, saved = store
    second, repeat = saved[1], saved[6]
    assert second.links.duplicate_of is not None
    assert second.links.duplicate_of.case_id == "case-0"
    assert repeat.links.repeat_complaint
    assert saved[2].urgency.level.value == "urgent"  # third report of the same lamp


def test_report_figures(store) -> None:
    st, _ = store
    rep = build_report(st, since=T0 - timedelta(days=1), until=T0 + timedelta(days=30),
                       now=T0 + timedelta(days=20), min_count=3)
    assert rep.total == 7
    assert dict(rep.by_channel) == {"forward": 7}
    cats = {k: n for k, _, n in rep.by_category}
    assert cats["streetlight"] == 4 and cats["sanitation"] == 1
    assert dict(rep.by_department)["城市管理局（路灯管理所）"] == 4
    assert rep.hotspots[0] == ("光明社区", "南城区", "streetlight", 4)
    assert rep.repeat_complaints == 1
    # respond: case-0 met (2 h), case-5 missed (35 h > 24 h), case-3 closed at 10 days (its
    # first status) missed; the other four never answered and are past due
    assert rep.sla["respond"]["met"] == 1 and rep.sla["respond"]["missed"] == 6
    # resolve: case-0 met; case-3 closed too late; the rest overdue by day 20
    assert rep.sla["resolve"]["met"] == 1
    assert rep.closed == 2 and round(rep.closure_rate, 3) == round(2 / 7, 3)
    assert len(rep.open_cases) == 5


def test_csv_chart_and_public_board(store, tmp_path: Path) -> None:
    st, _ = store
    rep = build_report(st, since=T0 - timedelta(days=1), until=T0 + timedelta(days=30))
    files = write_csv(rep, tmp_path / "csv")
    with (tmp_path / "csv" / "by_category.csv").open(encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    assert {"category": "streetlight", "label": "路灯故障", "cases": "4"} in rows
    assert {p.name for p in files} >= {"hotspots.csv", "sla.csv", "summary.csv"}
    page = write_chart(rep, tmp_path / "report.html").read_text(encoding="utf-8")
    assert "<svg" in page and "光明社区 · streetlight" in page


def test_cli_command(store, tmp_path: Path) -> None:
    st, _ = store
    obj = SimpleNamespace(hub=SimpleNamespace(store=st,
                                              config=SimpleNamespace(timezone="Asia/Shanghai")))
    board = tmp_path / "board.csv"
    res = CliRunner().invoke(report_command, ["--since", "2026-11-01", "--until", "2026-11-30",
                                              "--public-board", str(board), "--json"], obj=obj)
    assert res.exit_code == 0, res.output
    assert '"total": 7' in res.output
    text = board.read_text(encoding="utf-8-sig")
    assert "13800000001" not in text and "光明社区" in text
    assert text.count("\n") == 6  # header + 5 unresolved
    res = CliRunner().invoke(report_command, ["--since", "2026-11-01"], obj=obj)
    assert res.exit_code == 0 and "Hotspots" in res.output


def test_period_parsing() -> None:
    now = datetime(2026, 11, 25, 2, 0, tzinfo=timezone.utc)
    start, stop = parse_period("2026-11-01", "2026-11-24", "Asia/Shanghai", now)
    assert start.isoformat() == "2026-11-01T00:00:00+08:00"
    assert stop.isoformat() == "2026-11-25T00:00:00+08:00"
    start, stop = parse_period("7d", None, "Asia/Shanghai", now)
    assert stop - start == timedelta(days=7)
