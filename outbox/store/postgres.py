"""The PostgreSQL store: the same interface and SQL as SQLite, for several workers at scale.

* psycopg 3, one connection per store object, in autocommit mode: every write goes through
  :meth:`PostgresStore._write_tx` (``BEGIN ... COMMIT``), every read is its own statement, so a
  worker never sits idle in a transaction holding locks or snapshots.
* Delivery claims use ``FOR UPDATE OF o SKIP LOCKED``: two ``listen`` workers never claim the
  same outbox row, and neither waits for the other.
* ``?`` placeholders are translated to ``%s`` (literal ``%`` doubled); key-prefix scans compare
  with ``COLLATE "C"`` so the ``"\\U0010ffff"`` upper bound works under any database collation.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from outbox.blobs import BlobStore
from outbox.store.sql import SqlStore

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

    def _claim_sql(self) -> str:
        return ("SELECT o.id, o.next_attempt_at FROM outbox o WHERE {due}{sink_filter} AND "
                "(o.kind = 'case' OR NOT EXISTS (SELECT 1 FROM outbox c WHERE c.sink = o.sink "
                "AND c.case_id = o.case_id AND c.kind = 'case' AND c.state <> 'delivered')) "
                "ORDER BY o.next_attempt_at, o.id LIMIT ? FOR UPDATE OF o SKIP LOCKED")

    def _end_read(self) -> None:
        # autocommit: a read never leaves a transaction open
        return None
