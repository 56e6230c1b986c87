"""Fixtures for the email channel: a real Dovecot IMAP server and hub configs that read it.

One Dovecot runs per test session (a throwaway config on free loopback ports, Maildir in a
temp folder, a trustme CA for TLS, plain login allowed only on loopback). Each test gets its
own mailbox user, so tests never see each other's mail. Dovecot is installed with apt-get when
missing (as ``make test`` does); without it the tests are skipped with the reason.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from connectors.email.demo_server import Dovecot

_users = itertools.count(1)


def _ensure_dovecot() -> str | None:
    if shutil.which("dovecot") or Path("/usr/sbin/dovecot").exists():
        return None
    if os.geteuid() != 0:
        return "dovecot is not installed (apt-get install dovecot-imapd)"
    try:
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                        "dovecot-imapd"], check=True, capture_output=True, timeout=600,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    except (subprocess.SubprocessError, OSError) as exc:
        return f"could not install dovecot-imapd: {exc}"
    return None


def start_dovecot(extra: str = "") -> Dovecot:
    """Start a Dovecot in a new temp folder (outside pytest's 0700 tmp: Dovecot's mail
    processes run as the dovecot user when the tests run as root)."""
    problem = _ensure_dovecot()
    if problem:
        pytest.skip(problem)
    return Dovecot(Path(tempfile.mkdtemp(prefix="fbhub-dovecot-")), extra=extra).start()


def stop_dovecot(server: Dovecot) -> None:
    """Stop a Dovecot and remove its folder."""
    server.stop()
    shutil.rmtree(server.folder, ignore_errors=True)


@pytest.fixture(scope="session")
def dovecot() -> Iterator[Dovecot]:
    """A running throwaway Dovecot for the whole session."""
    server = start_dovecot()
    try:
        yield server
    finally:
        stop_dovecot(server)


@pytest.fixture
def mailbox(dovecot: Dovecot, request: pytest.FixtureRequest) -> str:
    """A fresh, empty mailbox user for this test."""
    return f"t{next(_users)}-{request.node.name[:30].replace('[', '-').strip(']')}@city.example"


def imap_entry(dovecot: Dovecot, user: str, **overrides: Any) -> dict[str, Any]:
    """A connector entry reading ``user``'s mailbox over STARTTLS with the test CA."""
    entry: dict[str, Any] = {
        "name": "mailbox", "type": "imap", "host": "127.0.0.1", "port": dovecot.port,
        "tls": "starttls", "ca_file": str(dovecot.ca_pem), "username": user,
        "password": "${IMAP_PASSWORD}", "batch_size": 5,
    }
    entry.update(overrides)
    return entry


def write_hub_config(folder: Path, dovecot: Dovecot, user: str, **overrides: Any) -> Path:
    """A feedback-hub.yaml: this mailbox → SQLite → jsonl sink, in ``folder``."""
    connector = imap_entry(dovecot, user, **overrides)
    cfg = {
        "store": "sqlite:///hub.db",
        "blobs": "blobs",
        "connectors": [connector],
        "sinks": [{"name": "case-file", "type": "jsonl", "path": "out/cases.jsonl"}],
        "logging": {"level": "WARNING"},
    }
    path = folder / "feedback-hub.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def imap_env(dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """IMAP_PASSWORD in the environment (as a deployment would set it)."""
    monkeypatch.setenv("IMAP_PASSWORD", dovecot.password)
    return {"IMAP_PASSWORD": dovecot.password}
