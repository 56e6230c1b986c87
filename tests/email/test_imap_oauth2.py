"""XOAUTH2 login against a real Dovecot whose oauth2 passdb asks a real token introspection
endpoint, and access tokens refreshed from a real token endpoint (RFC 6749 section 6).

The provider is a small HTTP server in this test (token endpoint + RFC 7662 introspection, as
Dovecot's ``introspection_mode = post`` calls it): the only part of the chain not otherwise
available offline. Dovecot, the IMAP session, the connector and the hub pipeline are the real
ones.
"""

from __future__ import annotations

import itertools
import json
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest

from connectors.email.config import ImapConfig
from connectors.email.demo_server import Dovecot
from connectors.email.imap import ImapError, ImapSession
from connectors.email.oauth2 import TokenSource
from tests.email import mails
from tests.email.conftest import start_dovecot, stop_dovecot, write_hub_config
from tests.email.test_imap_pipeline import rows, run

pytestmark = pytest.mark.integration

CLIENT_ID = "feedback-hub-test"
CLIENT_SECRET = "client-secret-Zq81"
REFRESH = "refresh-token-Yx42"


@dataclass
class Provider:
    """Token endpoint and introspection endpoint of a test OAuth2 provider."""

    lifetime: int = 3600
    rotate: bool = False
    refresh_tokens: set[str] = field(default_factory=lambda: {REFRESH})
    #: access token → user it was issued for
    active: dict[str, str] = field(default_factory=dict)
    token_requests: list[dict[str, str]] = field(default_factory=list)
    introspections: int = 0
    counter: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    user: str = ""
    port: int = 0

    @property
    def token_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        self.token_requests.append(form)
        if form.get("grant_type") != "refresh_token":
            return 400, {"error": "unsupported_grant_type"}
        if form.get("client_id") != CLIENT_ID or form.get("client_secret") != CLIENT_SECRET:
            return 401, {"error": "invalid_client"}
        if form.get("refresh_token") not in self.refresh_tokens:
            return 400, {"error": "invalid_grant",
                         "error_description": f"refresh token {form.get('refresh_token')} "
                                              "is expired or revoked"}
        access = f"access-{next(self.counter)}-Wm3"
        self.active[access] = self.user
        body: dict[str, Any] = {"access_token": access, "token_type": "Bearer",
                                "expires_in": self.lifetime}
        if self.rotate:
            self.refresh_tokens.discard(form["refresh_token"])
            new = f"refresh-rotated-{next(self.counter)}"
            self.refresh_tokens.add(new)
            body["refresh_token"] = new
        return 200, body

    def introspect(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        self.introspections += 1
        user = self.active.get(form.get("token", ""))
        return 200, ({"active": True, "username": user} if user else {"active": False})


def _serve(provider: Provider) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
            form = {k: v[0] for k, v in parse_qs(raw).items()}
            route = {"/token": provider.token, "/introspect": provider.introspect}
            handler = route.get(self.path)
            status, body = handler(form) if handler else (404, {"error": "not_found"})
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    provider.port = server.server_port
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def oauth_dovecot() -> Iterator[tuple[Dovecot, Provider]]:
    """Dovecot that accepts XOAUTH2 tokens the provider says are active (and passwords)."""
    provider = Provider()
    server = _serve(provider)
    conf_dir = Path(tempfile.mkdtemp(prefix="fbhub-oauth2-"))
    conf_dir.chmod(0o755)
    conf = conf_dir / "dovecot-oauth2.conf.ext"
    conf.write_text(f"introspection_mode = post\n"
                    f"introspection_url = http://127.0.0.1:{provider.port}/introspect\n"
                    "force_introspection = yes\nusername_attribute = username\n"
                    "active_attribute = active\nactive_value = true\n", encoding="utf-8")
    conf.chmod(0o644)
    dovecot = start_dovecot(extra=(
        "auth_mechanisms = $auth_mechanisms xoauth2 oauthbearer\n"
        "auth_failure_delay = 0\n"
        f"passdb {{\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n  args = {conf}\n}}\n"))
    try:
        yield dovecot, provider
    finally:
        stop_dovecot(dovecot)
        server.shutdown()


@pytest.fixture
def provider(oauth_dovecot: tuple[Dovecot, Provider], mailbox: str) -> Provider:
    """The provider, reset for this test's mailbox user."""
    p = oauth_dovecot[1]
    p.lifetime, p.rotate, p.user = 3600, False, mailbox
    p.refresh_tokens.clear()
    p.refresh_tokens.add(REFRESH)
    p.active.clear()
    p.token_requests.clear()
    p.introspections = 0
    return p


def oauth2_entry(provider: Provider, **kw: Any) -> dict[str, Any]:
    entry = {"token_url": provider.token_url, "client_id": CLIENT_ID,
             "client_secret": CLIENT_SECRET, "refresh_token": REFRESH}
    entry.update(kw)
    return entry


def session_config(dovecot: Dovecot, user: str, **kw: Any) -> ImapConfig:
    base: dict[str, Any] = {"name": "mb", "host": "127.0.0.1", "port": dovecot.tls_port,
                            "tls": "implicit", "ca_file": str(dovecot.ca_pem), "username": user}
    base.update(kw)
    return ImapConfig.model_validate(base)


def test_mailbox_read_end_to_end_with_refreshed_tokens(
        tmp_path: Path, oauth_dovecot: tuple[Dovecot, Provider], provider: Provider,
        mailbox: str, monkeypatch: pytest.MonkeyPatch) -> None:
    dovecot, _ = oauth_dovecot
    dovecot.append(mailbox, [mails.gbk_plain()])
    monkeypatch.setenv("IMAP_OAUTH2_CLIENT_SECRET", CLIENT_SECRET)
    monkeypatch.setenv("IMAP_OAUTH2_REFRESH_TOKEN", REFRESH)
    cfg = write_hub_config(tmp_path, dovecot, mailbox, password=None, oauth2=oauth2_entry(
        provider, client_secret="${IMAP_OAUTH2_CLIENT_SECRET}",
        refresh_token="${IMAP_OAUTH2_REFRESH_TOKEN}"))
    summary = run(cfg)
    assert summary.ingest[0].error is None
    assert summary.ingest[0].inserted == 1
    assert len(rows(tmp_path, "SELECT case_id FROM cases")) == 1
    # one refresh-token grant, with the client's credentials; Dovecot checked the token
    assert [r["grant_type"] for r in provider.token_requests] == ["refresh_token"]
    assert provider.token_requests[0]["refresh_token"] == REFRESH
    assert provider.introspections >= 1


def test_a_cached_token_is_reused_until_it_expires(
        oauth_dovecot: tuple[Dovecot, Provider], provider: Provider, mailbox: str) -> None:
    dovecot, _ = oauth_dovecot
    now = [1000.0]
    cfg = session_config(dovecot, mailbox, oauth2=oauth2_entry(provider))
    assert cfg.oauth2 is not None
    tokens = TokenSource(cfg.oauth2, clock=lambda: now[0])
    for _ in range(2):
        ImapSession(cfg, tokens=tokens).connect().close()
    assert len(provider.token_requests) == 1
    now[0] += 3600 - 59  # within the renewal margin before expiry
    ImapSession(cfg, tokens=tokens).connect().close()
    assert len(provider.token_requests) == 2


def test_a_revoked_cached_token_is_refreshed_once(
        oauth_dovecot: tuple[Dovecot, Provider], provider: Provider, mailbox: str) -> None:
    dovecot, _ = oauth_dovecot
    cfg = session_config(dovecot, mailbox, oauth2=oauth2_entry(provider))
    assert cfg.oauth2 is not None
    tokens = TokenSource(cfg.oauth2)
    ImapSession(cfg, tokens=tokens).connect().close()
    provider.active.clear()  # the provider revoked every access token
    s = ImapSession(cfg, tokens=tokens).connect()
    assert s.select("INBOX")[b"UIDVALIDITY"] > 0
    s.close()
    assert len(provider.token_requests) == 2


def test_rotated_refresh_token_is_used_for_the_next_refresh(
        oauth_dovecot: tuple[Dovecot, Provider], provider: Provider, mailbox: str) -> None:
    dovecot, _ = oauth_dovecot
    provider.rotate = True
    cfg = session_config(dovecot, mailbox, oauth2=oauth2_entry(provider))
    assert cfg.oauth2 is not None
    tokens = TokenSource(cfg.oauth2)
    ImapSession(cfg, tokens=tokens).connect().close()
    tokens.token(force=True)  # the original refresh token is no longer valid here
    used = [r["refresh_token"] for r in provider.token_requests]
    assert used[0] == REFRESH and used[1].startswith("refresh-rotated-")


def test_refused_refresh_is_a_clear_error_without_secrets(
        oauth_dovecot: tuple[Dovecot, Provider], provider: Provider, mailbox: str) -> None:
    dovecot, _ = oauth_dovecot
    provider.refresh_tokens.clear()  # the refresh token was revoked
    cfg = session_config(dovecot, mailbox, oauth2=oauth2_entry(provider))
    with pytest.raises(ImapError) as err:
        ImapSession(cfg).connect()
    msg = str(err.value)
    assert msg.startswith(f"login to 127.0.0.1:{dovecot.tls_port} as {mailbox} impossible: "
                          f"OAuth2 token endpoint {provider.token_url} refused the refresh "
                          "(HTTP 400: invalid_grant")
    assert REFRESH not in msg and CLIENT_SECRET not in msg and "***" in msg


def test_unreachable_token_endpoint_is_a_clear_error(
        oauth_dovecot: tuple[Dovecot, Provider], mailbox: str) -> None:
    from tests.conftest import free_port

    dovecot, _ = oauth_dovecot
    url = f"http://127.0.0.1:{free_port()}/token"
    cfg = session_config(dovecot, mailbox, oauth2={
        "token_url": url, "client_id": CLIENT_ID, "refresh_token": REFRESH, "timeout": "2s"})
    with pytest.raises(ImapError, match=f"OAuth2 token endpoint {url} unreachable"):
        ImapSession(cfg).connect()


def test_fixed_access_token_logs_in_and_a_wrong_one_is_refused(
        oauth_dovecot: tuple[Dovecot, Provider], provider: Provider, mailbox: str) -> None:
    dovecot, _ = oauth_dovecot
    status, body = provider.token({"grant_type": "refresh_token", "client_id": CLIENT_ID,
                                   "client_secret": CLIENT_SECRET, "refresh_token": REFRESH})
    assert status == 200
    s = ImapSession(session_config(dovecot, mailbox,
                                   oauth2_token=body["access_token"])).connect()
    s.close()
    with pytest.raises(ImapError) as err:
        ImapSession(session_config(dovecot, mailbox, oauth2_token="not-a-token-Qq7")).connect()
    assert "refused" in str(err.value) and "not-a-token-Qq7" not in str(err.value)


def test_client_credentials_in_the_endpoint_url_are_never_shown() -> None:
    from connectors.email.oauth2 import safe_url

    assert safe_url("https://hub:s3cret@idp.example/oauth2/token") == \
        "https://***@idp.example/oauth2/token"
    assert safe_url("https://idp.example/token") == "https://idp.example/token"


def test_a_rotated_refresh_token_survives_a_restart(
        tmp_path: Path, oauth_dovecot: tuple[Dovecot, Provider], provider: Provider,
        mailbox: str) -> None:
    """The provider rotates refresh tokens and refuses a rotated-away one (reuse detection):
    a hub restarted after a rotation goes on with the token it kept in the store, encrypted;
    a new configured token (a new consent) takes over from the kept one."""
    from hub.config import load_config
    from hub.pipeline import Hub

    dovecot, _ = oauth_dovecot
    provider.rotate = True
    dovecot.append(mailbox, [mails.gbk_plain()])
    cfg = write_hub_config(tmp_path, dovecot, mailbox, password=None,
                           oauth2=oauth2_entry(provider))
    assert run(cfg).ingest[0].inserted == 1
    rotated = provider.token_requests[-1]
    assert rotated["refresh_token"] == REFRESH and REFRESH not in provider.refresh_tokens
    with Hub(load_config(cfg)) as hub:
        (kept,) = hub.store.query("SELECT namespace, key, value FROM mapper_state "
                                  "WHERE namespace = 'oauth2'")
    assert kept["key"] == "mailbox"
    (current,) = provider.refresh_tokens
    assert current not in kept["value"] and "refresh-rotated" not in kept["value"]  # encrypted

    dovecot.append(mailbox, [mails.big5_plain()])  # the restart: a new hub, a new connector
    summary = run(cfg)
    assert summary.ingest[0].error is None and summary.ingest[0].inserted == 1
    assert provider.token_requests[-1]["refresh_token"] == current

    # the operator consents again: the new configured token is used, not the kept one
    provider.refresh_tokens.add("refresh-token-new-consent")
    cfg = write_hub_config(tmp_path, dovecot, mailbox, password=None,
                           oauth2=oauth2_entry(provider, refresh_token="refresh-token-new-"
                                                                       "consent"))
    dovecot.append(mailbox, [mails.gbk_plain(msgid="<gbk-0002@mail.qq.example>")])
    assert run(cfg).ingest[0].inserted == 1
    assert provider.token_requests[-1]["refresh_token"] == "refresh-token-new-consent"


def test_a_refused_kept_token_falls_back_to_the_configured_one(
        tmp_path: Path, oauth_dovecot: tuple[Dovecot, Provider], provider: Provider,
        mailbox: str) -> None:
    from connectors.email.oauth2 import RotationKeeper
    from hub.config import load_config
    from hub.pipeline import Hub

    dovecot, _ = oauth_dovecot
    dovecot.append(mailbox, [mails.gbk_plain()])
    cfg = write_hub_config(tmp_path, dovecot, mailbox, password=None,
                           oauth2=oauth2_entry(provider))
    with Hub(load_config(cfg)) as hub:  # a kept token the provider has since revoked
        RotationKeeper(hub.side_store, "mailbox", REFRESH).save("refresh-revoked-Kq9")
    summary = run(cfg)
    assert summary.ingest[0].error is None and summary.ingest[0].inserted == 1
    assert [r["refresh_token"] for r in provider.token_requests] == ["refresh-revoked-Kq9",
                                                                     REFRESH]
