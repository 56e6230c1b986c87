"""The process stage in-process on a real SQLite store: a record that fails in an enricher
after the mapper ran is dead-lettered alone, the batch around it is committed, and the cyclic
garbage collector is paused only while a batch is processed."""

from __future__ import annotations

import gc
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from connectors.base import RawRecord
from hub.config import load_config
from hub.pipeline import Hub, process
from normalizer.case import Case, Channel

T0 = datetime(2026, 11, 24, 2, 0, tzinfo=timezone.utc)


class _Probe:
    """An enricher that notes whether the collector runs and fails on one title."""

    name = "probe"

    def __init__(self) -> None:
        self.gc_enabled: list[bool] = []

    def enrich(self, case: Case, ctx: Any) -> None:
        self.gc_enabled.append(gc.isenabled())
        if case.title == "boom":
            raise RuntimeError("enricher bug")


def _hub(tmp_path: Path, batch_size: int) -> Hub:
    cfg = tmp_path / "feedback-hub.yaml"
    (tmp_path / "inbox").mkdir()
    cfg.write_text(yaml.safe_dump({
        "store": "sqlite:///hub.db", "blobs": "blobs",
        "connectors": [{"name": "up", "type": "jsonfile", "path": "inbox"}],
        "sinks": [{"name": "file", "type": "jsonl", "path": "out.jsonl"}],
        "process": {"batch_size": batch_size}}), encoding="utf-8")
    return Hub(load_config(cfg))


def _raw(i: int, title: str) -> RawRecord:
    return RawRecord(source="up", channel=Channel.forward, source_ref=f"id:{i}", received_at=T0,
                     payload={"record": {"id": i, "title": title,
                                         "content": f"{title}，幸福路{i}号门口的路灯不亮了。",
                                         "location": {"lat": 31.2, "lon": 121.45}}})


def test_enricher_failure_dead_letters_one_record_and_commits_the_rest(tmp_path: Path) -> None:
    hub = _hub(tmp_path, batch_size=4)
    try:
        probe = _Probe()
        hub._enrichers = [*hub.enrichers, probe]
        titles = ["路灯不亮", "路灯坏了", "boom", "路灯不亮", "路灯闪", "路灯不亮"]
        hub.store.commit_ingest("up", [_raw(i, t) for i, t in enumerate(titles)])
        assert gc.isenabled()
        stats = process(hub)
        assert gc.isenabled()  # restored after every batch, also after the failure
        assert probe.gc_enabled == [False] * len(titles)
        assert (stats.cases_new, stats.failed) == (5, 1)
        states = hub.store.query("SELECT source_ref, state FROM raw_records ORDER BY id")
        assert [r["state"] for r in states] == ["processed", "processed", "failed",
                                                "processed", "processed", "processed"]
        dead = hub.store.dead_letters(stage="process")
        assert len(dead) == 1 and dead[0]["source_ref"] == "id:2"
        assert "enricher bug" in dead[0]["reason"]
        # the failed record left nothing behind: no case, event or outbox row of its own
        assert hub.store.query("SELECT COUNT(*) AS n FROM cases")[0]["n"] == 5
        assert hub.store.query("SELECT COUNT(*) AS n FROM outbox")[0]["n"] == 5
        assert hub.store.query("SELECT COUNT(*) AS n FROM case_events")[0]["n"] == 5
        refs = [r["reference"] for r in hub.store.query(
            "SELECT reference FROM cases ORDER BY reference")]
        # it failed before a number was allocated: the numbers run on without a gap
        assert refs == [f"FB-20261124-{i:06d}" for i in range(1, 6)]
        # linking saw the cases saved before it in the same batch
        linked = hub.store.query("SELECT body FROM cases WHERE source_ref = 'id:1'")[0]["body"]
        assert '"related_cases":[{' in linked
    finally:
        hub.close()


def test_collector_left_off_when_the_application_turned_it_off(tmp_path: Path) -> None:
    hub = _hub(tmp_path, batch_size=2)
    try:
        hub.store.commit_ingest("up", [_raw(i, "路灯不亮") for i in range(3)])
        gc.disable()
        try:
            assert process(hub).cases_new == 3
            assert not gc.isenabled()
        finally:
            gc.enable()
    finally:
        hub.close()
