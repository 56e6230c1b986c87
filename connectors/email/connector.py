"""``imap``: the complaints mailbox, read the way helpdesks learned to (Zammad, osTicket, RT).

* The raw RFC 822 bytes of every mail are written to the blob store and committed (with the
  per-folder checkpoint: UIDVALIDITY and last UID) BEFORE the mail is moved or flagged; the
  pipeline calls :meth:`ImapConnector.ack` only after that commit.
* ``source_ref`` is the Message-ID plus the sha256 of the raw bytes, so a UIDVALIDITY rescan,
  a second fetcher or a crash between commit and ack never stores a mail twice. A mail without
  Message-ID gets a stable generated one (from the same hash).
* One process reads a mailbox at a time (a lock in the store; a lock left by a crashed local
  process is taken over at once).
* Mail over ``max_message_size`` becomes a dead letter with the reason and is moved to the
  quarantine folder, so it never blocks the folder. Large mail is streamed to the blob store in
  chunks (partial FETCH), so memory stays flat.
* Parsing (charsets, attachments, auto-replies, threading) happens later, in the channel mapper
  :mod:`normalizer.mappers.email`, on the stored bytes.
"""

from __future__ import annotations

import copy
import hashlib
import io
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from connectors.base import (
    IngestContext,
    RawRecord,
    Reject,
    ReparseError,
    SourceBatch,
    trusted_raw,
)
from connectors.email.acker import AckSender
from connectors.email.config import AfterCommit, ImapConfig
from connectors.email.imap import ImapSession, is_connection_error
from connectors.email.oauth2 import StoreOpener, token_source
from connectors.email.prefetch import Lookahead
from connectors.email.sizes import PassSizes
from hub import faults
from hub.leases import Lease, LeaseLost, owner_id
from outbox.blobs import BlobStore

logger = logging.getLogger(__name__)

_MSGID = re.compile(rb"^message-id[ \t]*:[ \t]*((?:.*)(?:\r?\n[ \t].*)*)", re.I | re.M)
_ANGLE = re.compile(rb"<[^<>\s]+>")
_FOLD = re.compile(rb"\r?\n[ \t]+")
HEADER_PEEK = 256 * 1024
HEAD_SIZES = 1000  # UIDs of a pass whose sizes are read before its first batch is fetched


def header_end(raw: bytes) -> int:
    """Where the header section of a message ends (after the first empty line)."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        i = raw.find(sep)
        if i >= 0:
            return i + len(sep)
    return len(raw)


def header_section(raw: bytes) -> bytes:
    """The header section of a message (up to the first empty line)."""
    return raw[:header_end(raw)]


def _find_message_id(header: bytes, end: int) -> re.Match[bytes] | None:
    """``_MSGID.search(header, 0, end)``, faster: the regular expression is tried only where
    a line starts with ``message-id`` (any case; both are ASCII-only), found by ``find``."""
    low = header[:end].lower()
    at = 0 if low.startswith(b"message-id") else None
    nl = -1
    while True:
        if at is not None:
            m = _MSGID.match(header, at, end)
            if m is not None:
                return m
        nl = low.find(b"\nmessage-id", nl + 1)
        if nl < 0:
            return None
        at = nl + 1


def message_id_of(header: bytes, sha256: str, end: int | None = None) -> tuple[str, bool]:
    """The Message-ID of a mail, or a stable generated one; returns (id, generated).

    ``end``: read only ``header[:end]`` (a whole mail and its :func:`header_end`, without
    copying the header out).
    """
    m = _find_message_id(header, len(header) if end is None else end)
    if m:
        value = m.group(1)
        if b"\n" in value:  # folded over several lines
            value = _FOLD.sub(b" ", value)
        value = value.strip()
        angle = _ANGLE.search(value)
        token = angle.group(0) if angle else (b"<" + value + b">" if value and b" " not in value
                                              else b"")
        if token and len(token) > 2:
            return token.decode("ascii", "replace"), False
    return f"<{sha256[:40]}@generated.feedback-hub.invalid>", True


def source_ref_for(message_id: str, sha256: str) -> str:
    """``<message-id>|sha256:<hex>``; very long ids are hashed to keep the key short."""
    if len(message_id) > 600:
        message_id = "mid-sha1:" + hashlib.sha1(message_id.encode()).hexdigest()
    return f"{message_id}|sha256:{sha256}"


@dataclass
class AckToken:
    """What :meth:`ImapConnector.ack` does for one committed batch."""

    folder: str
    uidvalidity: int
    processed: list[int] = field(default_factory=list)
    quarantine: list[int] = field(default_factory=list)
    #: send it at once: fewer than ``ack_every`` mails of the pass are left to fetch
    last_stretch: bool = False


def merge_acks(tokens: list[AckToken]) -> list[AckToken]:
    """Consecutive acknowledgements of the same folder (and UIDVALIDITY) as one."""
    out: list[AckToken] = []
    for tok in tokens:
        prev = out[-1] if out else None
        if prev is not None and (prev.folder, prev.uidvalidity) == (tok.folder, tok.uidvalidity):
            prev.processed.extend(tok.processed)
            prev.quarantine.extend(tok.quarantine)
        else:
            out.append(AckToken(tok.folder, tok.uidvalidity, list(tok.processed),
                                list(tok.quarantine)))
    return out


class _ChunkReader(io.RawIOBase):
    """A file-like view of an iterator of byte chunks (for ``BlobStore.put_stream``)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = b""

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:  # type: ignore[override]
        while not self._buf:
            try:
                self._buf = next(self._chunks)
            except StopIteration:
                return b""
        if size < 0 or size >= len(self._buf):
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:size], self._buf[size:]
        return out


class ImapConnector:
    """Reads the configured folders of one mailbox."""

    type_name: ClassVar[str] = "imap"
    Config = ImapConfig

    def __init__(self, config: ImapConfig, blobs: Any = None,
                 open_store: StoreOpener | None = None) -> None:
        self.config = config
        self.name = config.name
        self.channel = config.channel
        self.blobs = blobs
        self.session: ImapSession | None = None
        self.tokens = token_source(config, open_store)  # XOAUTH2 tokens outlive sessions
        self._ensured: set[str] = set()
        self._lease: Lease | None = None
        self._pending_ack: AckToken | None = None
        self._prefetch: Lookahead[tuple[dict[int, bytes], dict[int, str]]] = Lookahead(
            f"{self.name}-prefetch")
        self._acks: AckSender[AckToken] = AckSender(config, self._send_ack, self.tokens,
                                                    merge_acks)

    @classmethod
    def from_config(cls, config: ImapConfig, runtime: Any) -> ImapConnector:
        """Build from config (the runtime's blob store is used by :meth:`reparse`, its store
        keeps a rotated OAuth2 refresh token)."""
        return cls(config, blobs=getattr(runtime, "blobs", None),
                   open_store=getattr(runtime, "side_store", None))

    @property
    def lock_name(self) -> str:
        """The store lock that keeps a second fetcher off this mailbox."""
        c = self.config
        return f"imap:{c.username}@{c.host}:{c.effective_port}"

    # ------------------------------------------------------------------ session and lock
    def _session(self, check: bool = False) -> ImapSession:
        if check and self.session is not None and self.session.client is not None:
            try:
                self.session.c.noop()  # a connection kept between runs may have timed out
            except Exception:
                self._drop_session()
        if self.session is None or self.session.client is None:
            self.session = ImapSession(self.config, tokens=self.tokens).connect()
            self.session.c.normalise_times = False  # INTERNALDATE as tz-aware datetimes
            self._ensured.clear()
        return self.session

    def _drop_session(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None

    def _take_lock(self, ctx: IngestContext) -> bool:
        """Take the mailbox lease (a crashed fetcher's on this host is taken over at once)."""
        store = ctx.services.get("store")
        if store is None:
            return True
        lease = Lease(store, self.lock_name, self.config.lock_ttl,
                      owner_id(ctx.services.get("worker_id")))
        if not lease.take():
            logger.info("mailbox is being read by another fetcher; skipping",
                        extra={"source": self.name, "holder": lease.holder()})
            return False
        self._lease = lease
        return True

    def _renew_lock(self, force: bool = False) -> None:
        if self._lease is None:
            return
        try:
            self._lease.renew(force)
        except LeaseLost as exc:
            self._lease = None
            raise RuntimeError(f"lost the mailbox lock to another fetcher ({exc})") from None

    def _release_lock(self) -> None:
        if self._lease is not None:
            self._lease.release()
            self._lease = None

    # ------------------------------------------------------------------ fetch
    def fetch(self, ctx: IngestContext) -> Iterator[SourceBatch]:
        """Yield batches of new mail from every configured folder (one process at a time)."""
        if not self._take_lock(ctx):
            return
        completed = False
        try:
            session = self._session(check=True)
            state = _folder_state(ctx.checkpoint)
            count = 0
            for folder in self.config.folders:
                for batch in self._fetch_folder(session, folder, state, ctx):
                    count += len(batch.records) + len(batch.rejects)
                    yield batch
                    self._renew_lock()
                    if ctx.max_records is not None and count >= ctx.max_records:
                        completed = True
                        return
            completed = True
        except Exception as exc:
            if is_connection_error(exc):
                self._drop_session()  # the next run starts with a fresh connection
            raise
        finally:
            try:
                if completed:
                    self.wait_acks()  # a failed MOVE fails the run, as it always did
                else:  # failed, or stopped early by the consumer
                    self._wait_acks_quietly()
            finally:
                self._release_lock()

    def _fetch_folder(self, session: ImapSession, folder: str, state: dict[str, Any],
                      ctx: IngestContext) -> Iterator[SourceBatch]:
        cfg = self.config
        info = session.select(folder)
        uv = int(info[b"UIDVALIDITY"])
        prev = state.get(folder)
        last = 0
        if prev is not None and int(prev.get("uidvalidity", -1)) == uv:
            last = int(prev.get("last_uid", 0))
        elif prev is not None:
            logger.warning("UIDVALIDITY changed: rescanning the folder (stored mail is "
                           "recognised by Message-ID and content hash)",
                           extra={"source": self.name, "folder": folder,
                                  "old": prev.get("uidvalidity"), "new": uv})
        if cfg.after_commit is AfterCommit.move and last:
            leftover = session.uids_upto(last)
            if leftover:
                # committed by an earlier run that died before its ack: acknowledge them now
                sizes = session.sizes(leftover)
                big = [u for u in leftover if sizes.get(u, (0, None))[0] > cfg.max_message_size]
                logger.info("acknowledging mail committed before a crash",
                            extra={"source": self.name, "folder": folder,
                                   "count": len(leftover)})
                yield SourceBatch(ack_token=AckToken(folder, uv, [u for u in leftover
                                                                  if u not in big], big))
        uids = session.uids_after(last)
        if not uids:
            return
        logger.info("new mail", extra={"source": self.name, "folder": folder,
                                       "count": len(uids), "uidvalidity": uv})
        prefetch = self._prefetch

        def ready() -> ImapSession:  # the fetching session, nothing in flight on it
            prefetch.settle()
            session.drain()
            return session

        # the first batches' sizes now (enough for the time the acknowledging connection takes
        # to log in and select), the rest on that connection meanwhile
        sizes = PassSizes(session, folder, uv, uids, max(HEAD_SIZES, 3 * cfg.batch_size),
                          self._acks.call)
        meta = sizes.meta
        own = min(cfg.stream_threshold, cfg.max_message_size)  # larger: this thread's work
        pending = self._groups(uids, sizes, ready)
        window: list[tuple[list[int], list[int], bool]] = []  # (uids, small ones, shared)

        def form(n: int) -> None:  # the next n batches (only while no job runs)
            while len(window) < n:
                group = next(pending, None)
                if group is None:
                    return
                window.append((group, [u for u in group if u in meta
                                       and meta[u][0] <= cfg.stream_threshold],
                               any(meta[u][0] > own for u in group if u in meta)))

        def job(k: int) -> tuple[Any, ...]:
            # the FETCH of the batch after is sent before this one's response is read (the
            # server prepares it meanwhile), unless this thread needs the connection in
            # between: for a batch's large mail, streamed here after its small mails are packed
            ahead = window[k + 1][1] if k + 1 < len(window) and not window[k][2] else []
            return (_fetch_and_pack, session, window[k][1], ahead, ctx.blobs)

        # while one batch is built, committed and acknowledged, the next one is fetched and its
        # small mails made durable in a pack (worker thread); the session is used by the worker
        # between start and take, by this thread (large mail) only outside that: the next job
        # starts before this batch is built unless the batch has large mail
        left = len(uids)
        try:
            form(2)
            prefetch.start(*job(0))
            while window:
                bodies, stored = prefetch.take()  # their blobs are durable
                faults.point("imap_blobs_synced")
                form(3)
                group, _, shared = window[0]
                more = len(window) > 1
                if more and not shared:
                    prefetch.start(*job(1))
                batch = self._batch(session, folder, uv, group, bodies, stored, meta, state,
                                    ctx)
                del bodies
                left -= len(group)
                # a long pass ends soon: acknowledge each batch, so that its last MOVE (which
                # the pass waits for) holds about one batch, not up to ack_every mails
                batch.ack_token.last_stretch = left < cfg.ack_every < len(uids)
                if more and shared:
                    prefetch.start(*job(1))
                window.pop(0)
                yield batch
        finally:
            prefetch.settle()
            try:
                session.drain()  # a FETCH sent ahead for a batch nobody wants now
            except Exception:
                self._drop_session()  # the connection is in an unknown state: a fresh one

    def _groups(self, uids: list[int], sizes: PassSizes,
                ready: Callable[[], ImapSession]) -> Iterator[list[int]]:
        """Split UIDs into batches of at most ``batch_size`` mails and ``batch_bytes``
        (yielded as soon as they are complete: the sizes of later UIDs may still be read)."""
        cfg = self.config
        meta = sizes.meta
        group: list[int] = []
        group_bytes = 0
        for k, uid in enumerate(uids):
            if k >= sizes.known:
                sizes.need(k, ready)
            size = min(meta.get(uid, (0, None))[0], cfg.stream_threshold)
            if group and group_bytes + size > cfg.batch_bytes:
                yield group
                group, group_bytes = [], 0
            group.append(uid)
            group_bytes += size
            if len(group) >= cfg.batch_size:  # (the next UID would start a new one anyway)
                yield group
                group, group_bytes = [], 0
        if group:
            yield group

    def _batch(self, session: ImapSession, folder: str, uv: int, uids: list[int],
               bodies: dict[int, bytes], stored: dict[int, str],
               meta: dict[int, tuple[int, Any]], state: dict[str, Any],
               ctx: IngestContext) -> SourceBatch:
        """One batch from its small mails, fetched and made durable by
        :func:`_fetch_and_pack` (``stored``: UID → sha256); large mail is streamed to blob
        files of its own here."""
        cfg = self.config
        records: list[RawRecord] = []
        rejects: list[Reject] = []
        token = AckToken(folder, uv)
        processed = token.processed
        record = self._record
        # (a crash point per mail for the recovery tests; looking it up costs more than the
        # rest of a small mail's work, so only when crash points are asked for at all)
        point = faults.point if os.environ.get("FEEDBACK_HUB_CRASH_AT") else _no_point
        now = ctx.now
        max_size, threshold = cfg.max_message_size, cfg.stream_threshold
        packed = min(threshold, max_size)
        for uid in uids:
            if uid not in meta:
                continue  # expunged by someone else meanwhile
            size, idate = meta[uid]
            if size <= packed:  # fetched and packed by _fetch_and_pack
                raw = bodies.get(uid)
                if raw is None:
                    continue  # expunged between SEARCH and FETCH
                sha = stored[uid]
                msgid, generated = message_id_of(raw, sha, header_end(raw))
                records.append(record(sha, len(raw), msgid, generated, idate,
                                      {"folder": folder, "uid": uid, "uidvalidity": uv}, now))
                processed.append(uid)
                point("imap_mid_batch")
                continue
            where = {"folder": folder, "uid": uid, "uidvalidity": uv}
            session.drain()  # (nothing is sent ahead, nor started, for a batch with large mail)
            if size > max_size:
                rejects.append(self._oversized(session, uid, size, where, ctx))
                token.quarantine.append(uid)
                continue
            blob = ctx.blobs.put_stream(_ChunkReader(session.stream_body(uid, size)),
                                        mime="message/rfc822")
            header = header_section(ctx.blobs.read(blob.sha256, HEADER_PEEK))
            msgid, generated = message_id_of(header, blob.sha256)
            records.append(record(blob.sha256, blob.size, msgid, generated, idate, where, now))
            processed.append(uid)
            point("imap_mid_batch")
        state[folder] = {"uidvalidity": uv, "last_uid": uids[-1]}
        return SourceBatch(records=records, rejects=rejects,
                           checkpoint={"folders": copy.deepcopy(state)}, ack_token=token)

    def _record(self, sha: str, size: int, msgid: str, generated: bool, idate: Any,
                where: dict[str, Any], now: datetime) -> RawRecord:
        received = idate if isinstance(idate, datetime) and idate.tzinfo else now
        where.update(message_id=msgid, message_id_generated=generated, size=size, sha256=sha,
                     mailbox=self.config.username)
        # every field is built here as the model wants it (source_ref at most ~680 chars,
        # an aware time): no validation needed
        return trusted_raw(self.name, self.channel, source_ref_for(msgid, sha), received,
                           where, sha)

    def _oversized(self, session: ImapSession, uid: int, size: int, where: dict[str, Any],
                   ctx: IngestContext) -> Reject:
        cfg = self.config
        header = session.fetch_header(uid)
        detail: dict[str, Any] = {**where, "size": size}
        reason = (f"mail is {size} bytes, over max_message_size {cfg.max_message_size} "
                  f"(folder {where['folder']} uid {uid}); moved to {cfg.quarantine_folder}")
        if size <= cfg.dead_letter_max_size:
            blob = ctx.blobs.put_stream(_ChunkReader(session.stream_body(uid, size)),
                                        mime="message/rfc822")
            msgid, _ = message_id_of(header, blob.sha256)
            detail.update(kept="raw", message_id=msgid)
            return Reject(reason, blob_sha256=blob.sha256, source_ref=source_ref_for(
                msgid, blob.sha256), detail=detail)
        hsha = hashlib.sha256(header).hexdigest()
        msgid, _ = message_id_of(header, hsha)
        detail.update(kept="headers", message_id=msgid)
        return Reject(reason + f"; only its headers were kept (over dead_letter_max_size "
                               f"{cfg.dead_letter_max_size})", raw=header,
                      source_ref=f"{msgid}|size:{size}", detail=detail)

    # ------------------------------------------------------------------ ack
    def ack(self, batch: SourceBatch) -> None:
        """Move (or flag) committed mail; quarantine oversized mail.

        With ``after_commit: move``, acknowledgements of consecutive batches of one folder are
        gathered and sent as one MOVE once ``ack_every`` mails are waiting, when the folder
        changes and when a fetch or listen pass ends. Waiting is safe: the mail is committed;
        if the process dies first, the next run finds it at or below the checkpoint and
        acknowledges it without storing it again. \\Seen flags are set at once.
        """
        tok = batch.ack_token
        if not isinstance(tok, AckToken) or not (tok.processed or tok.quarantine):
            return
        pending = self._pending_ack
        if pending is not None and (pending.folder, pending.uidvalidity) != (tok.folder,
                                                                             tok.uidvalidity):
            self.flush_acks()
            pending = None
        if pending is None:
            pending = self._pending_ack = AckToken(tok.folder, tok.uidvalidity)
        pending.processed.extend(tok.processed)
        pending.quarantine.extend(tok.quarantine)
        if (self.config.after_commit is not AfterCommit.move or tok.last_stretch
                or len(pending.processed) + len(pending.quarantine) >= self.config.ack_every):
            self.flush_acks()

    def flush_acks(self) -> None:
        """Hand the acknowledgements gathered by :meth:`ack` to the sender now (they are sent
        on the sender's own connection; :meth:`wait_acks` waits for them)."""
        tok, self._pending_ack = self._pending_ack, None
        if tok is not None:
            self._acks.submit(tok)

    def wait_acks(self) -> None:
        """Send what is gathered and wait until every acknowledgement is done.

        Raises:
            Exception: the first that failed (the mail stays committed, in its folder).
        """
        self.flush_acks()
        self._acks.wait()

    def _wait_acks_quietly(self) -> None:
        """At the end of a pass that failed: acknowledge what is committed if possible (if not,
        the next run does it)."""
        try:
            self.wait_acks()
        except Exception as exc:
            logger.warning("could not acknowledge committed mail; the next run will",
                           extra={"source": self.name, "error": str(exc)})

    def _send_ack(self, session: ImapSession, tok: AckToken) -> None:
        """Apply one acknowledgement (on the sender's session, in its thread)."""
        cfg = self.config
        # SELECT every time: this connection must see mail that arrived since its last look
        # (UIDs it has not seen are silently skipped) and the current UIDVALIDITY (a NOOP
        # would be 20x cheaper, but Dovecot's STATUS and NOOP on a folder recreated under a
        # connection that has it selected still give the old UIDVALIDITY, and a MOVE then
        # moves the new folder's mail: tests/email/test_imap_pipelining.py)
        session.select(tok.folder)
        if session.uidvalidity != tok.uidvalidity:
            logger.warning("UIDVALIDITY changed before the ack; the next run rescans",
                           extra={"source": self.name, "folder": tok.folder})
            return
        if tok.quarantine:
            self._ensure(session, cfg.quarantine_folder)
            session.move(tok.quarantine, cfg.quarantine_folder)
        if tok.processed:
            if cfg.after_commit is AfterCommit.move:
                self._ensure(session, cfg.processed_folder)
                session.move(tok.processed, cfg.processed_folder)
            else:
                session.flag_seen(tok.processed)
        logger.info("mail acknowledged", extra={"source": self.name, "folder": tok.folder,
                                                "processed": len(tok.processed),
                                                "quarantined": len(tok.quarantine),
                                                "action": cfg.after_commit.value})

    def _ensure(self, session: ImapSession, folder: str) -> None:
        if folder in self._ensured:
            return
        if self.config.create_folders:
            session.ensure_folder(folder)
        self._ensured.add(folder)

    # ------------------------------------------------------------------ listen
    def listen(self, ctx: IngestContext, commit: Callable[[SourceBatch], None],
               stop: threading.Event) -> None:
        """Run until ``stop``: IMAP IDLE on the first folder, polling where IDLE is missing.

        IDLE is restarted every ``idle_renew`` (well inside the 30-minute server timeout) and
        checked every ``idle_check`` seconds so ``stop`` is honoured quickly. Connection errors
        reconnect with exponential backoff and jitter.
        """
        cfg = self.config
        backoff = 1.0
        while not stop.is_set():
            try:
                if self._lease is None and not self._take_lock(ctx):
                    stop.wait(cfg.poll_interval)
                    continue
                session = self._session()
                state = _folder_state(ctx.checkpoint)
                for folder in cfg.folders:
                    for batch in self._fetch_folder(session, folder, state, ctx):
                        commit(batch)
                        self._renew_lock()
                        if stop.is_set():
                            self._wait_acks_quietly()
                            return
                self.wait_acks()
                backoff = 1.0
                self._wait_for_mail(session, stop)
            except Exception as exc:
                self._wait_acks_quietly()  # what fails is acknowledged by the next pass
                if not is_connection_error(exc):
                    self._drop_session()
                    self._release_lock()
                    raise
                self._drop_session()
                delay = min(cfg.reconnect_max, backoff) * (0.8 + 0.4 * random.random())
                logger.warning("IMAP connection lost; reconnecting",
                               extra={"source": self.name, "error": str(exc),
                                      "in_seconds": round(delay, 1)})
                stop.wait(delay)
                backoff = min(cfg.reconnect_max, backoff * 2)
        self._release_lock()
        self._drop_session()

    def _wait_for_mail(self, session: ImapSession, stop: threading.Event) -> None:
        cfg = self.config
        started = time.monotonic()
        if not session.has("IDLE"):
            deadline = started + cfg.poll_interval
            while not stop.is_set() and time.monotonic() < deadline:
                stop.wait(min(cfg.idle_check, max(0.0, deadline - time.monotonic())))
                self._renew_lock()
            return
        first = cfg.folders[0]
        if session.selected != first:
            session.select(first)
        session.c.idle()
        try:
            while not stop.is_set():
                responses = session.c.idle_check(timeout=cfg.idle_check)
                if any(isinstance(r, tuple) and len(r) > 1 and r[1] in (b"EXISTS", b"RECENT")
                       for r in responses):
                    return
                self._renew_lock()
                elapsed = time.monotonic() - started
                if elapsed >= cfg.idle_renew:
                    return
                if len(cfg.folders) > 1 and elapsed >= cfg.poll_interval:
                    return  # time to look at the other folders
        finally:
            session.c.idle_done()

    # ------------------------------------------------------------------ replay and close
    def reparse(self, raw: bytes, source_ref: str | None, now: datetime) -> list[RawRecord]:
        """Turn the raw bytes of a dead-lettered mail (e.g. an oversized one an operator
        accepts) into a record."""
        if not raw.strip():
            raise ReparseError("empty message")
        if self.blobs is None:
            raise ReparseError("no blob store to keep the message in")
        blob = self.blobs.put_bytes(raw, mime="message/rfc822")
        msgid, generated = message_id_of(header_section(raw), blob.sha256)
        return [self._record(blob.sha256, blob.size, msgid, generated, None,
                             {"replayed": True}, now)]

    def close(self) -> None:
        """Acknowledge what is committed, log out, release the lock, stop the prefetch."""
        self._prefetch.close()
        self.flush_acks()
        self._acks.close()
        self._release_lock()
        self._drop_session()


def _fetch_and_pack(session: ImapSession, uids: list[int], ahead: list[int],
                    blobs: BlobStore) -> tuple[dict[int, bytes], dict[int, str]]:
    """Fetch small mails whole and append them to ONE pack of the blob store, made durable by
    one fsync (plus one index commit) before this returns: nothing can reference them before.
    Returns UID → message and UID → sha256. ``ahead``: the next batch's UIDs, whose FETCH is
    sent before this one's response is read (see :meth:`ImapSession.fetch_bodies`)."""
    bodies = session.fetch_bodies(uids, ahead) if uids or ahead else {}
    pack = blobs.batch()
    add = pack.add
    stored = {uid: add(raw) for uid, raw in bodies.items()}
    pack.sync()
    return bodies, stored


def _no_point(name: str) -> None:
    """No crash points asked for."""


def _folder_state(checkpoint: dict[str, Any] | None) -> dict[str, Any]:
    folders = (checkpoint or {}).get("folders")
    return copy.deepcopy(folders) if isinstance(folders, dict) else {}
