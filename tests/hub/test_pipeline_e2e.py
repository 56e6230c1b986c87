"""End to end: samples/ → jsonfile connector → SQLite store → jsonl sink, via the real CLI."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from tests.conftest import SAMPLES, jsonl_lines

SAMPLE_RECORDS = 27  # 24 NDJSON lines + 3 in the JSON array
GOOD = 25  # one line is not JSON, one record has neither title nor description


def db_count(folder: Path, sql: str) -> int:
    with sqlite3.connect(folder / "hub.db") as conn:
        return int(conn.execute(sql).fetchone()[0])


def test_run_once_delivers_every_good_record_once(hub_dir: Path, cli) -> None:
    res = cli(hub_dir / "feedback-hub.yaml", "run", "--once", "--json")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["ingest"][0]["inserted"] == SAMPLE_RECORDS - 1
    assert summary["ingest"][0]["dead"] == 1
    assert summary["process"]["cases_new"] == GOOD
    assert summary["process"]["failed"] == 1
    assert summary["process"]["kinds"] == {"complaint": 14, "help": 4, "inquiry": 4,
                                           "suggestion": 1, "praise": 1, "report": 1}
    assert summary["deliver"]["delivered"] == GOOD

    lines = jsonl_lines(hub_dir / "out" / "cases.jsonl")
    keys = [line["idempotency_key"] for line in lines]
    assert len(lines) == GOOD and len(set(keys)) == GOOD
    refs = sorted(line["case"]["reference"] for line in lines)
    assert refs[0] == "FB-20261124-000001" and len(set(refs)) == GOOD
    by_upstream = {line["case"]["origin"]["upstream_id"]: line["case"] for line in lines}
    lamp = by_upstream["APP-20261124-0001"]
    assert lamp["title"] == "路灯不亮"
    assert lamp["reporter"]["phone"] == "13812345678"
    assert lamp["location"]["community"] == "幸福里社区"
    assert lamp["kind"] == "complaint" and lamp["schema_version"] == "1.0"

    # files acknowledged only after the commit: moved to done/
    assert sorted(p.name for p in (hub_dir / "inbox" / "done").iterdir()) == sorted(
        p.name for p in (SAMPLES / "forward").iterdir())
    reasons = sorted(d["reason"] for d in summary["dead_letters_open"])
    assert "not valid JSON" in reasons[0]
    assert reasons[1].startswith("record has neither a title nor a description")


def test_second_run_delivers_nothing_new(hub_dir: Path, cli) -> None:
    cfg = hub_dir / "feedback-hub.yaml"
    assert cli(cfg, "run", "--once").returncode == 0
    # the platform drops the same exports again
    for f in (SAMPLES / "forward").iterdir():
        shutil.copy(f, hub_dir / "inbox" / f.name)
    res = cli(cfg, "run", "--once", "--json")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["ingest"][0]["inserted"] == 0
    assert summary["ingest"][0]["duplicates"] == SAMPLE_RECORDS
    assert summary["process"]["cases_new"] == 0
    assert summary["deliver"]["delivered"] == 0
    assert len(jsonl_lines(hub_dir / "out" / "cases.jsonl")) == GOOD
    assert db_count(hub_dir, "SELECT COUNT(*) FROM dead_letters") == 2
    assert db_count(hub_dir, "SELECT COUNT(*) FROM cases") == GOOD


@pytest.mark.parametrize("point", ["after_ingest_commit", "after_case_commit",
                                   "after_sink_call", "after_sink_call:7"])
def test_sigkill_at_each_stage_boundary_loses_and_duplicates_nothing(hub_dir: Path, cli,
                                                                     point: str) -> None:
    cfg = hub_dir / "feedback-hub.yaml"
    crashed = cli(cfg, "run", "--once", env={"FEEDBACK_HUB_CRASH_AT": point})
    assert crashed.returncode == -9, (crashed.returncode, crashed.stderr)
    if point == "after_ingest_commit":
        # committed but not acknowledged: the first file is still in the inbox
        assert len(list((hub_dir / "inbox").glob("*.*json"))) == 2
    for _ in range(3):  # rerun until everything went through
        res = cli(cfg, "run", "--once")
        assert res.returncode == 0, res.stderr
    lines = jsonl_lines(hub_dir / "out" / "cases.jsonl")
    keys = [line["idempotency_key"] for line in lines]
    assert len(keys) == GOOD and len(set(keys)) == GOOD
    assert db_count(hub_dir, "SELECT COUNT(*) FROM raw_records") == SAMPLE_RECORDS - 1
    assert db_count(hub_dir, "SELECT COUNT(*) FROM cases") == GOOD
    assert db_count(hub_dir, "SELECT COUNT(*) FROM outbox WHERE state = 'delivered'") == GOOD
    assert db_count(hub_dir, "SELECT COUNT(*) FROM dead_letters") == 2
    assert not list((hub_dir / "inbox").glob("*.*json"))


def test_replay_after_fixing_the_input_delivers_it_once(hub_dir: Path, cli,
                                                        tmp_path_factory) -> None:
    cfg = hub_dir / "feedback-hub.yaml"
    assert cli(cfg, "run", "--once").returncode == 0
    dls = json.loads(cli(cfg, "dead-letters", "list", "--json").stdout)
    by_stage = {d["stage"]: d for d in dls}
    assert set(by_stage) == {"ingest", "process"}

    shown = cli(cfg, "dead-letters", "show", str(by_stage["ingest"]["id"]))
    assert "not valid JSON" in shown.stdout and "这一行少了右括号" in shown.stdout

    fixes = tmp_path_factory.mktemp("fixes")
    (fixes / "line20.json").write_text(json.dumps(
        {"id": "APP-20261124-0020", "type": "投诉", "title": "井盖缺失",
         "content": "建设路口的井盖丢了，晚上很危险。"}, ensure_ascii=False), encoding="utf-8")
    (fixes / "rec22.json").write_text(json.dumps(
        {"id": "APP-20261124-0022", "type": "投诉", "title": "幸福路路面塌陷",
         "content": "幸福路中段路面塌陷一个大坑。", "reporter": {"name": "韩梅"}},
        ensure_ascii=False), encoding="utf-8")
    r1 = cli(cfg, "dead-letters", "replay", str(by_stage["ingest"]["id"]),
             "--payload", str(fixes / "line20.json"))
    assert r1.returncode == 0, r1.stderr
    r2 = cli(cfg, "dead-letters", "replay", str(by_stage["process"]["id"]),
             "--payload", str(fixes / "rec22.json"))
    assert r2.returncode == 0, r2.stderr

    lines = jsonl_lines(hub_dir / "out" / "cases.jsonl")
    titles = [line["case"]["title"] for line in lines]
    assert len(lines) == GOOD + 2 and titles.count("井盖缺失") == 1
    assert titles.count("幸福路路面塌陷") == 1
    # the replayed record kept its identity: same upstream id, same deterministic case
    rec22 = next(line["case"] for line in lines if line["case"]["title"] == "幸福路路面塌陷")
    assert rec22["origin"]["source_ref"] == "id:APP-20261124-0022"

    again = cli(cfg, "dead-letters", "replay", str(by_stage["process"]["id"]))
    assert again.returncode == 1 and "already replayed" in again.stderr
    assert json.loads(cli(cfg, "dead-letters", "list", "--json").stdout) == []
    assert cli(cfg, "run", "--once").returncode == 0
    assert len(jsonl_lines(hub_dir / "out" / "cases.jsonl")) == GOOD + 2


def test_failing_sink_retries_then_dead_letters_and_replay_delivers_once(hub_dir: Path,
                                                                        cli) -> None:
    cfg = hub_dir / "feedback-hub.yaml"
    text = cfg.read_text(encoding="utf-8").replace("backoff_initial: 1s", "backoff_initial: 0s")
    cfg.write_text(text, encoding="utf-8")
    # the sink's file path is a folder: every append fails (like a missing mount)
    (hub_dir / "out" / "cases.jsonl").mkdir(parents=True)
    res = cli(cfg, "run", "--once", "--json")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["deliver"]["delivered"] == 0
    assert summary["deliver"]["dead"] == GOOD
    dead = json.loads(cli(cfg, "dead-letters", "list", "--stage", "deliver", "--json").stdout)
    assert len(dead) == GOOD
    assert dead[0]["reason"].startswith("gave up after 3 attempts: cannot write")

    (hub_dir / "out" / "cases.jsonl").rmdir()
    res = cli(cfg, "dead-letters", "replay", "--all", "--stage", "deliver")
    assert res.returncode == 0, res.stderr
    lines = jsonl_lines(hub_dir / "out" / "cases.jsonl")
    assert len(lines) == GOOD and len({line["idempotency_key"] for line in lines}) == GOOD
    shown = cli(cfg, "cases", "show", lines[0]["case"]["reference"], "--json")
    events = [e["kind"] for e in json.loads(shown.stdout)["timeline"]]
    assert events.count("delivery_failed") == 1 and events[-1] == "delivered"
