"""An IMAP session: TLS, login, folder selection and the commands the connector needs.

Certificate verification is on unless the config turns it off explicitly; a certificate that
does not verify is refused with an error that says how to fix it. STARTTLS never falls back
to plain text. Passwords and tokens are read from ``SecretStr`` only at login and never logged.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
from collections.abc import Iterator, Sequence
from typing import Any

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError, LoginError

from connectors.email import fast_fetch
from connectors.email.config import ImapConfig, TlsMode
from connectors.email.oauth2 import TokenError, TokenSource, token_source

logger = logging.getLogger(__name__)

CHUNK = 1024 * 1024


class ImapError(RuntimeError):
    """A connection, TLS or login problem, with a message an operator can act on."""


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def ssl_context(config: ImapConfig) -> ssl.SSLContext:
    """The TLS context for a config (system CAs or ``ca_file``; verification on by default)."""
    ctx = ssl.create_default_context(cafile=config.ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not config.tls_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class ImapSession:
    """One logged-in connection to the mailbox."""

    def __init__(self, config: ImapConfig, tokens: TokenSource | None = None) -> None:
        self.config = config
        self.tokens = tokens if tokens is not None else token_source(config)
        self.client: IMAPClient | None = None
        self.selected: str | None = None
        self.uidvalidity: int | None = None
        self.capabilities: set[bytes] = set()
        self._fetches: fast_fetch.BodyFetches | None = None  # body FETCHes sent ahead

    # ------------------------------------------------------------------ connect
    def connect(self) -> ImapSession:
        """Connect, secure the connection and log in.

        Raises:
            ImapError: with the cause (certificate, STARTTLS missing, login refused...).
        """
        cfg = self.config
        where = f"{cfg.host}:{cfg.effective_port}"
        if cfg.tls is TlsMode.none and not _is_loopback(cfg.host):
            logger.warning("IMAP without TLS to a remote host: the password crosses the network "
                           "in clear", extra={"source": cfg.name, "host": cfg.host})
        if not cfg.tls_verify and cfg.tls is not TlsMode.none:
            logger.warning("TLS certificate verification is OFF (tls_verify: false)",
                           extra={"source": cfg.name, "host": cfg.host})
        ctx = ssl_context(cfg) if cfg.tls is not TlsMode.none else None
        try:
            client = IMAPClient(cfg.host, port=cfg.effective_port,
                                ssl=cfg.tls is TlsMode.implicit, ssl_context=ctx,
                                timeout=cfg.timeout)
        except ssl.SSLCertVerificationError as exc:
            raise ImapError(_cert_message(where, exc)) from None
        except ssl.SSLError as exc:
            raise ImapError(f"TLS handshake with {where} failed: {exc.reason or exc}") from None
        except (OSError, IMAPClientError) as exc:
            raise ImapError(f"cannot connect to IMAP server {where}: {exc}") from None
        try:
            if cfg.tls is TlsMode.starttls:
                if not client.has_capability("STARTTLS"):
                    raise ImapError(f"{where} does not offer STARTTLS; refusing to log in "
                                    "without TLS (use tls: implicit, or fix the server)")
                try:
                    client.starttls(ctx)
                except ssl.SSLCertVerificationError as exc:
                    raise ImapError(_cert_message(where, exc)) from None
                except ssl.SSLError as exc:
                    raise ImapError(f"STARTTLS with {where} failed: {exc.reason or exc}"
                                    ) from None
            self._login(client, where)
            self.capabilities = {c.upper() for c in client.capabilities()}
        except BaseException:
            try:
                client.shutdown()
            except Exception:
                pass
            raise
        self.client = client
        logger.info("IMAP connected", extra={"source": cfg.name, "host": cfg.host,
                                             "tls": cfg.tls.value})
        return self

    def _login(self, client: IMAPClient, where: str) -> None:
        cfg = self.config
        extra = self.tokens.secrets() if self.tokens is not None else []
        try:
            if self.tokens is not None:
                reused = self.tokens.cached
                try:
                    client.oauth2_login(cfg.username, self.tokens.token())
                except LoginError:
                    if not reused:
                        raise
                    # a cached token can be revoked before it expires: one fresh try
                    logger.info("IMAP refused a cached OAuth2 token; refreshing it",
                                extra={"source": cfg.name, "host": cfg.host})
                    client.oauth2_login(cfg.username, self.tokens.token(force=True))
            elif cfg.oauth2_token is not None:
                client.oauth2_login(cfg.username, cfg.oauth2_token.get_secret_value())
            else:
                assert cfg.password is not None
                client.login(cfg.username, cfg.password.get_secret_value())
        except TokenError as exc:
            raise ImapError(f"login to {where} as {cfg.username} impossible: "
                            f"{_strip_secret(str(exc), cfg, extra)}") from None
        except LoginError as exc:
            raise ImapError(f"login to {where} as {cfg.username} refused: "
                            f"{_strip_secret(str(exc), cfg, extra)}") from None

    def has(self, capability: str) -> bool:
        """Whether the server announced a capability."""
        return capability.upper().encode() in self.capabilities

    @property
    def c(self) -> IMAPClient:
        """The connected client."""
        if self.client is None:
            raise ImapError("not connected")
        return self.client

    def close(self) -> None:
        """Log out (best effort)."""
        if self.client is None:
            return
        try:
            self.client.logout()
        except Exception:
            try:
                self.client.shutdown()
            except Exception:
                pass
        self.client = None
        self.selected = None
        self._fetches = None

    # ------------------------------------------------------------------ folders
    def select(self, folder: str) -> dict[bytes, Any]:
        """Select a folder read-write; remember its UIDVALIDITY."""
        info = self.c.select_folder(folder)
        self.selected = folder
        self.uidvalidity = int(info[b"UIDVALIDITY"])
        return info

    def ensure_folder(self, folder: str) -> None:
        """Create a folder if it does not exist."""
        if not self.c.folder_exists(folder):
            try:
                self.c.create_folder(folder)
            except IMAPClientError:
                if not self.c.folder_exists(folder):  # created meanwhile by another process
                    raise

    def uids_after(self, last_uid: int) -> list[int]:
        """UIDs greater than ``last_uid`` in the selected folder, ascending."""
        found = self.c.search(["UID", f"{last_uid + 1}:*"])
        # "n:*" always matches the highest UID, even when it is below n (RFC 3501 6.4.8)
        return sorted(u for u in found if u > last_uid)

    def uids_upto(self, last_uid: int) -> list[int]:
        """UIDs at most ``last_uid`` still in the selected folder."""
        if last_uid < 1:
            return []
        return sorted(u for u in self.c.search(["UID", f"1:{last_uid}"]) if u <= last_uid)

    def sizes(self, uids: Sequence[int]) -> dict[int, tuple[int, Any]]:
        """UID → (RFC822.SIZE, INTERNALDATE)."""
        out: dict[int, tuple[int, Any]] = {}
        for i in range(0, len(uids), 1000):
            part = list(uids[i:i + 1000])
            fast = fast_fetch.sizes(self.c, part)
            if fast is not None:
                out.update(fast)
                continue
            for uid, data in self.c.fetch(part, ["RFC822.SIZE", "INTERNALDATE"]).items():
                out[uid] = (int(data.get(b"RFC822.SIZE", 0)), data.get(b"INTERNALDATE"))
        return out

    def fetch_bodies(self, uids: Sequence[int], ahead: Sequence[int] = ()) -> dict[int, bytes]:
        """Whole messages, without setting \\Seen (BODY.PEEK[]).

        ``ahead``: the UIDs the next call will ask for. Their FETCH is sent now, before this
        one's response is read, so the server prepares them meanwhile (pipelining). Until the
        call that collects them, or :meth:`drain`, nothing else may use this connection.
        """
        fetches = self._fetches
        if fetches is None or fetches.client is not self.c:
            fetches = self._fetches = fast_fetch.BodyFetches(self.c)
        if not fetches.sent_first(uids):
            fetches.drain()  # something else was sent ahead: not what is asked now
            if uids and not fetches.send(uids):
                res = self.c.fetch(list(uids), ["BODY.PEEK[]"])
                return {uid: data[b"BODY[]"] for uid, data in res.items() if b"BODY[]" in data}
        if ahead:
            fetches.send(ahead)
        return fetches.collect() if uids else {}

    def drain(self) -> None:
        """Read the responses of FETCHes sent ahead and not collected (they are dropped), so
        the connection can be used for something else."""
        if self._fetches is not None and self.client is not None:
            self._fetches.drain()

    def fetch_header(self, uid: int) -> bytes:
        """The header section of one message."""
        res = self.c.fetch([uid], ["BODY.PEEK[HEADER]"])
        return res.get(uid, {}).get(b"BODY[HEADER]", b"")

    def stream_body(self, uid: int, size: int) -> Iterator[bytes]:
        """A large message in chunks (partial FETCH), so it is never whole in memory."""
        offset = 0
        while offset < max(size, 1):
            res = self.c.fetch([uid], [f"BODY.PEEK[]<{offset}.{CHUNK}>"])
            data = res.get(uid, {})
            chunk = next((v for k, v in data.items() if k.startswith(b"BODY[]")), None)
            if not chunk:
                break
            yield chunk
            offset += len(chunk)
            if len(chunk) < CHUNK:
                break

    # ------------------------------------------------------------------ acknowledge
    def move(self, uids: Sequence[int], target: str) -> None:
        """MOVE, or COPY + \\Deleted + UID EXPUNGE where the server lacks MOVE."""
        if not uids:
            return
        if self.has("MOVE"):
            if fast_fetch.move(self.c, uids, target) is None:
                self.c.move(list(uids), target)
            return
        self.c.copy(list(uids), target)
        self.c.add_flags(list(uids), [b"\\Deleted", b"\\Seen"], silent=True)
        if self.has("UIDPLUS"):
            self.c.uid_expunge(list(uids))
        else:
            # a plain EXPUNGE would also remove mail someone else flagged \Deleted: leave them
            logger.warning("server lacks MOVE and UIDPLUS: copied and flagged \\Deleted, not "
                           "expunged", extra={"source": self.config.name, "count": len(uids)})

    def flag_seen(self, uids: Sequence[int]) -> None:
        """Flag messages \\Seen."""
        if uids:
            self.c.add_flags(list(uids), [b"\\Seen"], silent=True)


def _cert_message(where: str, exc: ssl.SSLCertVerificationError) -> str:
    why = exc.verify_message or exc.reason or str(exc)
    return (f"TLS certificate of {where} did not verify ({why}); set ca_file to the CA that "
            f"signed it, or, only for testing, tls_verify: false")


def _strip_secret(text: str, cfg: ImapConfig, extra: Sequence[str] = ()) -> str:
    secrets = [s.get_secret_value() for s in (cfg.password, cfg.oauth2_token) if s is not None]
    for secret in [*secrets, *extra]:
        if secret:
            text = text.replace(secret, "***")
    return text


def is_connection_error(exc: BaseException) -> bool:
    """Errors after which the session must be rebuilt (listen reconnects on these)."""
    return isinstance(exc, (OSError, socket.timeout, IMAPClientError, ImapError))
