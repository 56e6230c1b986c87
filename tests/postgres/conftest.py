"""PostgreSQL fixtures: the machine's real server, one throwaway database per test session.

The server is 127.0.0.1:5432 (user postgres, trust auth) unless ``FEEDBACK_HUB_PG_ADMIN`` names
another admin URL. When it is stopped, the session tries to start it with ``pg_ctlcluster``;
when it cannot, the PostgreSQL tests are skipped with the reason.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest

psycopg = pytest.importorskip("psycopg")

ADMIN_URL = os.environ.get("FEEDBACK_HUB_PG_ADMIN",
                           "postgresql://postgres@127.0.0.1:5432/postgres")


def _connect() -> object:
    return psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=3)


def _ensure_running() -> str | None:
    try:
        _connect().close()  # type: ignore[attr-defined]
        return None
    except psycopg.OperationalError:
        pass
    try:
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", "15", "main", "start"],
                       check=False, capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot start PostgreSQL: {exc}"
    for _ in range(30):
        try:
            _connect().close()  # type: ignore[attr-defined]
            return None
        except psycopg.OperationalError as exc:
            last = str(exc)
            time.sleep(0.5)
    return f"PostgreSQL not reachable at {ADMIN_URL}: {last}"


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The admin URL of a running server (skips the tests when there is none)."""
    problem = _ensure_running()
    if problem:
        pytest.skip(problem)
    return ADMIN_URL


@pytest.fixture(scope="session")
def pg_session_db(pg_server: str) -> Iterator[str]:
    """A database created for this test session and dropped at its end."""
    name = f"fh_test_{uuid.uuid4().hex[:10]}"
    with _connect() as conn:  # type: ignore[attr-defined]
        conn.execute(f'CREATE DATABASE "{name}"')
        # a throwaway database: commits need not wait for the disk (durability across
        # crashes is tested on SQLite; here it is claims and concurrency)
        conn.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
    base = pg_server.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with _connect() as conn:  # type: ignore[attr-defined]
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_session_db: str) -> Iterator[str]:
    """The session database, emptied before each test (a fresh schema per test)."""
    with psycopg.connect(pg_session_db, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
    yield pg_session_db
