"""``feedback-hub report``: what came in, where, how fast it was handled.

Over a period (cases by ``received_at``): counts by channel, category and department; hotspots
(area × category with at least ``--min-count`` cases; the area is the community, else the street,
else the district); the repeat-complaint rate; SLA compliance from the case timeline; and the
closure rate (办结率) once downstream reports status.

SLA, from the timeline: a case *responded* at its first ``status`` event from downstream (open
or closed) and was *resolved* at its first ``status`` event with status ``closed``. A deadline is
met when that happened by ``respond_by`` / ``resolve_by``, missed when it happened later or has
not happened and the deadline has passed, and pending otherwise. Rates are met / (met + missed).

Output: tables on the terminal, ``--json``, CSV files (``--csv DIR``), an HTML page with bar
charts (``--chart FILE.html``, no external scripts), and a redacted CSV of unresolved cases for a
public 未解决事项 board (``--public-board FILE.csv``).

The command reads through ``store.query(sql, params)`` only (read-only, portable SQL).
"""

from __future__ import annotations

import csv
import html
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import click

_DURATION = re.compile(r"^(\d+)([hdw])$")


def _ts(dt: datetime) -> str:
    from outbox.store.timefmt import ts

    return ts(dt)


def _parse(value: Any) -> datetime | None:
    if not value:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    dt = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def _loads(value: Any) -> Any:
    if isinstance(value, (dict, list)) or value is None:
        return value
    return json.loads(value)


@dataclass
class Report:
    """The figures of one report."""

    since: datetime
    until: datetime
    total: int = 0
    by_channel: list[tuple[str, int]] = field(default_factory=list)
    by_category: list[tuple[str, str, int]] = field(default_factory=list)
    by_department: list[tuple[str, int]] = field(default_factory=list)
    hotspots: list[tuple[str, str, str, int]] = field(default_factory=list)
    repeat_complaints: int = 0
    sla: dict[str, Counter[str]] = field(default_factory=dict)
    closed: int = 0
    open_cases: list[dict[str, Any]] = field(default_factory=list)

    @property
    def repeat_rate(self) -> float:
        """Share of cases flagged as repeat complaints."""
        return self.repeat_complaints / self.total if self.total else 0.0

    @property
    def closure_rate(self) -> float:
        """办结率: share of the period's cases closed downstream."""
        return self.closed / self.total if self.total else 0.0

    def sla_rate(self, which: str) -> float | None:
        """met / (met + missed) for ``respond`` or ``resolve`` (None when nothing is due)."""
        c = self.sla.get(which, Counter())
        due = c["met"] + c["missed"]
        return c["met"] / due if due else None

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "since": self.since.isoformat(), "until": self.until.isoformat(),
            "total": self.total,
            "by_channel": [{"channel": k, "cases": n} for k, n in self.by_channel],
            "by_category": [{"category": k, "label": lab, "cases": n}
                            for k, lab, n in self.by_category],
            "by_department": [{"department": k, "cases": n} for k, n in self.by_department],
            "hotspots": [{"area": a, "district": d, "category": c, "cases": n}
                         for a, d, c, n in self.hotspots],
            "repeat_complaints": self.repeat_complaints,
            "repeat_rate": round(self.repeat_rate, 4),
            "sla": {k: {**dict(v), "rate": (round(r, 4) if (r := self.sla_rate(k)) is not None
                                            else None)} for k, v in self.sla.items()},
            "closed": self.closed, "closure_rate": round(self.closure_rate, 4),
        }


def build_report(store: Any, *, since: datetime, until: datetime, now: datetime | None = None,
                 min_count: int = 3, top: int = 20) -> Report:
    """Compute the report over cases received in ``[since, until)``.

    Args:
        store: anything with ``query(sql, params) -> list[dict]`` over ``cases`` and
            ``case_events``.
        since: start of the period (aware).
        until: end of the period (aware, exclusive).
        now: the time deadlines are judged at (default: now).
        min_count: fewest cases an area × category needs to be a hotspot.
        top: how many hotspots to list.
    """
    now = now or datetime.now(timezone.utc)
    rep = Report(since=since, until=until)
    period = (_ts(since), _ts(until))
    where = "received_at >= ? AND received_at < ?"
    rep.total = int(store.query(f"SELECT COUNT(*) AS n FROM cases WHERE {where}",
                                period)[0]["n"])
    rep.by_channel = [(r["k"] or "-", int(r["n"])) for r in store.query(
        f"SELECT channel AS k, COUNT(*) AS n FROM cases WHERE {where} GROUP BY channel "
        f"ORDER BY n DESC, k", period)]
    rep.by_department = [(r["k"] or "-", int(r["n"])) for r in store.query(
        f"SELECT department AS k, COUNT(*) AS n FROM cases WHERE {where} GROUP BY department "
        f"ORDER BY n DESC, k", period)]
    labels = _category_labels()
    rep.by_category = [(r["k"] or "-", labels.get(r["k"] or "", ""), int(r["n"]))
                       for r in store.query(
        f"SELECT category_code AS k, COUNT(*) AS n FROM cases WHERE {where} "
        f"GROUP BY category_code ORDER BY n DESC, k", period)]
    rep.hotspots = [(r["area"], r["district"] or "-", r["k"] or "-", int(r["n"]))
                    for r in store.query(
        f"SELECT COALESCE(community, street, district, 'unknown') AS area, "
        f"MAX(district) AS district, category_code AS k, COUNT(*) AS n FROM cases "
        f"WHERE {where} GROUP BY COALESCE(community, street, district, 'unknown'), "
        f"category_code HAVING COUNT(*) >= ? ORDER BY n DESC, area, k LIMIT ?",
        (*period, min_count, top))]
    # timeline: first downstream status, first closure, per case of the period
    responded: dict[str, datetime] = {}
    resolved: dict[str, datetime] = {}
    for r in store.query(
            "SELECT e.case_id, e.at, e.data FROM case_events e JOIN cases c ON c.case_id = "
            "e.case_id WHERE e.kind = 'status' AND c.received_at >= ? AND c.received_at < ? "
            "ORDER BY e.at", period):
        at = _parse(r["at"])
        if at is None:
            continue
        responded.setdefault(r["case_id"], at)
        if str((_loads(r["data"]) or {}).get("status", "")).lower() == "closed":
            resolved.setdefault(r["case_id"], at)
    rep.sla = {"respond": Counter(), "resolve": Counter()}
    for r in store.query(f"SELECT case_id, reference, status, category_code, body FROM cases "
                         f"WHERE {where}", period):
        body = _loads(r["body"]) or {}
        if (body.get("links") or {}).get("repeat_complaint"):
            rep.repeat_complaints += 1
        closed = r["case_id"] in resolved or r.get("status") == "closed"
        rep.closed += closed
        deadlines = body.get("deadlines") or {}
        for which, done in (("respond", responded.get(r["case_id"])),
                            ("resolve", resolved.get(r["case_id"]))):
            due = _parse(deadlines.get(f"{which}_by"))
            if due is None:
                rep.sla[which]["no deadline"] += 1
            elif done is not None:
                rep.sla[which]["met" if done <= due else "missed"] += 1
            else:
                rep.sla[which]["missed" if now > due else "pending"] += 1
        if not closed:
            rep.open_cases.append(body)
    return rep


def _category_labels() -> dict[str, str]:
    try:
        from normalizer.taxonomy import load_taxonomy

        return {c.code: c.label for c in load_taxonomy().categories.values()}
    except Exception:  # a report must not fail on a taxonomy problem
        return {}


# ------------------------------------------------------------------------------ output
def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.1f}%"


def print_report(rep: Report, console: Any = None) -> None:
    """Render the report as tables."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    console.print(f"Cases received {rep.since:%Y-%m-%d %H:%M} – {rep.until:%Y-%m-%d %H:%M} "
                  f"({rep.since.tzinfo}): {rep.total}")

    def table(title: str, cols: list[str], rows: list[tuple[Any, ...]]) -> None:
        t = Table(title=title, title_justify="left")
        for c in cols:
            t.add_column(c, justify="right" if c in ("cases", "share") else "left")
        for row in rows:
            t.add_row(*(str(x) for x in row))
        console.print(t)

    share = (lambda n: f"{n / rep.total * 100:.1f}%") if rep.total else (lambda n: "-")
    table("By channel", ["channel", "cases", "share"],
          [(k, n, share(n)) for k, n in rep.by_channel])
    table("By category", ["category", "label", "cases", "share"],
          [(k, lab, n, share(n)) for k, lab, n in rep.by_category])
    table("By department (牵头部门)", ["department", "cases", "share"],
          [(k, n, share(n)) for k, n in rep.by_department])
    table("Hotspots (area × category)", ["area", "district", "category", "cases"],
          list(rep.hotspots))
    sla_rows = []
    for which in ("respond", "resolve"):
        c = rep.sla.get(which, Counter())
        sla_rows.append((f"{which}_by", c["met"], c["missed"], c["pending"],
                         c["no deadline"], _pct(rep.sla_rate(which))))
    table("SLA compliance", ["deadline", "met", "missed", "pending", "no deadline", "rate"],
          sla_rows)
    console.print(f"Repeat complaints: {rep.repeat_complaints} ({_pct(rep.repeat_rate)}); "
                  f"closed downstream (办结率): {rep.closed} ({_pct(rep.closure_rate)})")


def write_csv(rep: Report, folder: Path) -> list[Path]:
    """Write one CSV per table into ``folder``; return the files."""
    folder.mkdir(parents=True, exist_ok=True)
    tables: dict[str, tuple[list[str], list[tuple[Any, ...]]]] = {
        "by_channel": (["channel", "cases"], list(rep.by_channel)),
        "by_category": (["category", "label", "cases"], list(rep.by_category)),
        "by_department": (["department", "cases"], list(rep.by_department)),
        "hotspots": (["area", "district", "category", "cases"], list(rep.hotspots)),
        "sla": (["deadline", "met", "missed", "pending", "no_deadline", "rate"],
                [(w, rep.sla[w]["met"], rep.sla[w]["missed"], rep.sla[w]["pending"],
                  rep.sla[w]["no deadline"], rep.sla_rate(w)) for w in ("respond", "resolve")]),
        "summary": (["since", "until", "cases", "repeat_complaints", "repeat_rate", "closed",
                     "closure_rate"],
                    [(rep.since.isoformat(), rep.until.isoformat(), rep.total,
                      rep.repeat_complaints, round(rep.repeat_rate, 4), rep.closed,
                      round(rep.closure_rate, 4))]),
    }
    out = []
    for name, (header, rows) in tables.items():
        path = folder / f"{name}.csv"
        with path.open("w", encoding="utf-8-sig", newline="") as fh:  # BOM: Excel reads UTF-8
            w = csv.writer(fh)
            w.writerow(header)
            w.writerows(rows)
        out.append(path)
    return out


def _bars(title: str, items: list[tuple[str, int]], color: str) -> str:
    if not items:
        return f"<h2>{html.escape(title)}</h2><p>none</p>"
    top = max(n for _, n in items) or 1
    row_h, label_w, width = 24, 260, 420
    parts = [f'<h2>{html.escape(title)}</h2><svg xmlns="http://www.w3.org/2000/svg" '
             f'width="{label_w + width + 60}" height="{row_h * len(items) + 10}" '
             f'role="img" aria-label="{html.escape(title)}">']
    for i, (label, n) in enumerate(items):
        y = i * row_h + 5
        w = max(1, round(n / top * width))
        parts.append(f'<text x="{label_w - 8}" y="{y + 16}" text-anchor="end" '
                     f'font-size="13">{html.escape(label)}</text>'
                     f'<rect x="{label_w}" y="{y + 3}" width="{w}" height="{row_h - 8}" '
                     f'fill="{color}"><title>{html.escape(label)}: {n}</title></rect>'
                     f'<text x="{label_w + w + 6}" y="{y + 16}" font-size="12">{n}</text>')
    parts.append("</svg>")
    return "".join(parts)


def write_chart(rep: Report, path: Path) -> Path:
    """A self-contained HTML page with bar charts (categories, departments, hotspots, SLA)."""
    sla = [(f"{w}_by met", rep.sla[w]["met"]) for w in ("respond", "resolve")] + \
          [(f"{w}_by missed", rep.sla[w]["missed"]) for w in ("respond", "resolve")]
    body = "".join([
        _bars("Cases by category", [(f"{lab or k} ({k})", n) for k, lab, n in rep.by_category],
              "#3b7dd8"),
        _bars("Cases by department", list(rep.by_department), "#5a9e6f"),
        _bars("Hotspots: area × category", [(f"{a} · {c}", n) for a, _, c, n in rep.hotspots],
              "#d8703b"),
        _bars("SLA", sla, "#8a63c7"),
    ])
    page = (f'<!doctype html><html lang="zh"><meta charset="utf-8"><title>Feedback Hub report'
            f'</title><body style="font-family: sans-serif; max-width: 900px">'
            f"<h1>Feedback Hub report</h1><p>{rep.since:%Y-%m-%d} – {rep.until:%Y-%m-%d}: "
            f"{rep.total} cases; repeat complaints {_pct(rep.repeat_rate)}; respond_by met "
            f"{_pct(rep.sla_rate('respond'))}; resolve_by met {_pct(rep.sla_rate('resolve'))}; "
            f"办结率 {_pct(rep.closure_rate)}</p>{body}</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def write_public_board(rep: Report, path: Path) -> Path:
    """Unresolved cases for a public 未解决事项 board, personal data redacted."""
    from normalizer.privacy import redact_case

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8-sig", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["reference", "received_at", "category", "department", "place", "title",
                    "description", "resolve_by"])
        for body in rep.open_cases:
            try:
                doc = redact_case(body)
            except Exception:  # a malformed stored body is left off the public board
                continue
            assert isinstance(doc, dict)
            loc, cls = doc.get("location") or {}, doc.get("classification") or {}
            w.writerow([doc.get("reference"), (doc.get("origin") or {}).get("received_at"),
                        cls.get("category_label"), cls.get("department"),
                        loc.get("community") or loc.get("street") or loc.get("address"),
                        doc.get("title"), doc.get("description"),
                        (doc.get("deadlines") or {}).get("resolve_by")])
    return path


def parse_period(since: str | None, until: str | None, tz: str,
                 now: datetime | None = None) -> tuple[datetime, datetime]:
    """Turn ``--since`` / ``--until`` (a date, an ISO time, or a duration like ``30d``) into a
    period; dates are local days in ``tz``; the default is the last 30 days."""
    zone = ZoneInfo(tz)
    now = now or datetime.now(timezone.utc)

    def one(value: str, end: bool) -> datetime:
        m = _DURATION.match(value.strip())
        if m:
            n, unit = int(m.group(1)), m.group(2)
            return now - timedelta(hours=n) * {"h": 1, "d": 24, "w": 168}[unit]
        try:
            dt = datetime.fromisoformat(value)
        except ValueError as exc:
            raise click.BadParameter(f"{value!r}: expected YYYY-MM-DD, an ISO time or a "
                                     f"duration like 30d") from exc
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=zone)
        if end and len(value.strip()) == 10:  # a whole day: up to the end of it
            dt += timedelta(days=1)
        return dt

    start = one(since, False) if since else now - timedelta(days=30)
    stop = one(until, True) if until else now
    if stop <= start:
        raise click.BadParameter("--until must be after --since")
    return start, stop


@click.command("report")
@click.option("--since", help="Start: YYYY-MM-DD (local day), ISO time, or 30d / 12h / 2w ago. "
                              "Default: 30 days ago.")
@click.option("--until", help="End (exclusive; a date includes that whole day). Default: now.")
@click.option("--min-count", default=3, show_default=True,
              help="Fewest cases an area × category needs to be a hotspot.")
@click.option("--top", default=20, show_default=True, help="Hotspots to list.")
@click.option("--csv", "csv_dir", type=click.Path(file_okay=False), help="Write CSV files here.")
@click.option("--chart", type=click.Path(dir_okay=False), help="Write an HTML chart page here.")
@click.option("--public-board", type=click.Path(dir_okay=False),
              help="Write unresolved cases, personal data redacted, to this CSV.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.pass_obj
def report_command(obj: Any, since: str | None, until: str | None, min_count: int, top: int,
                   csv_dir: str | None, chart: str | None, public_board: str | None,
                   as_json: bool) -> None:
    """Counts by channel, category and department; hotspots; repeat complaints; SLA; 办结率."""
    hub = obj.hub
    tz = getattr(getattr(hub, "config", None), "timezone", None) or "Asia/Shanghai"
    start, stop = parse_period(since, until, str(tz))
    zone = ZoneInfo(str(tz))
    rep = build_report(hub.store, since=start.astimezone(zone), until=stop.astimezone(zone),
                       min_count=min_count, top=top)
    if as_json:
        click.echo(json.dumps(rep.as_dict(), ensure_ascii=False, indent=1))
    else:
        print_report(rep)
    for path in write_csv(rep, Path(csv_dir)) if csv_dir else []:
        click.echo(f"wrote {path}", err=True)
    if chart:
        click.echo(f"wrote {write_chart(rep, Path(chart))}", err=True)
    if public_board:
        click.echo(f"wrote {write_public_board(rep, Path(public_board))}", err=True)
