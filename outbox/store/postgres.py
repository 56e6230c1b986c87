"""The PostgreSQL store: the same interface and SQL as SQLite, for several workers at scale.

* psycopg 3, one connection per store object, in autocommit mode: every write goes through
  :meth:`PostgresStore._write_tx` (``BEGIN ... COMMIT``), every read is its own statement, so a
  worker never sits idle in a transaction holding locks or snapshots.
* Delivery claims use ``FOR UPDATE OF o SKIP LOCKED``: two ``listen`` workers never claim the
  same outbox row, and neither waits for the other. A claim is one statement (one round
  trip); the receipts of a chunk go out in pipeline mode (one wait for the server).
* ``?`` placeholders are translated to ``%s`` (literal ``%`` doubled); key-prefix scans compare
  with ``COLLATE "C"`` so the ``"\\U0010ffff"`` upper bound works under any database collation.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import psycopg

from outbox.blobs import BlobStore
from outbox.store.sql import CLAIM_DUE, ClaimedDelivery, SqlStore
from outbox.store.timefmt import now_utc, ts

logger = logging.getLogger(__name__)

_PREFIX_SCAN = re.compile(r"\bkey >= \? AND key < \?")


class PostgresStore(SqlStore):
    """PostgreSQL store (psycopg 3)."""

    dialect = "postgresql"
    ddl_types = {"pk": "BIGSERIAL PRIMARY KEY", "json": "TEXT", "real": "DOUBLE PRECISION"}

    def __init__(self, url: str, blobs: BlobStore, timezone: str = "Asia/Shanghai",
                 connect_timeout: int = 10) -> None:
        super().__init__(blobs, timezone)
        self.url = url
        self.conn = psycopg.connect(url, autocommit=True, connect_timeout=connect_timeout,
                                    application_name="feedback-hub")
        self._cache: dict[str, str] = {}

    def _sql(self, sql: str) -> str:
        out = self._cache.get(sql)
        if out is None:
            text = _PREFIX_SCAN.sub('key COLLATE "C" >= ? AND key COLLATE "C" < ?', sql)
            out = text.replace("%", "%%").replace("?", "%s")
            self._cache[sql] = out
        return out

    @contextmanager
    def _write_tx(self) -> Iterator[Any]:
        with self.conn.transaction(), self.conn.cursor() as cur:
            yield cur

    @contextmanager
    def _batch_tx(self) -> Iterator[Any]:
        # pipeline mode: BEGIN, the statements and COMMIT go out together and the worker
        # waits for the server once, not once per statement (errors surface at the end,
        # which rolls the whole transaction back as usual)
        if not psycopg.Pipeline.is_supported():
            with self._write_tx() as cur:
                yield cur
            return
        with self.conn.pipeline(), self.conn.transaction(), self.conn.cursor() as cur:
            yield cur

    def claim_due(self, worker: str, limit: int, lease_s: float,
                  now: datetime | None = None, sinks: Sequence[str] | None = None
                  ) -> list[ClaimedDelivery]:
        """The claim of :meth:`SqlStore.claim_due` as ONE statement (one round trip, its own
        transaction in autocommit): each way of being due locks its first ``limit`` rows
        (``SKIP LOCKED``), the first ``limit`` of those by due time are marked ``in_flight``
        and returned, the others unlocked at the end of the statement."""
        now = now or now_utc()
        sink_filter, sink_params = "", list(sinks or ())
        if sinks:
            sink_filter = f" AND o.sink IN ({','.join('?' * len(sinks))})"
        ways = [f"c{i} AS ({self._claim_sql().format(due=due, sink_filter=sink_filter)})"
                for i, due in enumerate(CLAIM_DUE)]
        union = " UNION ALL ".join(f"SELECT * FROM c{i}" for i in range(len(CLAIM_DUE)))
        sql = (f"WITH {', '.join(ways)}, pick AS (SELECT id FROM ({union}) u "
               f'ORDER BY next_attempt_at COLLATE "C", id LIMIT ?) '
               "UPDATE outbox SET state = 'in_flight', claimed_by = ?, claimed_until = ? "
               "FROM pick WHERE outbox.id = pick.id RETURNING outbox.id, outbox.sink, "
               "outbox.case_id, outbox.kind, outbox.event_id, outbox.idempotency_key, "
               "outbox.attempts, outbox.first_attempt_at, outbox.created_at, outbox.last_error, "
               "(SELECT c.remote_id FROM outbox c WHERE c.sink = outbox.sink AND "
               "c.case_id = outbox.case_id AND c.kind = 'case') AS case_remote_id")
        params = [v for _ in CLAIM_DUE for v in (ts(now), *sink_params, limit)]
        params += [limit, worker, ts(now + timedelta(seconds=lease_s))]
        with self.conn.cursor() as cur:
            self._exec(cur, sql, params)
            rows = sorted(self._rows(cur), key=lambda r: int(r["id"]))
        return self._claimed(rows, now)

    def _claim_sql(self) -> str:
        return ("SELECT o.id, o.next_attempt_at FROM outbox o WHERE {due}{sink_filter} AND "
                "(o.kind = 'case' OR NOT EXISTS (SELECT 1 FROM outbox c WHERE c.sink = o.sink "
                "AND c.case_id = o.case_id AND c.kind = 'case' AND c.state <> 'delivered')) "
                "ORDER BY o.next_attempt_at, o.id LIMIT ? FOR UPDATE OF o SKIP LOCKED")

    def _end_read(self) -> None:
        # autocommit: a read never leaves a transaction open
        return None
