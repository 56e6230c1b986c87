"""Make many cases quickly (for the 2-worker test and the delivery benchmark).

Cases are built directly (no mapper, no enrichment) and saved through the store's process
transaction, so their outbox rows are exactly what the process stage would queue.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from normalizer.case import (
    Case,
    Channel,
    Classification,
    Location,
    Origin,
    Reporter,
    case_id_for,
)

T0 = datetime(2026, 11, 24, 2, 0, tzinfo=timezone.utc)


def seed_cases(hub: Any, n: int, source: str = "bench", chunk: int = 2000) -> int:
    """Save ``n`` generated cases routed to every configured sink; return how many are new."""
    sinks = hub.sink_names()
    new = 0
    for start in range(0, n, chunk):
        with hub.store.process_tx() as tx:
            for i in range(start, min(n, start + chunk)):
                case = Case(
                    case_id=case_id_for(source, f"id:{i}"),
                    origin=Origin(channel=Channel.forward, source=source, source_ref=f"id:{i}",
                                  received_at=T0, upstream_id=f"GEN-{i:07d}"),
                    title="路灯不亮", description=f"幸福路{i}号门口的路灯不亮了，晚上很危险。",
                    reporter=Reporter(name="测试", phone="13800000000"),
                    location=Location(address=f"幸福路{i}号", lat=31.23, lon=121.47),
                    classification=Classification(category_code="streetlight"))
                _, is_new = tx.save_case(case, None, sinks)
                new += is_new
    return new
