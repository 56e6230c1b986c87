"""``mqtt`` connector: device reports over MQTT, acknowledged only after they are committed.

How a message travels:

1. The session's network thread (:mod:`connectors.iot.wire` by default, paho with ``client:
   paho``) only appends each PUBLISH to a queue (no decoding): the keepalive never starves.
   Nothing is acknowledged yet.
2. :meth:`MqttConnector.fetch` (``run --once``) or :meth:`MqttConnector.listen` takes up to
   ``batch_size`` messages, decodes each into a report (bad payloads become rejects with their
   raw bytes) and hands the batch to the pipeline, which commits it in one transaction.
3. :meth:`MqttConnector.ack` then sends the PUBACKs in arrival order.

A crash anywhere before step 3 leaves the messages unacknowledged in the broker's persistent
session (``clean_start`` false, a session expiry interval, a fixed client id): the broker sends
them again and they are recognised by ``source_ref`` (device id + event id, else a hash of topic
and payload) and stored once. Packet ids are only valid on the connection that received them,
so messages received before a reconnect are committed but never acknowledged on the new
connection (the broker redelivers them; they are duplicates by then).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import datetime, timezone
from typing import Any, ClassVar

import orjson
from paho.mqtt.client import topic_matches_sub

from connectors.base import (
    IngestContext,
    PackedRecords,
    RawRecord,
    Reject,
    ReparseError,
    SourceBatch,
    payload_json,
    trusted_raw,
)
from connectors.iot.config import MqttConfig
from connectors.iot.decoders import DecodeError, Decoder
from connectors.iot.prefetch import prefetch
from connectors.iot.session import Message, Session, open_session
from normalizer.case import Channel
from outbox.store.timefmt import ts

logger = logging.getLogger(__name__)

__all__ = ["Message", "MqttConnector", "topic_matches"]


#: While the pipeline commits a batch, the decode-ahead thread sleeps this long every
#: ``YIELD_EVERY`` messages. The committing thread releases the GIL around every SQLite call,
#: and each time it wants it back it waits until the thread running Python lets go: up to
#: the interpreter's switch interval (5 ms) when that thread does not block by itself, a
#: dozen times per commit. A sleep of a few tens of microseconds is long enough for the
#: waiting thread to wake and take the GIL (P1 backlog drain: about +25 %).
YIELD_EVERY = 64
YIELD_SECONDS = 50e-6


def topic_matches(filter_: str, topic: str) -> bool:
    """MQTT topic filter matching (``+`` one level, ``#`` the rest)."""
    return topic_matches_sub(filter_, topic)


class MqttConnector:
    """Subscribes to device topics; records are device reports, acked after commit."""

    type_name: ClassVar[str] = "mqtt"
    Config = MqttConfig

    def __init__(self, config: MqttConfig) -> None:
        self.config = config
        self.name = config.name
        self.channel: Channel = config.channel
        self.decoders = [(s.topic, Decoder(s)) for s in config.subscriptions]
        self._only_decoder = self.decoders[0][1] if len(self.decoders) == 1 else None
        self._max_payload = config.max_payload
        self._session: Session | None = None
        self._session_lock = threading.Lock()
        #: set while the pipeline commits a batch this connector handed over (see _batch)
        self._committing = False

    @classmethod
    def from_config(cls, config: MqttConfig, runtime: Any) -> MqttConnector:
        """Build from config."""
        return cls(config)

    # -------------------------------------------------------------- decoding
    def _decoder_for(self, topic: str) -> Decoder | None:
        if len(self.decoders) == 1:
            return self.decoders[0][1]
        for filt, dec in self.decoders:
            if topic_matches(filt, topic):
                return dec
        return None

    def to_record(self, topic: str, payload: bytes, received: datetime, *, qos: int = 1,
                  retain: bool = False) -> RawRecord:
        """Decode one message into a raw record (raises DecodeError)."""
        ref, body = self._encode(topic, payload, qos, retain)
        # fields are built and checked in _encode: skip re-validation
        return trusted_raw(self.name, self.channel, ref, received, body)

    def _encode(self, topic: str, payload: bytes, qos: int,
                retain: bool) -> tuple[str, dict[str, Any]]:
        """Decode one message into its ``source_ref`` and record payload (raises DecodeError)."""
        if len(payload) > self._max_payload:
            raise DecodeError(f"payload is {len(payload)} bytes, over max_payload "
                              f"{self._max_payload}")
        dec = self._only_decoder or self._decoder_for(topic)
        if dec is None:
            raise DecodeError(f"no subscription decodes topic {topic!r}")
        report = dec.decode(topic, payload)
        if report["event_id"]:
            ref = f"{report['device_id']}:{report['event_id']}"
            if len(ref) > 500:
                ref = "e:" + hashlib.sha256(ref.encode()).hexdigest()
        else:
            h = hashlib.sha256(topic.encode("utf-8", "replace") + b"\x00" + payload)
            ref = f"{report['device_id']}:h:{h.hexdigest()[:40]}"
        raw_text: str | None = None
        b64 = None
        if dec.text_payloads:
            try:
                raw_text = payload.decode("utf-8")
            except UnicodeDecodeError:
                pass
        if raw_text is None:
            b64 = base64.b64encode(payload).decode("ascii")
        body: dict[str, Any] = {"topic": topic, "qos": qos, "report": report}
        if raw_text is not None:
            body["payload_text"] = raw_text
        else:
            body["payload_b64"] = b64
        if retain:
            body["retain"] = True
        return ref, body

    def _batch(self, msgs: list[Message]) -> SourceBatch:
        """Decode messages into one batch: records packed as the store writes them (no
        RawRecord per message), undecodable ones as rejects with their raw bytes.

        The ack token is the packet ids of the QoS 1 messages, in arrival order, in runs of
        one connection generation: ``[(generation, [packet id, ...]), ...]``.
        """
        records = PackedRecords(self.name, self.channel)
        add = records.rows.append
        encode = self._encode
        dumps = orjson.dumps
        # values parsed from JSON: plain orjson writes what payload_json writes (and raises
        # TypeError for what only json can write); a user function may return anything
        plain = all(dec.json_values for _, dec in self.decoders)
        rejects: list[Reject] = []
        runs: list[tuple[int, list[int]]] = []
        run_gen, pids = None, []
        last_rx, at = None, ""
        left = YIELD_EVERY
        for gen, mid, qos, topic_b, payload, rx, retain in msgs:
            left -= 1
            if not left:
                left = YIELD_EVERY
                if self._committing:
                    time.sleep(YIELD_SECONDS)  # let the committing thread have the GIL
            if qos:
                if gen != run_gen:
                    run_gen, pids = gen, []
                    runs.append((gen, pids))
                pids.append(mid)
            topic = topic_b.decode("utf-8", "replace")
            if rx != last_rx:  # messages of one network read share their receive time
                last_rx, at = rx, ts(datetime.fromtimestamp(rx, timezone.utc))
            try:
                ref, body = encode(topic, payload, qos, retain)
            except DecodeError as exc:
                digest = hashlib.sha256(payload).hexdigest()
                rejects.append(Reject(f"{topic}: {exc}", raw=payload,
                                      source_ref=f"bad:{digest[:40]}",
                                      detail={"topic": topic, "qos": qos, "size": len(payload)}))
                logger.warning("undecodable mqtt payload", extra={
                    "source": self.name, "topic": topic, "reason": str(exc)})
                continue
            if plain:
                try:
                    text = dumps(body).decode()
                except TypeError:  # an integer beyond 64 bits
                    text = payload_json(body)
            else:
                text = payload_json(body)
            add((ref, at, text))
        return SourceBatch(records=records, rejects=rejects, ack_token=runs)

    # -------------------------------------------------------------- run --once
    def _open(self) -> Session:
        sess = open_session(self.config, self.name)
        sess.start()
        deadline = time.monotonic() + self.config.connect_timeout
        while not sess.connected.wait(0.05):
            if sess.fatal.is_set() or time.monotonic() >= deadline:
                break
        if not sess.connected.is_set():
            sess.stop()
            raise ConnectionError(sess.last_error or (
                f"cannot reach MQTT broker {self.config.host}:{self.config.effective_port} "
                f"within {self.config.connect_timeout:g}s"))
        return sess

    def fetch(self, ctx: IngestContext) -> Iterator[SourceBatch]:
        """Drain the persistent session: stop when idle for ``idle_timeout``, after
        ``max_duration`` or after ``ctx.max_records`` messages.

        The next batch is taken and decoded on a worker thread while the caller commits the
        current one (:func:`connectors.iot.prefetch.prefetch`); acks stay with the caller,
        after each commit and in order.
        """
        sess = self._open()
        with self._session_lock:
            self._session = sess
        count = 0
        try:
            with closing(prefetch(self._drain(sess, ctx), f"mqtt-decode-{self.name}")) as ahead:
                for batch in ahead:
                    count += len(batch.records) + len(batch.rejects)
                    self._committing = True  # until the pipeline asks for the next batch
                    try:
                        yield batch
                    finally:
                        self._committing = False
        finally:
            with self._session_lock:
                self._session = None
            sess.stop()
            logger.info("mqtt drained", extra={"source": self.name, "messages": count})

    def _drain(self, sess: Session, ctx: IngestContext) -> Iterator[SourceBatch]:
        """Take and decode batches until idle, ``max_duration`` or ``ctx.max_records``."""
        c = self.config
        started = time.monotonic()
        last_activity = started
        count = 0
        while True:
            now = time.monotonic()
            if now - started >= c.max_duration:
                return
            if not sess.connected.is_set():
                last_activity = now  # reconnecting: idleness does not count
            msgs = sess.take(c.batch_size, min(0.25, c.idle_timeout), c.batch_linger)
            if not msgs:
                if time.monotonic() - last_activity >= c.idle_timeout:
                    return
                continue
            last_activity = time.monotonic()
            yield self._batch(msgs)
            count += len(msgs)
            if ctx.max_records is not None and count >= ctx.max_records:
                return

    # -------------------------------------------------------------- listen
    def listen(self, ctx: IngestContext, commit: Callable[[SourceBatch], None],
               stop: threading.Event) -> None:
        """Run until ``stop`` is set: commit each batch (the commit acks it)."""
        c = self.config
        sess = open_session(c, self.name)
        sess.start()
        with self._session_lock:
            self._session = sess
        backoff = 1.0

        def batches() -> Iterator[SourceBatch]:
            while not stop.is_set():
                msgs = sess.take(c.batch_size, 0.5, c.batch_linger, stop)
                if msgs:
                    yield self._batch(msgs)

        try:
            with closing(prefetch(batches(), f"mqtt-decode-{self.name}")) as ahead:
                for batch in ahead:
                    while True:
                        self._committing = True
                        try:
                            commit(batch)
                            backoff = 1.0
                            break
                        except Exception as exc:
                            # store trouble: keep the messages unacked and try again
                            logger.error("mqtt batch commit failed, retrying", extra={
                                "source": self.name, "error": str(exc)})
                            self._committing = False
                            if stop.wait(backoff + random.random()):
                                return
                            backoff = min(backoff * 2, 60.0)
                        finally:
                            self._committing = False
        finally:
            with self._session_lock:
                self._session = None
            sess.stop()

    # -------------------------------------------------------------- ack
    def ack(self, batch: SourceBatch) -> None:
        """PUBACK the batch's messages in arrival order (only those of the live connection)."""
        with self._session_lock:
            sess = self._session
        if sess is None or not batch.ack_token:
            return
        stale = 0
        for gen, pids in batch.ack_token:
            stale += sess.ack(gen, pids)
        if stale:
            # the broker redelivers these; they are duplicates now
            logger.info("acks skipped after reconnect", extra={"source": self.name,
                                                              "messages": stale})

    def reparse(self, raw: bytes, source_ref: str | None, now: datetime) -> list[RawRecord]:
        """Decode dead-lettered bytes again (topic from the dead letter is not known here:
        the first subscription's decoder is used)."""
        topic = self.config.subscriptions[0].topic.replace("+", "x").replace("#", "x")
        try:
            return [self.to_record(topic, raw, now)]
        except DecodeError as exc:
            raise ReparseError(str(exc)) from exc

    def close(self) -> None:
        """Nothing held between runs."""
