"""Shared test fixtures: a hub configured in a temp folder, and the CLI run as a subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples"


def write_config(folder: Path, **overrides: Any) -> Path:
    """Write a feedback-hub.yaml for a jsonfile → jsonl chain in ``folder``."""
    cfg: dict[str, Any] = {
        "store": "sqlite:///hub.db",
        "blobs": "blobs",
        "connectors": [{"name": "city-app", "type": "jsonfile", "path": "inbox"}],
        "sinks": [{"name": "case-file", "type": "jsonl", "path": "out/cases.jsonl"}],
        "delivery": {"backoff_initial": "1s", "backoff_max": "5s", "max_attempts": 3},
        "logging": {"level": "WARNING"},
    }
    cfg.update(overrides)
    path = folder / "feedback-hub.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True, sort_keys=False), encoding="utf-8")
    (folder / "inbox").mkdir(exist_ok=True)
    return path


@pytest.fixture
def hub_dir(tmp_path: Path) -> Path:
    """A temp folder with a config and the sample upstream exports in its inbox."""
    write_config(tmp_path)
    for f in (SAMPLES / "forward").iterdir():
        shutil.copy(f, tmp_path / "inbox" / f.name)
    return tmp_path


CliRunner = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def cli() -> CliRunner:
    """Run ``feedback-hub`` in a subprocess (a real process, so SIGKILL tests are real)."""

    def run(cfg: Path, *args: str, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
        return subprocess.run([sys.executable, "-m", "hub.cli", "-c", str(cfg), *args],
                              capture_output=True, text=True, env=full_env, timeout=timeout,
                              cwd=REPO)

    return run


def wait_for(pred: Callable[[], bool], timeout: float = 20.0) -> bool:
    """Poll ``pred`` every 0.1 s until it holds or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return False


def settled(count: Callable[[], int], quiet: float = 0.5, timeout: float = 20.0) -> int:
    """Return ``count()`` once it has not changed for ``quiet`` seconds (or at ``timeout``).

    For servers that may still be receiving what a killed process wrote before it died.
    """
    value, since, deadline = count(), time.monotonic(), time.monotonic() + timeout
    while time.monotonic() - since < quiet and time.monotonic() < deadline:
        time.sleep(0.05)
        now = count()
        if now != value:
            value, since = now, time.monotonic()
    return value


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def jsonl_lines(path: Path) -> list[dict[str, Any]]:
    """Parse a jsonl sink file."""
    import json

    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
