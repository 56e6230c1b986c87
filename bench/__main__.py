"""``make bench``: run every benchmark, then render docs/benchmarks.md from bench/results/.

Each ``bench/bench_*.py`` is run in its own process (``python -m bench.bench_x``) and writes
``bench/results/<ID>.json``; a benchmark that fails is reported and the others still run.
``python -m bench --render`` only re-renders the page. ``python -m bench NAME...`` runs some.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
DOC = BENCH.parent / "docs" / "benchmarks.md"

HEADER = """# Benchmarks

Performance targets live here, never in timed tests. Each benchmark compares the hub with a
limit measured **in the same run on the same machine** (a raw client, a CLI, a trivial server),
so the ratio means something on any machine. Run them with `make bench` (every benchmark) or
`.venv/bin/python -m bench bench_process` (one); this page is regenerated from
`bench/results/*.json` each time. Figures below are the last measured ones; nothing here is
estimated.

| id | measure | value | limit measured in the same run | ratio | goal | measured |
|---|---|---|---|---|---|---|
"""


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:,.2f}" if v < 100 else f"{v:,.0f}"
    return "" if v is None else str(v)


def render() -> None:
    """Write docs/benchmarks.md from the result files."""
    rows, notes = [], []
    for path in sorted((BENCH / "results").glob("*.json"),
                       key=lambda p: (len(p.stem), p.stem)):
        doc = json.loads(path.read_text(encoding="utf-8"))
        for r in doc["rows"]:
            rows.append(f"| {doc['id']} | {r['measure']} | {_fmt(r['value'])} {r['unit']} | "
                        f"{_fmt(r.get('limit'))} | {_fmt(r.get('ratio'))} | "
                        f"{_fmt(r.get('goal'))} | {doc['measured_at'][:10]}, "
                        f"{doc.get('machine', '')} |")
        if doc.get("notes"):
            notes.append(f"- **{doc['id']}** ({doc.get('title', '')}): {doc['notes']}")
    DOC.parent.mkdir(exist_ok=True)
    text = HEADER + "\n".join(rows) + "\n"
    if notes:
        text += "\n## Notes\n\n" + "\n".join(notes) + "\n"
    DOC.write_text(text, encoding="utf-8")
    print(f"wrote {DOC}")


def main(argv: list[str]) -> int:
    """Run the benchmarks named in argv (default: all), then render the page."""
    if argv[:1] == ["--render"]:
        render()
        return 0
    names = argv or sorted(p.stem for p in BENCH.glob("bench_*.py"))
    failed = []
    for name in names:
        print(f"== {name}", flush=True)
        start = time.monotonic()
        res = subprocess.run([sys.executable, "-m", f"bench.{name}"], cwd=BENCH.parent)
        print(f"   ({time.monotonic() - start:.0f}s, exit {res.returncode})", flush=True)
        if res.returncode != 0:
            failed.append(name)
    render()
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
