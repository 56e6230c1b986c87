"""What ``feedback-hub status`` reports, as plain data (shared by the CLI and ``/healthz``)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from hub.logsetup import redact


def collect_status(hub: Any) -> dict[str, Any]:
    """Connector health, sink backlogs, case counts and open dead letters. No secrets."""
    store = hub.store
    stats = {r["source"]: r for r in store.connector_stats()}
    pending: dict[str, int] = defaultdict(int)
    for r in store.raw_stats():
        if r["state"] == "pending":
            pending[r["source"]] += int(r["n"])
    connectors = []
    names = [c.name for c in hub.config.connectors]
    types = {c.name: c.type for c in hub.config.connectors}
    for name in names + sorted(set(stats) - set(names)):
        s = stats.get(name, {})
        connectors.append({
            "name": name, "type": types.get(name, "(not configured)"),
            "last_run_at": s.get("last_run_at"), "last_success_at": s.get("last_success_at"),
            "last_error_at": s.get("last_error_at"),
            "last_error": redact(s["last_error"]) if s.get("last_error") else None,
            "records_total": int(s.get("records_total") or 0),
            "duplicates_total": int(s.get("duplicates_total") or 0),
            "errors_total": int(s.get("errors_total") or 0),
            "raw_pending": pending.get(name, 0), "checkpoint": s.get("checkpoint"),
        })
    by_sink: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in store.outbox_stats():
        by_sink[r["sink"]][r["state"]] += int(r["n"])
    sinks = []
    sink_types = {s.name: s.type for s in hub.config.sinks}
    for name in list(sink_types) + sorted(set(by_sink) - set(sink_types)):
        b = by_sink.get(name, {})
        sinks.append({"name": name, "type": sink_types.get(name, "(not configured)"),
                      **{k: b.get(k, 0) for k in ("pending", "in_flight", "retrying",
                                                  "delivered", "dead")}})
    rows = store.query("SELECT status, COUNT(*) AS n, SUM(needs_review) AS r FROM cases "
                       "GROUP BY status ORDER BY status")
    dl = store.query("SELECT COUNT(*) AS n FROM dead_letters WHERE replay_state = 'new'")
    return {
        "connectors": connectors,
        "sinks": sinks,
        "cases": {"total": sum(int(r["n"]) for r in rows),
                  "by_status": {r["status"]: int(r["n"]) for r in rows},
                  "needs_review": sum(int(r["r"] or 0) for r in rows)},
        "dead_letters_open": int(dl[0]["n"]),
        "schema_version": store.schema_version(),
    }
