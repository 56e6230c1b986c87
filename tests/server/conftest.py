"""Fixtures: the server app over a hub in a temp folder (in-process ASGI client)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from hub.config import load_config
from hub.pipeline import Hub
from hub.server.app import create_app
from outbox.sinks.signing import sign_headers
from tests.conftest import free_port, write_config

KEY_ID = "city-app"
SECRET = "k3y-for-tests-0123456789abcdef"
API_KEY = "open311-test-key"


@pytest.fixture
def server_hub(tmp_path: Path) -> Iterator[Hub]:
    cfg = write_config(tmp_path, server={"source": "upstream-api", "hmac_secrets": {
        KEY_ID: SECRET}, "api_keys": [API_KEY], "max_body": 16384})
    hub = Hub(load_config(cfg))
    yield hub
    hub.close()


@pytest.fixture
def client(server_hub: Hub) -> Iterator[httpx.Client]:
    """A real uvicorn server on a free loopback port, and an HTTP client talking to it."""
    with serving(server_hub) as c:
        yield c


@contextmanager
def serving(hub: Hub) -> Iterator[httpx.Client]:
    """Serve ``hub``'s app with uvicorn on a free loopback port; yield a client for it."""
    app = create_app(hub.config, hub=hub)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
            yield c
    finally:
        server.should_exit = True
        thread.join(10)


def signed(doc: Any, *, secret: str = SECRET, key_id: str = KEY_ID, now: float | None = None,
           raw: bytes | None = None) -> tuple[bytes, dict[str, str]]:
    """A body and the headers that sign it."""
    body = raw if raw is not None else json.dumps(doc, ensure_ascii=False).encode("utf-8")
    headers = sign_headers(secret, body, key_id=key_id, now=now if now is not None else
                           time.time())
    headers["Content-Type"] = "application/json"
    return body, headers


def record(i: int, **over: Any) -> dict[str, Any]:
    rec = {"id": f"WX-{i:05d}", "title": "路灯不亮",
           "content": f"幸福路{i}号门口路灯坏了，请尽快修复。联系电话13812345678",
           "reporter": {"name": "王小明", "phone": "13812345678"},
           "location": {"address": f"幸福路{i}号", "lat": 31.23, "lon": 121.47}}
    rec.update(over)
    return rec
