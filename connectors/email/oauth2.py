"""XOAUTH2 access tokens for the mailbox: a fixed token, or one refreshed from a token endpoint.

Mail providers that turned off passwords (Microsoft 365, Gmail) hand out short-lived access
tokens (about an hour) and a long-lived refresh token. With ``oauth2:`` in the connector config
the hub asks the provider's token endpoint for a new access token with the refresh-token grant
(RFC 6749 section 6), keeps it until shortly before ``expires_in`` runs out, and asks again
when the server refuses a cached one.

A refresh token the provider rotates (answers with a new ``refresh_token``) is used from then
on, and, when the connector runs inside a hub, kept in the store (namespace ``oauth2``, key the
connector name) encrypted with Fernet under a key derived from the configured refresh token,
together with a fingerprint of that configured token. A restart then goes on with the rotated
token: providers with refresh-token rotation and reuse detection (Okta, Auth0, Entra ID for
some clients) refuse a rotated-away token and may revoke the whole grant. Configuring a new
refresh token (a new consent) replaces the kept one, since its fingerprint no longer matches;
if the provider refuses a kept token, the configured one is tried once.

Nothing secret is logged: errors name the endpoint and the provider's ``error`` code only.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
from cryptography.fernet import Fernet, InvalidToken

from connectors.email.config import ImapConfig, OAuth2Config
from hub.logsetup import register_secrets

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

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code  # the provider's ``error`` (``invalid_grant``...) when it answered


#: Opens a store connection of its own (``Hub.side_store``) for the kept refresh token.
StoreOpener = Callable[[], AbstractContextManager[Any]]


class RotationKeeper:
    """Keeps a connector's rotated refresh token in the store, encrypted (see the module)."""

    NAMESPACE = "oauth2"

    def __init__(self, open_store: StoreOpener, key: str, configured: str) -> None:
        self.open_store = open_store
        self.key = key
        derived = hashlib.sha256(b"feedback-hub/oauth2-rotation\0" + configured.encode())
        self._fernet = Fernet(base64.urlsafe_b64encode(derived.digest()))
        self.fingerprint = hashlib.sha256(b"feedback-hub/oauth2-configured\0"
                                          + configured.encode()).hexdigest()[:32]

    def load(self) -> str | None:
        """The kept token rotated from the configured one (None: none, or another grant's)."""
        with self.open_store() as store:
            doc = store.get_state(self.NAMESPACE, self.key)
        if not doc or doc.get("for") != self.fingerprint:
            return None
        try:
            return self._fernet.decrypt(str(doc["token"]).encode()).decode()
        except (InvalidToken, KeyError, ValueError):
            logger.warning("kept OAuth2 refresh token unreadable; using the configured one",
                           extra={"connector": self.key})
            return None

    def save(self, token: str) -> None:
        """Keep ``token`` (the provider just rotated to it)."""
        doc = {"for": self.fingerprint, "token": self._fernet.encrypt(token.encode()).decode(),
               "rotated_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        with self.open_store() as store:
            store.put_state(self.NAMESPACE, self.key, doc)


class TokenSource:
    """Access tokens for one mailbox (thread-safe; one per connector)."""

    def __init__(self, config: OAuth2Config, *, clock: Callable[[], float] = time.monotonic,
                 session: requests.Session | None = None,
                 keeper: RotationKeeper | None = None) -> None:
        self.config = config
        self._clock = clock
        self._session = session or requests.Session()
        self._configured = config.refresh_token.get_secret_value()
        self._refresh_token = self._configured
        self._keeper = keeper
        self._loaded = keeper is None
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = threading.Lock()

    def token(self, *, force: bool = False) -> str:
        """A valid access token (cached; ``force`` asks the endpoint for a fresh one)."""
        with self._lock:
            if force or self._token is None or self._clock() >= self._expires_at:
                self._refresh_keeping()
            assert self._token is not None
            return self._token

    @property
    def cached(self) -> bool:
        """Whether a token from an earlier refresh is held (it may have been revoked since)."""
        return self._token is not None

    def secrets(self) -> list[str]:
        """Every secret this source knows, to strip from error messages."""
        out = [self._configured, self._refresh_token, self._token or ""]
        if self.config.client_secret is not None:
            out.append(self.config.client_secret.get_secret_value())
        return [s for s in out if s]

    def _refresh_keeping(self) -> None:
        """Refresh with the kept rotated token if there is one (read once), falling back to
        the configured token once if the provider refuses the kept one."""
        if not self._loaded and self._keeper is not None:
            self._loaded = True
            kept = self._keeper.load()
            if kept:
                register_secrets([kept])
                self._refresh_token = kept
        try:
            self._refresh()
        except TokenError as exc:
            if exc.code != "invalid_grant" or self._refresh_token == self._configured:
                raise
            logger.warning("OAuth2 provider refused the kept refresh token; trying the "
                           "configured one", extra={"token_url": safe_url(self.config.token_url)})
            self._refresh_token = self._configured
            self._refresh()

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
                             f"(HTTP {resp.status_code}: {code}{': ' + desc if desc else ''})",
                             code=code)
        try:
            lifetime = float(body.get("expires_in", DEFAULT_LIFETIME))
        except (TypeError, ValueError):
            lifetime = DEFAULT_LIFETIME
        self._token = body["access_token"]
        self._expires_at = started + max(0.0, lifetime - EXPIRY_MARGIN)
        rotated = body.get("refresh_token")
        if isinstance(rotated, str) and rotated and rotated != self._refresh_token:
            register_secrets([rotated])
            self._refresh_token = rotated
            kept = self._keeper is not None
            if self._keeper is not None:
                try:
                    self._keeper.save(rotated)
                except Exception as exc:  # the token works; only a restart would miss it
                    kept = False
                    logger.error("rotated OAuth2 refresh token could not be kept in the "
                                 "store", extra={"token_url": where,
                                                 "error": type(exc).__name__})
            logger.info("OAuth2 refresh token rotated by the provider",
                        extra={"token_url": where, "kept_in_store": kept})
        logger.info("OAuth2 access token refreshed",
                    extra={"token_url": where, "expires_in": lifetime})


def token_source(config: ImapConfig, open_store: StoreOpener | None = None
                 ) -> TokenSource | None:
    """The token source a connector config asks for (None for password or fixed-token login);
    with ``open_store`` a rotated refresh token is kept in the store."""
    if config.oauth2 is None:
        return None
    keeper = RotationKeeper(open_store, config.name,
                            config.oauth2.refresh_token.get_secret_value()) \
        if open_store is not None else None
    return TokenSource(config.oauth2, keeper=keeper)
