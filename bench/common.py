"""Shared helpers for benchmarks: result files, peak RSS, a work folder."""

from __future__ import annotations

import json
import platform
import resource
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
WORK = BENCH / ".work"


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_results(bench_id: str, title: str, rows: list[dict[str, Any]], notes: str = "") -> Path:
    """Write one benchmark's rows to bench/results/<id>.json (rendered into docs/benchmarks.md).

    Each row: measure, value, unit, and optionally limit (what it is compared with, measured in
    the same run), ratio, goal.
    """
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {"id": bench_id, "title": title, "rows": rows, "notes": notes,
           "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "machine": f"{platform.machine()}, {_cores()} cores, Python {platform.python_version()}"}
    path = RESULTS / f"{bench_id}.json"
    path.write_text(json.dumps(doc, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    for r in rows:
        ratio = f"  ratio {r['ratio']:.2f}" if r.get("ratio") is not None else ""
        print(f"{bench_id}  {r['measure']}: {r['value']:.1f} {r['unit']}{ratio}")
    return path


def _cores() -> int:
    import os

    return os.cpu_count() or 1
