"""The embedded default store: one SQLite file in WAL mode."""

from __future__ import annotations

import functools
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from itertools import chain
from pathlib import Path
from typing import Any

from outbox.blobs import BlobStore
from outbox.store.sql import SqlStore

logger = logging.getLogger(__name__)

#: Raw records per INSERT statement: 8 parameters each, well under SQLite's 32,766 (3.32+).
_SQLITE_INGEST_ROWS = 1000


@functools.lru_cache(maxsize=8)
def _insert_rows_sql(n: int) -> str:
    """The raw-record INSERT for ``n`` rows (the same text each time: sqlite3 caches it)."""
    return ("INSERT INTO raw_records (source, channel, source_ref, received_at, ingested_at, "
            "payload, attachments, raw_blob) VALUES " + ",".join(["(?,?,?,?,?,?,?,?)"] * n)
            + " ON CONFLICT (source, source_ref) DO NOTHING")


@functools.lru_cache(maxsize=8)
def _insert_packed_sql(n: int) -> str:
    """The raw-record INSERT for ``n`` packed rows of one source: source, channel and
    ingested_at bound once (``?1``-``?3``), then source_ref, received_at and payload per row
    (3 parameters a row instead of 8: less binding and copying on the committing thread)."""
    values = ",".join(f"(?1,?2,?{3 * k + 4},?{3 * k + 5},?3,?{3 * k + 6},'[]',NULL)"
                      for k in range(n))
    return ("INSERT INTO raw_records (source, channel, source_ref, received_at, ingested_at, "
            "payload, attachments, raw_blob) VALUES " + values
            + " ON CONFLICT (source, source_ref) DO NOTHING")


#: The store's connection checkpoints by itself only past this many WAL pages (~160 MB).
BACKSTOP_PAGES = 40_000
#: After a commit the checkpointer waits this long, then copies the WAL into the database.
CHECKPOINT_DELAY = 0.25


class WalCheckpointer:
    """Copies the WAL into the database file from a thread and a connection of its own.

    With SQLite's automatic checkpoint, the COMMIT that takes the WAL past the limit also
    copies it: the committing thread reads back and writes ~40 MB and waits for two fsyncs,
    and everything waiting on that commit waits too (an MQTT drain's acks, so the broker's
    sends). Here the copy runs beside the commits: ``CHECKPOINT_DELAY`` after a commit (the
    commits of that time are copied together, so an index page they all changed is written
    once), a PASSIVE checkpoint, which takes no lock a writer or reader waits for, then it
    sleeps until the next commit. Durability is SQLite's as before: ``synchronous=NORMAL``, the
    WAL synced before it is copied and the database file after.
    """

    def __init__(self, path: Path, delay: float = CHECKPOINT_DELAY) -> None:
        self.path = path
        self.delay = delay
        self._dirty = threading.Event()
        self._stopping = False
        self.passes = 0
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint",
                                        daemon=True)
        self._thread.start()

    def wrote(self) -> None:
        """A transaction was committed: checkpoint after the delay."""
        self._dirty.set()

    def stop(self) -> None:
        """Checkpoint once more if anything was committed since the last pass, then end."""
        self._stopping = True
        self._dirty.set()
        self._thread.join()

    def _run(self) -> None:
        conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA synchronous=NORMAL")
            while True:
                self._dirty.wait()
                if not self._stopping:
                    time.sleep(self.delay)
                self._dirty.clear()
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.passes += 1
                except sqlite3.Error as exc:  # the next commit tries again
                    logger.warning("wal checkpoint failed", extra={"path": str(self.path),
                                                                   "error": str(exc)})
                if self._stopping:
                    return
        finally:
            conn.close()


def _chunks(rows: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(rows), n):
        yield rows[i:i + n]


class SqliteStore(SqlStore):
    """SQLite store. Writers serialize on ``BEGIN IMMEDIATE``; readers never block (WAL)."""

    dialect = "sqlite"
    ddl_types = {"pk": "INTEGER PRIMARY KEY AUTOINCREMENT", "json": "TEXT", "real": "REAL"}

    def __init__(self, path: str | Path, blobs: BlobStore, timezone: str = "Asia/Shanghai",
                 busy_timeout_ms: int = 30_000) -> None:
        super().__init__(blobs, timezone)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a batch is one transaction
        self.conn = sqlite3.connect(str(self.path), isolation_level=None, timeout=busy_timeout_ms
                                    / 1000, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes in WAL
        self.conn.execute("PRAGMA foreign_keys=ON")
        self.conn.execute("PRAGMA cache_size=-65536")  # 64 MiB of pages: index-heavy inserts
        self.conn.execute("PRAGMA temp_store=MEMORY")
        # The WAL is checkpointed by a thread of this store (WalCheckpointer) a moment after
        # commits, not inside them; the connection's own autocheckpoint is the backstop when
        # that thread falls behind: at ~160 MB instead of ~40 MB.
        self.conn.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_PAGES}")
        self.conn.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        self._checkpointer: WalCheckpointer | None = None

    @contextmanager
    def _write_tx(self) -> Iterator[Any]:
        cur = self.conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            yield cur
        except BaseException:
            cur.execute("ROLLBACK")
            cur.close()
            raise
        else:
            cur.execute("COMMIT")
            cur.close()
            ck = self._checkpointer
            if ck is None:
                ck = self._checkpointer = WalCheckpointer(self.path)
            ck.wrote()

    def close(self) -> None:
        """Stop the checkpointer (after its last pass), then close the connection (the last
        connection to close checkpoints what is left)."""
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        super().close()

    def _insert_raw(self, cur: Any, rows: list[tuple[Any, ...]]) -> list[int]:
        """Multi-row ``INSERT … ON CONFLICT DO NOTHING`` per :data:`_SQLITE_INGEST_ROWS` rows;
        returns the ids of the rows inserted (duplicates skipped), in order.

        Why not ``executemany`` (as fast alone): Python's sqlite3 releases the GIL around every
        ``sqlite3_step`` and ``sqlite3_reset``, and ``executemany`` steps once per row. While
        another thread runs Python (the MQTT connector decodes the next batch during this
        commit) each of those calls may wait up to the interpreter's switch interval (5 ms) to
        get the GIL back: a 1,000-row batch took seconds. Here a batch is a handful of calls,
        each a long stretch of SQLite work without the GIL, and the ids need no query when
        every row was new.
        """
        return self._insert_chunks(cur, [
            (_insert_rows_sql(len(chunk)), list(chain.from_iterable(chunk)))
            for chunk in _chunks(rows, _SQLITE_INGEST_ROWS)], len(rows))

    def _insert_packed(self, cur: Any, source: str, channel: str, ingested_at: str,
                       rows: Sequence[tuple[str, str, str]]) -> list[int]:
        """:meth:`_insert_raw` for packed rows, with the per-source values bound once."""
        return self._insert_chunks(cur, [
            (_insert_packed_sql(len(chunk)),
             [source, channel, ingested_at, *chain.from_iterable(chunk)])
            for chunk in _chunks(rows, _SQLITE_INGEST_ROWS)], len(rows))

    def _insert_chunks(self, cur: Any, statements: list[tuple[str, list[Any]]],
                       rows: int) -> list[int]:
        """Run multi-row raw-record INSERTs of ``rows`` rows in all; return the ids of the
        rows inserted, in order.

        AUTOINCREMENT gives every new row an id above every id in the table, one more than
        the last (a row skipped as a duplicate may use one up). So when every row was new,
        the ids are the ``rows`` ids up to the last one inserted, with no query; otherwise
        they are the ``inserted`` largest ids of the table (this transaction holds the write
        lock). No ``SELECT MAX(id)`` beforehand: each statement is a GIL release and
        re-acquisition, which costs up to the switch interval while the MQTT decode-ahead
        thread runs Python.
        """
        before = self.conn.total_changes
        for sql, params in statements:
            cur.execute(sql, params)
        inserted = self.conn.total_changes - before
        if not inserted:
            return []
        if inserted == rows:
            return list(range(cur.lastrowid - rows + 1, cur.lastrowid + 1))
        cur.execute("SELECT group_concat(id) FROM (SELECT id FROM raw_records ORDER BY id DESC "
                    "LIMIT ?)", (inserted,))
        return sorted(int(v) for v in cur.fetchone()[0].split(","))

    def _claim_sql(self) -> str:
        # BEGIN IMMEDIATE already serializes writers, so a plain SELECT is a safe claim.
        return ("SELECT o.id, o.next_attempt_at FROM outbox o WHERE {due}{sink_filter} AND "
                "(o.kind = 'case' OR NOT EXISTS (SELECT 1 FROM outbox c WHERE c.sink = o.sink "
                "AND c.case_id = o.case_id AND c.kind = 'case' AND c.state <> 'delivered')) "
                "ORDER BY o.next_attempt_at, o.id LIMIT ?")
