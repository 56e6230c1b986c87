"""Checks of migration 2 (indexes only what the queries read), shared by SQLite and PostgreSQL.

A store is first built at schema version 1 (the old indexes), given cases with and without
community, address, reporter and coordinates and a timeline, then migrated: the linking
lookups must find the same cases through the new partial indexes, the timeline reads the same,
and the plans must use the partial indexes (not a scan).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from normalizer.case import Case, Channel, Classification, Location, Origin, Reporter, case_id_for
from outbox.store import sql as store_sql
from outbox.store.migrations import MIGRATIONS, latest_version
from outbox.store.sql import ProcessTx, SqlStore

T0 = datetime(2026, 11, 24, 10, 0, tzinfo=timezone.utc)
#: index name → the column whose NULLs it leaves out
PARTIAL = {"cases_cat_cell": "cell", "cases_cat_comm": "community",
           "cases_cat_addr": "address", "cases_reporter": "reporter_key"}


def version_1_store(open_fn: Callable[[], SqlStore], monkeypatch: pytest.MonkeyPatch
                    ) -> SqlStore:
    """A store migrated to version 1 only (the schema before migration 2)."""
    with monkeypatch.context() as m:
        m.setattr(store_sql, "MIGRATIONS", MIGRATIONS[:1])
        store = open_fn()
    assert store.schema_version() == 1
    return store


def seed(store: SqlStore) -> list[Case]:
    """Cases at one spot, each lacking a different lookup value; events on each."""
    cases = []
    for i in range(24):
        ref = f"r{i}"
        has = {k: i % 4 != j for j, k in enumerate(("coords", "community", "address",
                                                     "reporter"))}
        case = Case(case_id=case_id_for("src", ref), title="路灯不亮",
                    description=f"幸福路{i % 3}号门口的路灯不亮",
                    origin=Origin(channel=Channel.forward, source="src", source_ref=ref,
                                  received_at=T0 + timedelta(minutes=i)),
                    classification=Classification(category_code="streetlight"),
                    reporter=Reporter(phone="13800000001" if has["reporter"] else None,
                                      anonymous=not has["reporter"]),
                    location=Location(lat=31.2300 if has["coords"] else None,
                                      lon=121.4700 if has["coords"] else None,
                                      community="幸福社区" if has["community"] else None,
                                      address=f"幸福路{i % 3}号" if has["address"] else None))
        cases.append(case)
    with store.process_tx() as tx:
        for case in cases:
            tx.save_case(case, None, ["s1"])
    for case in cases:
        store.add_event(case.case_id, "status:1", "status", "in progress", {"status": "open"},
                        at=T0 + timedelta(hours=1))
    return cases


def lookups(store: SqlStore) -> list[list[str]]:
    """What the linking lookups find for a few probes (case ids, in the order returned)."""
    probes: list[dict[str, Any]] = [
        {"lat": 31.2300, "lon": 121.4700, "radius_m": 50.0},
        {"community": "幸福社区"},
        {"address": "幸福路1号"},
        {"reporter_key": _reporter_key()},
        {"lat": 31.2300, "lon": 121.4700, "radius_m": 50.0, "community": "幸福社区",
         "reporter_key": _reporter_key()},
        {"lat": 31.2300, "lon": 121.4700, "radius_m": 50.0, "address": "幸福路2号"},
    ]
    out = []
    with store.process_tx() as tx:
        for p in probes:
            for cat in ("streetlight", None):
                found = tx.nearby_cases(category_code=cat, since=T0,
                                        until=T0 + timedelta(days=1), limit=50, **p)
                out.append([c["case_id"] for c in found])
    return out


def _reporter_key() -> str:
    from normalizer.case import reporter_key

    return reporter_key(Case(case_id="x", title="x", reporter=Reporter(phone="13800000001"),
                             origin=Origin(channel=Channel.forward, source="src",
                                           source_ref="x", received_at=T0))) or ""


def timelines(store: SqlStore, cases: list[Case]) -> list[list[tuple[str, str]]]:
    return [[(e["kind"], e["event_id"]) for e in store.timeline(c.case_id)] for c in cases]


def check_migration_2(store_v1: SqlStore, reopen: Callable[[], SqlStore],
                      indexes: Callable[[SqlStore], dict[str, str]]) -> SqlStore:
    """Seed a version-1 store, migrate it, and check lookups, timelines and indexes."""
    cases = seed(store_v1)
    before_lookups, before_timelines = lookups(store_v1), timelines(store_v1, cases)
    assert "case_events_case" in indexes(store_v1)
    assert sum(map(len, before_lookups)) > 0
    store_v1.close()
    store = reopen()
    assert store.schema_version() == latest_version() == 2
    ix = indexes(store)
    assert "case_events_case" not in ix
    for name, col in PARTIAL.items():
        assert f"{col} IS NOT NULL" in ix[name].replace("(", "").replace(")", ""), ix[name]
    assert lookups(store) == before_lookups
    assert timelines(store, cases) == before_timelines
    # and new cases after the migration are found as before
    return store


def nearby_statements() -> list[str]:
    """The linking statement of every shape a lookup can take."""
    out = []
    for no_cat in (False, True):
        for no_until in (False, True):
            for ncells in (0, 4):
                for place in ("", "community", "address"):
                    for reporter in (False, True):
                        if ncells or place or reporter:
                            out.append(ProcessTx._nearby_statement(no_cat, no_until, ncells,
                                                                   place, reporter))
    return out


def expected_indexes(sql: str) -> set[str]:
    """The partial indexes a nearby statement's lookups should read."""
    want = set()
    if "cell IN" in sql:
        want.add("cases_cat_cell")
    if "community = ?" in sql:
        want.add("cases_cat_comm")
    if "address = ?" in sql:
        want.add("cases_cat_addr")
    if "reporter_key = ?" in sql:
        want.add("cases_reporter")
    return want
