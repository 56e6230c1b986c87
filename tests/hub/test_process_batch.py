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
    (tmp_path / "inbox").mkdir(parents=True)
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


class _FailingPure:
    """A store-free enricher (runs in the batch's first pass) that fails on one title."""

    name = "failing_pure"
    reads_store = False

    def enrich(self, case: Case, ctx: Any) -> None:
        if case.title == "坏了":
            raise ValueError("pure enricher bug")


def _run(tmp_path: Path, premap: bool) -> tuple[list[Any], list[Any], list[Any]]:
    from normalizer.mappers.forward import ForwardMapper

    hub = _hub(tmp_path, batch_size=3)
    try:
        hub._enrichers = [_FailingPure(), *hub.enrichers]
        titles = ["路灯不亮", "坏了", "路灯不亮", "", "路灯闪", "路灯不亮", "坏了", "路灯坏了"]
        recs = [_raw(i, t) for i, t in enumerate(titles)]
        recs[3].payload["record"].update(content="")  # neither title nor description
        hub.store.commit_ingest("up", recs)
        saved = ForwardMapper.reads_store
        ForwardMapper.reads_store = not premap
        try:
            stats = process(hub)
        finally:
            ForwardMapper.reads_store = saved
        assert (stats.cases_new, stats.failed) == (5, 3)
        cases = hub.store.query("SELECT reference, raw_record_id, body FROM cases "
                                "ORDER BY reference")
        dead = hub.store.query("SELECT id, raw_record_id, reason FROM dead_letters ORDER BY id")
        raws = hub.store.query("SELECT id, state, state_reason, case_id FROM raw_records "
                               "ORDER BY id")
        return cases, dead, raws
    finally:
        hub.close()


def test_two_pass_batches_give_what_record_by_record_gives(tmp_path: Path) -> None:
    one = _run(tmp_path / "premapped", premap=True)
    other = _run(tmp_path / "in_turn", premap=False)
    assert one == other
    cases, dead, raws = one
    # failures are dead-lettered in record order, whichever pass they happened in
    assert [d["raw_record_id"] for d in dead] == [2, 4, 7]
    assert "pure enricher bug" in dead[0]["reason"] and "neither" in dead[1]["reason"]
    assert [r["state"] for r in raws] == ["processed", "failed", "processed", "failed",
                                          "processed", "processed", "failed", "processed"]
    assert [c["raw_record_id"] for c in cases] == [1, 3, 5, 6, 8]


class _Recorder:
    """A store-free enricher that logs (its name, the case's title) and fails on one title."""

    reads_store = False

    def __init__(self, name: str, log: list[tuple[str, str]], fail_on: str | None = None
                 ) -> None:
        self.name, self.log, self.fail_on = name, log, fail_on

    def enrich(self, case: Case, ctx: Any) -> None:
        self.log.append((self.name, case.title))
        if case.title == self.fail_on:
            raise ValueError(f"{self.name} bug")


def test_first_pass_runs_one_enricher_over_the_batch_at_a_time(tmp_path: Path) -> None:
    hub = _hub(tmp_path, batch_size=4)
    try:
        log: list[tuple[str, str]] = []
        hub._enrichers = [_Recorder("a", log), _Recorder("b", log, fail_on="t1"),
                          _Recorder("c", log), *hub.enrichers]
        hub.store.commit_ingest("up", [_raw(i, f"t{i}") for i in range(6)])
        stats = process(hub)
        assert (stats.cases_new, stats.failed) == (5, 1)
        # per batch: every case through a, then through b, then c; the case b failed on
        # goes no further (and is dead-lettered at its turn with b's error)
        assert log == [("a", "t0"), ("a", "t1"), ("a", "t2"), ("a", "t3"),
                       ("b", "t0"), ("b", "t1"), ("b", "t2"), ("b", "t3"),
                       ("c", "t0"), ("c", "t2"), ("c", "t3"),
                       ("a", "t4"), ("a", "t5"), ("b", "t4"), ("b", "t5"),
                       ("c", "t4"), ("c", "t5")]
        dead = hub.store.dead_letters(stage="process")
        assert [d["source_ref"] for d in dead] == ["id:1"] and "b bug" in dead[0]["reason"]
    finally:
        hub.close()
