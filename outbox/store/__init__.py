"""The durable store: SQLite by default, PostgreSQL at scale (same interface)."""

from __future__ import annotations

from outbox.blobs import BlobStore
from outbox.store.sql import SqlStore


def open_store(url: str, blobs: BlobStore, timezone: str = "Asia/Shanghai",
               migrate: bool = True) -> SqlStore:
    """Open the store named by ``url`` and apply pending migrations.

    Args:
        url: ``sqlite:///absolute/path.db`` or ``postgresql://user@host:port/db``.
        blobs: the blob folder raw bytes live in.
        timezone: the local zone used for human references.
        migrate: apply migrations (the CLI always does).
    """
    store: SqlStore
    if url.startswith("sqlite:///"):
        from outbox.store.sqlite import SqliteStore

        store = SqliteStore(url[len("sqlite:///"):], blobs, timezone)
    elif url.startswith(("postgresql://", "postgres://")):
        from outbox.store.postgres import PostgresStore

        store = PostgresStore(url, blobs, timezone)
    else:
        raise ValueError(f'store: expected "sqlite:///path.db" or "postgresql://...", got "{url}"')
    if migrate:
        store.migrate()
    return store


__all__ = ["SqlStore", "open_store"]
