"""Correctness guard for P3 work: a digest of everything the process stage writes.

Runs the P3 pipeline (the generated upstream records of ``bench_process``, the default
enrichment chain, batches of 1,000) on N records, with a few malformed records mixed in so
dead-lettering is covered too, then prints one sha256 per table and one over all of them:
case bodies and indexed columns, timeline events, outbox rows, raw-record states, dead
letters, case keys, reference counters. Volatile columns (wall-clock times written by the
store: created_at, updated_at, processed_at, event and outbox times) are left out.

    .venv/bin/python -m bench.p3_digest 10000 [--dump FILE]

``--dump`` writes the rows themselves (JSON lines) so two runs can be diffed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from typing import Any

import yaml

from bench.bench_process import records
from bench.common import WORK
from hub.config import load_config
from hub.pipeline import Hub, process

#: every BAD_EVERY-th record is made malformed, in one of these ways
BAD_EVERY = 397
_BREAKERS = (
    lambda rec: rec.pop("title") and rec.pop("content"),  # neither title nor description
    lambda rec: rec["location"].update(lat="north"),  # lat is not a number
    lambda rec: rec.update(kind="grumble"),  # unknown kind
    lambda rec: rec.update(created_at="yesterday"),  # bad time
)

QUERIES = {
    "cases": "SELECT case_id, reference, source, source_ref, channel, kind, category_code, "
             "department, urgency, received_at, lat, lon, cell, district, street, community, "
             "address, reporter_key, fingerprint, needs_review, raw_record_id, status, body "
             "FROM cases ORDER BY case_id",
    "events": "SELECT case_id, event_id, kind, text, data FROM case_events "
              "ORDER BY case_id, event_id",
    "outbox": "SELECT sink, case_id, kind, event_id, idempotency_key, state, attempts "
              "FROM outbox ORDER BY idempotency_key",
    "raw": "SELECT id, source, source_ref, state, state_reason, case_id FROM raw_records "
           "ORDER BY id",
    "dead_letters": "SELECT stage, source, source_ref, reason, blob_sha256, raw_record_id, "
                    "outbox_id, detail, replay_state FROM dead_letters ORDER BY raw_record_id, id",
    "case_keys": "SELECT key_type, key, case_id FROM case_keys ORDER BY key_type, key",
    "reference_counters": "SELECT day, last FROM reference_counters ORDER BY day",
}


def run(n: int, dump: str | None = None) -> dict[str, str]:
    """Process n generated records in a fresh store; return sha256 per table and overall."""
    work = WORK / "p3-digest"
    shutil.rmtree(work, ignore_errors=True)
    (work / "inbox").mkdir(parents=True)
    cfg_path = work / "feedback-hub.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "store": "sqlite:///hub.db", "blobs": "blobs",
        "connectors": [{"name": "bench", "type": "jsonfile", "path": "inbox"}],
        "sinks": [{"name": "file", "type": "jsonl", "path": "out.jsonl"}],
        "process": {"batch_size": 1000}, "logging": {"level": "ERROR"}}), encoding="utf-8")
    recs = records(n)
    for i in range(BAD_EVERY - 1, n, BAD_EVERY):
        _BREAKERS[(i // BAD_EVERY) % len(_BREAKERS)](recs[i].payload["record"])
    hub = Hub(load_config(cfg_path))
    try:
        for i in range(0, n, 5000):
            hub.store.commit_ingest("bench", recs[i:i + 5000])
        stats = process(hub)
        digests: dict[str, str] = {}
        out = open(dump, "w", encoding="utf-8") if dump else None
        try:
            for name, sql in QUERIES.items():
                h = hashlib.sha256()
                for row in hub.store.query(sql):
                    line = json.dumps(_clean(name, row), ensure_ascii=False, sort_keys=True)
                    h.update(line.encode() + b"\n")
                    if out:
                        out.write(f"{name}\t{line}\n")
                digests[name] = h.hexdigest()
        finally:
            if out:
                out.close()
        total = hashlib.sha256("".join(digests.values()).encode()).hexdigest()
        digests["ALL"] = total
        digests["stats"] = (f"seen={stats.seen} new={stats.cases_new} failed={stats.failed} "
                            f"ignored={stats.ignored}")
        return digests
    finally:
        hub.close()
        shutil.rmtree(work, ignore_errors=True)


def _clean(table: str, row: dict[str, Any]) -> dict[str, Any]:
    row = dict(row)
    for col in ("body", "data", "detail"):
        if isinstance(row.get(col), str):
            row[col] = json.loads(row[col])  # compare content, not spelling
    return row


def main() -> None:
    args = sys.argv[1:]
    dump = None
    if "--dump" in args:
        i = args.index("--dump")
        dump = args[i + 1]
        del args[i:i + 2]
    n = int(args[0]) if args else 10_000
    for k, v in run(n, dump).items():
        print(f"{k:20s} {v}")


if __name__ == "__main__":
    main()
