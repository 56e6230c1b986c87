"""Config of the ``imap`` connector (the complaints mailbox) and of its mapper."""

from __future__ import annotations

from enum import Enum
from typing import Literal

from pydantic import Field, SecretStr, model_validator

from hub.config_types import ByteSize, ComponentConfig, Duration, StrictModel
from normalizer.case import Channel


class TlsMode(str, Enum):
    """How the connection is protected."""

    implicit = "implicit"  # TLS from the first byte (port 993)
    starttls = "starttls"  # plain connection upgraded with STARTTLS (port 143); never falls back
    none = "none"  # no TLS at all: only for a server on loopback


class AfterCommit(str, Enum):
    """What happens to a mail at the server once it is committed to the store."""

    move = "move"  # MOVE to processed_folder (COPY + \\Deleted + UID EXPUNGE without MOVE)
    seen = "seen"  # flag \\Seen and leave it in the folder


class OAuth2Config(StrictModel):
    """XOAUTH2 with access tokens refreshed from the provider's token endpoint."""

    token_url: str = Field(pattern=r"^https?://", description="The provider's OAuth2 token "
                           "endpoint, e.g. https://login.microsoftonline.com/<tenant>/oauth2/"
                           "v2.0/token or https://oauth2.googleapis.com/token.")
    client_id: str = Field(min_length=1, description="The registered application's client id.")
    client_secret: SecretStr | None = Field(default=None, description="Its client secret, "
                                            "from the environment (omit for public clients).")
    refresh_token: SecretStr = Field(description="Refresh token granted to the mailbox "
                                     "account: ${IMAP_OAUTH2_REFRESH_TOKEN}.")
    scope: str | None = Field(default=None, description="Scope to ask for (Microsoft: "
                              "https://outlook.office365.com/IMAP.AccessAsUser.All "
                              "offline_access).")
    ca_file: str | None = Field(default=None, description="PEM CA bundle for the token "
                                "endpoint (default: the system's CAs).")
    timeout: Duration = Field(default=30.0, description="HTTP timeout of a token request.")


class ImapConfig(ComponentConfig):
    """Config of an ``imap`` connector."""

    type: Literal["imap"] = "imap"
    channel: Channel = Field(default=Channel.email, description="Channel of these records.")
    host: str = Field(description="IMAP server host name (checked against its certificate).")
    port: int | None = Field(default=None, ge=1, le=65535,
                             description="Default: 993 for implicit TLS, else 143.")
    tls: TlsMode = Field(default=TlsMode.implicit,
                         description="implicit (993), starttls (143) or none (loopback only).")
    tls_verify: bool = Field(default=True, description="Verify the server certificate and host "
                             "name. false only for testing: the connection can be intercepted.")
    ca_file: str | None = Field(default=None, description="PEM file of the CA that signed the "
                                "server certificate (default: the system's CAs).")
    username: str = Field(description="Login name (often the mailbox address).")
    password: SecretStr | None = Field(default=None,
                                       description="Password, from the environment: "
                                                   "${IMAP_PASSWORD}.")
    oauth2_token: SecretStr | None = Field(default=None, description="XOAUTH2 access token "
                                           "instead of a password: ${IMAP_OAUTH2_TOKEN} "
                                           "(fixed; use oauth2 to refresh it).")
    oauth2: OAuth2Config | None = Field(default=None, description="XOAUTH2 with tokens "
                                        "refreshed from a token endpoint (instead of a "
                                        "password or oauth2_token).")
    folders: list[str] = Field(default_factory=lambda: ["INBOX"], min_length=1,
                               description="Folders to read, in order.")
    after_commit: AfterCommit = Field(default=AfterCommit.move,
                                      description="move (to processed_folder) or seen.")
    processed_folder: str = Field(default="Processed",
                                  description="Where committed mail is moved (after_commit: "
                                              "move).")
    quarantine_folder: str = Field(default="Quarantine",
                                   description="Where oversized mail is moved (always).")
    create_folders: bool = Field(default=True, description="Create the processed and "
                                 "quarantine folders when missing.")
    max_message_size: ByteSize = Field(default=25_000_000, description="Larger mail becomes a "
                                       "dead letter and is moved to quarantine_folder.")
    dead_letter_max_size: ByteSize = Field(default=100_000_000, description="Oversized mail up "
                                           "to this size keeps its raw bytes in the dead letter;"
                                           " larger keeps only its headers.")
    batch_size: int = Field(default=50, ge=1, le=5000,
                            description="Mails fetched, committed and acknowledged together.")
    batch_bytes: ByteSize = Field(default=50_000_000, description="A batch also ends once it "
                                  "holds this many bytes.")
    ack_every: int = Field(default=1000, ge=1, le=100_000, description="Committed mail is "
                           "moved (or flagged) in one command once this many are waiting (more "
                           "while the previous command still runs: those waiting are merged), "
                           "at the end of every pass, and after every batch once fewer than "
                           "this many of a longer pass are left; until then it waits in the "
                           "folder, committed (a crash leaves it to the next run, never stored "
                           "twice).")
    stream_threshold: ByteSize = Field(default=4_000_000, description="Mails larger than this "
                                       "are fetched in chunks straight to the blob store.")
    blob_writers: int = Field(default=8, ge=1, le=64, description="Ignored: a batch's raw "
                              "mails are written as one pack file with one fsync (kept so "
                              "older configs still load).")
    timeout: Duration = Field(default=60.0, description="Socket timeout.")
    lock_ttl: Duration = Field(default=600.0, description="The mailbox lock expires this long "
                               "after its last renewal (a crashed fetcher frees it).")
    idle_renew: Duration = Field(default=20 * 60, description="listen: restart IDLE this often "
                                 "(servers drop IDLE after 30 min; must be at most 25m).")
    idle_check: Duration = Field(default=2.0, description="listen: how often a waiting IDLE "
                                 "checks for stop requests.")
    poll_interval: Duration = Field(default=60.0, description="listen: poll interval when the "
                                    "server lacks IDLE, and for folders after the first.")
    reconnect_max: Duration = Field(default=300.0, description="listen: longest wait between "
                                    "reconnect attempts (exponential backoff with jitter).")
    loop_header: str = Field(default="X-Feedback-Hub-Loop", description="Mail carrying this "
                             "header was sent by a Feedback Hub and is ignored.")
    trim_quotes: bool = Field(default=True, description="Trim quoted reply history and "
                              "signatures from the case description (kept in the raw mail).")
    authserv_id: str | None = Field(default=None, description="authserv-id of the receiving "
                                    "mail server whose Authentication-Results (DKIM, SPF, "
                                    "DMARC) are trusted, e.g. mx.city.example. Unset: the "
                                    "sender is not checked.")
    on_auth_fail: Literal["flag", "dead_letter"] = Field(
        default="flag", description="A mail whose sender failed authentication at authserv_id: "
        "flag (a new case flagged sender_spoofed for review, never a reply on an existing "
        "case) or dead_letter.")

    @model_validator(mode="after")
    def _check(self) -> ImapConfig:
        given = [k for k in ("password", "oauth2_token", "oauth2") if getattr(self, k) is not None]
        if not given:
            raise ValueError("set password (e.g. ${IMAP_PASSWORD}), oauth2_token or oauth2")
        if len(given) > 1:
            raise ValueError(f"set only one of password, oauth2_token and oauth2 (got "
                             f"{' and '.join(given)})")
        if self.idle_renew > 25 * 60:
            raise ValueError("idle_renew: must be at most 25m (servers end IDLE after 30 min)")
        if self.after_commit is AfterCommit.move and self.processed_folder in self.folders:
            raise ValueError("processed_folder must not be one of the folders read")
        if self.quarantine_folder in self.folders:
            raise ValueError("quarantine_folder must not be one of the folders read")
        return self

    @property
    def effective_port(self) -> int:
        """The port to connect to."""
        return self.port or (993 if self.tls is TlsMode.implicit else 143)
