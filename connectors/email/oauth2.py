"""XOAUTH2 access tokens for the mailbox: a fixed token, or one refreshed from a token endpoint.

Mail providers that turned off passwords (Microsoft 365, Gmail) hand out short-lived access
tokens (about an hour) and a long-lived refresh token. With ``oauth2:`` in the connector config
the hub asks the provider's token endpoint for a new access token with the refresh-token grant
(RFC 6749 section 6), keeps it until shortly before ``expires_in`` runs out, and asks again
when the server refuses a cached one. A refresh token the provider rotates (answers with a new
``refresh_token``) is used from then on by this process; it is not written anywhere, so keep
the configured one valid (providers that rotate keep the previous one valid for a while).

Nothing secret is logged: errors name the endpoint and the provider's ``error`` code only.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import requests

from connectors.email.config import ImapConfig, OAuth2Config

logger = logging.getLogger(__name__)

#: A cached token is renewed this many seconds before the provider says it expires.
EXPIRY_MARGIN = 60.0
#: Lifetime assumed when the token response has no ``expires_in``.
DEFAULT_LIFETIME = 3600.0


def safe_url(url: str) -> str:
    """The URL without user:password@ (some providers take client credentials there)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


class TokenError(RuntimeError):
    """The token endpoint could not be reached or refused to issue a token."""


class TokenSource:
    """Access tokens for one mailbox (thread-safe; one per connector)."""

    def __init__(self, config: OAuth2Config, *, clock: Callable[[], float] = time.monotonic,
                 session: requests.Session | None = None) -> None:
        self.config = config
        self._clock = clock
        self._session = session or requests.Session()
        self._refresh_token = config.refresh_token.get_secret_value()
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = threading.Lock()

    def token(self, *, force: bool = False) -> str:
        """A valid access token (cached; ``force`` asks the endpoint for a fresh one)."""
        with self._lock:
            if force or self._token is None or self._clock() >= self._expires_at:
                self._refresh()
            assert self._token is not None
            return self._token

    @property
    def cached(self) -> bool:
        """Whether a token from an earlier refresh is held (it may have been revoked since)."""
        return self._token is not None

    def secrets(self) -> list[str]:
        """Every secret this source knows, to strip from error messages."""
        out = [self._refresh_token, self._token or ""]
        if self.config.client_secret is not None:
            out.append(self.config.client_secret.get_secret_value())
        return [s for s in out if s]

    def _refresh(self) -> None:
        cfg = self.config
        form = {"grant_type": "refresh_token", "refresh_token": self._refresh_token,
                "client_id": cfg.client_id}
        if cfg.client_secret is not None:
            form["client_secret"] = cfg.client_secret.get_secret_value()
        if cfg.scope:
            form["scope"] = cfg.scope
        verify: bool | str = cfg.ca_file or True
        where = safe_url(cfg.token_url)
        started = self._clock()
        try:
            resp = self._session.post(cfg.token_url, data=form, timeout=cfg.timeout,
                                      verify=verify, headers={"Accept": "application/json"},
                                      allow_redirects=False)
        except requests.RequestException as exc:
            raise TokenError(f"OAuth2 token endpoint {where} unreachable: "
                             f"{type(exc).__name__}") from None
        try:
            body = resp.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise TokenError(f"OAuth2 token endpoint {where} answered HTTP "
                             f"{resp.status_code} without a JSON object")
        if resp.status_code != 200 or not isinstance(body.get("access_token"), str) \
                or not body["access_token"]:
            code = str(body.get("error") or "no access_token")[:100]
            desc = str(body.get("error_description") or "")[:300]
            for secret in self.secrets():
                desc = desc.replace(secret, "***")
            raise TokenError(f"OAuth2 token endpoint {where} refused the refresh "
                             f"(HTTP {resp.status_code}: {code}{': ' + desc if desc else ''})")
        try:
            lifetime = float(body.get("expires_in", DEFAULT_LIFETIME))
        except (TypeError, ValueError):
            lifetime = DEFAULT_LIFETIME
        self._token = body["access_token"]
        self._expires_at = started + max(0.0, lifetime - EXPIRY_MARGIN)
        rotated = body.get("refresh_token")
        if isinstance(rotated, str) and rotated and rotated != self._refresh_token:
            self._refresh_token = rotated
            logger.info("OAuth2 refresh token rotated by the provider (kept in memory)",
                        extra={"token_url": where})
        logger.info("OAuth2 access token refreshed",
                    extra={"token_url": where, "expires_in": lifetime})


def token_source(config: ImapConfig) -> TokenSource | None:
    """The token source a connector config asks for (None for password or fixed-token login)."""
    return TokenSource(config.oauth2) if config.oauth2 is not None else None
