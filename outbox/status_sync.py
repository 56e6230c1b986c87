"""Closed loop: read the status of delivered cases back from downstream (处理—反馈).

For every ``open311`` sink with ``status_sync: true``, the service request ids of delivered,
not yet closed cases are polled with ``GET requests.json?service_request_id=...`` and each
change becomes a ``status`` event in the case timeline::

    event_id = open311:<sink>:<service_request_id>:<updated_datetime>

Events are idempotent on that id (a repeated answer adds nothing), and an answer whose
``updated_datetime`` is not newer than the last one recorded for that request is ignored (out of
order). The case status becomes ``open`` or ``closed``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from outbox.sinks.base import DeliveryError

logger = logging.getLogger(__name__)


@dataclass
class SyncStats:
    """What one status sync did."""

    polled: int = 0
    changes: int = 0
    ignored: int = 0
    errors: list[str] = field(default_factory=list)


def _parse(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        dt = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def _last_seen(store: Any, case_id: str, prefix: str) -> datetime | None:
    rows = store.query("SELECT data FROM case_events WHERE case_id = ? AND kind = 'status' "
                       "AND event_id LIKE ?", (case_id, prefix + "%"))
    latest = None
    for r in rows:
        data = r["data"]
        if isinstance(data, str):
            import json

            data = json.loads(data)
        dt = _parse((data or {}).get("updated_datetime"))
        if dt and (latest is None or dt > latest):
            latest = dt
    return latest


def sync_status(hub: Any, sinks: list[str] | None = None, limit: int = 5000) -> SyncStats:
    """Poll every open311 sink for status changes of delivered cases; record them.

    Args:
        hub: the runtime (store and sinks).
        sinks: only these sink names (default: every enabled open311 sink with status_sync).
        limit: most cases polled per sink per call (oldest delivered first).
    """
    stats = SyncStats()
    store = hub.store
    for cfg in hub.config.sinks:
        if not cfg.enabled or cfg.type != "open311" or not getattr(cfg, "status_sync", True):
            continue
        if sinks and cfg.name not in sinks:
            continue
        rows = store.query(
            "SELECT o.case_id, o.remote_id FROM outbox o JOIN cases c ON c.case_id = o.case_id "
            "WHERE o.sink = ? AND o.kind = 'case' AND o.state = 'delivered' "
            "AND o.remote_id IS NOT NULL AND c.status <> 'closed' ORDER BY o.delivered_at, o.id "
            "LIMIT ?", (cfg.name, limit))
        if not rows:
            continue
        by_remote = {str(r["remote_id"]): r["case_id"] for r in rows}
        try:
            answers = hub.sink(cfg.name).fetch_requests(list(by_remote))
        except DeliveryError as exc:
            stats.errors.append(f"{cfg.name}: {exc.reason}")
            logger.warning("status sync failed", extra={"sink": cfg.name, "reason": exc.reason})
            continue
        stats.polled += len(by_remote)
        for item in answers:
            sr_id = str(item.get("service_request_id") or "")
            case_id = by_remote.get(sr_id)
            if case_id is None:
                continue
            if _record(store, cfg.name, case_id, sr_id, item):
                stats.changes += 1
            else:
                stats.ignored += 1
    if stats.changes or stats.errors:
        logger.info("status synced", extra={"polled": stats.polled, "changes": stats.changes,
                                            "errors": len(stats.errors)})
    return stats


def _record(store: Any, sink: str, case_id: str, sr_id: str, item: dict[str, Any]) -> bool:
    status = str(item.get("status") or "").strip().lower()
    if status not in ("open", "closed"):
        return False
    updated = _parse(item.get("updated_datetime"))
    prefix = f"open311:{sink}:{sr_id}:"
    last = _last_seen(store, case_id, prefix)
    if updated is not None and last is not None and updated <= last:
        return False  # repeated or out of order
    stamp = item.get("updated_datetime") or f"{status}:{item.get('status_notes') or ''}"
    notes = str(item.get("status_notes") or "").strip()
    agency = str(item.get("agency_responsible") or "").strip()
    text = f"{status} at {sink} ({sr_id})" + (f": {notes}" if notes else "") + (
        f" [{agency}]" if agency else "")
    data = {"status": status, "sink": sink, "service_request_id": sr_id,
            "status_notes": notes or None, "agency_responsible": agency or None,
            "updated_datetime": item.get("updated_datetime"),
            "expected_datetime": item.get("expected_datetime")}
    return bool(store.add_event(case_id, f"{prefix}{stamp}", "status", text, data,
                                at=updated, status=status))


class PeriodicStatusSync:
    """A ``listen`` stage: run :func:`sync_status` at most every ``interval`` seconds.

    ``Listen(config, extra_stages=[PeriodicStatusSync(300)])`` calls it after every
    process/deliver pass; it polls the remote only when the interval has passed.
    """

    def __init__(self, interval: float = 300.0) -> None:
        self.interval = interval
        self._last = float("-inf")

    def __call__(self, hub: Any) -> SyncStats | None:
        """Sync when due; return the stats, or None when it was not due yet."""
        import time

        now = time.monotonic()
        if now - self._last < self.interval:
            return None
        self._last = now
        try:
            return sync_status(hub)
        except Exception:  # never let the closed loop stop delivery
            logger.error("status sync crashed", exc_info=True)
            return None
