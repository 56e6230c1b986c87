"""``mqtt`` connector: device reports over MQTT, acknowledged only after they are committed.

How a message travels:

1. paho's network thread calls ``on_message``, which only appends the message to a queue
   (no decoding, no I/O: the keepalive never starves). ``manual_ack=True``, so nothing is
   acknowledged yet.
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
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any, ClassVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from connectors.base import IngestContext, RawRecord, Reject, ReparseError, SourceBatch
from connectors.iot.config import DecoderType, MqttConfig, Protocol
from connectors.iot.decoders import DecodeError, Decoder
from normalizer.case import Channel

logger = logging.getLogger(__name__)

#: (connection generation, packet id, qos, topic bytes, payload, received epoch s, retain)
Message = tuple[int, int, int, bytes, bytes, float, bool]


def topic_matches(filter_: str, topic: str) -> bool:
    """MQTT topic filter matching (``+`` one level, ``#`` the rest)."""
    return mqtt.topic_matches_sub(filter_, topic)


class _Session:
    """One paho client, its inbound queue and its connection state."""

    def __init__(self, config: MqttConfig, name: str) -> None:
        self.config = config
        self.name = name
        self.queue: deque[Message] = deque()
        self.cond = threading.Condition()
        self.generation = 0
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.session_present: bool | None = None
        self.last_error: str | None = None
        self.received = 0
        v5 = config.protocol is Protocol.v5
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=config.client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else False, manual_ack=True)
        # our own queue is bounded by the broker's in-flight window; paho's outgoing queue only
        # holds PUBACKs and SUBSCRIBEs
        self.client.max_inflight_messages_set(0)
        self.client.reconnect_delay_set(max(1, int(config.reconnect_min)),
                                        max(1, int(config.reconnect_max)))
        if config.username is not None:
            pw = config.password.get_secret_value() if config.password else None
            self.client.username_pw_set(config.username, pw)
        if config.tls:
            ctx = ssl.create_default_context(cafile=config.ca_file)
            if not config.tls_verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            self.client.tls_set_context(ctx)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    # -------------------------------------------------------------- paho callbacks
    def _on_connect(self, client: mqtt.Client, _userdata: Any, flags: Any, reason: Any,
                    _props: Any) -> None:
        if reason.is_failure:
            self.last_error = f"broker refused the connection: {reason}"
            logger.error("mqtt connect refused", extra={"source": self.name,
                                                        "reason": str(reason)})
            return
        self.session_present = bool(getattr(flags, "session_present", False))
        topics = []
        for sub in self.config.subscriptions:
            filt = (f"$share/{self.config.shared_group}/{sub.topic}"
                    if self.config.shared_group else sub.topic)
            if self.config.protocol is Protocol.v5:
                topics.append((filt, SubscribeOptions(qos=sub.qos)))
            else:
                topics.append((filt, sub.qos))
        client.subscribe(topics)
        with self.cond:
            self.generation += 1
            self.cond.notify_all()
        self.disconnected.clear()
        self.connected.set()
        logger.info("mqtt connected", extra={"source": self.name,
                                             "session_present": self.session_present,
                                             "generation": self.generation})

    def _on_disconnect(self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any,
                       _props: Any) -> None:
        self.connected.clear()
        self.disconnected.set()
        with self.cond:
            self.cond.notify_all()
        logger.info("mqtt disconnected", extra={"source": self.name, "reason": str(reason)})

    def _on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        # no work here but enqueue: the network thread must keep serving the keepalive.
        # The raw topic bytes: msg.topic raises on invalid UTF-8, which would kill the loop.
        item = (self.generation, msg.mid, msg.qos, msg._topic, msg.payload, time.time(),
                msg.retain)
        with self.cond:
            self.queue.append(item)
            self.received += 1
            self.cond.notify()

    # -------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Connect in the background (paho reconnects on its own with backoff)."""
        c = self.config
        props = None
        if c.protocol is Protocol.v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = int(c.session_expiry)
            props.ReceiveMaximum = c.receive_maximum
        self.client.connect_async(c.host, c.effective_port, keepalive=c.keepalive,
                                  clean_start=False if c.protocol is Protocol.v5
                                  else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
                                  properties=props)
        self.client.loop_start()

    def stop(self) -> None:
        """Disconnect cleanly (queued PUBACKs go out first) and stop the network thread."""
        try:
            if self.connected.is_set():
                props = None
                if self.config.protocol is Protocol.v5:
                    props = Properties(PacketTypes.DISCONNECT)
                    props.SessionExpiryInterval = int(self.config.session_expiry)
                self.client.disconnect(properties=props)
                self.disconnected.wait(5.0)
        finally:
            self.client.loop_stop()

    def take(self, max_n: int, first_wait: float, linger: float,
             stop: threading.Event | None = None) -> list[Message]:
        """Take up to ``max_n`` messages: wait up to ``first_wait`` for the first, then keep
        collecting while messages arrive at least every ``linger`` seconds."""
        out: list[Message] = []
        deadline = time.monotonic() + first_wait
        with self.cond:
            while True:
                q = self.queue
                while q and len(out) < max_n:
                    out.append(q.popleft())
                if len(out) >= max_n or (stop is not None and stop.is_set()):
                    return out
                now = time.monotonic()
                if out:
                    if not self.cond.wait(linger) and not q:
                        return out
                else:
                    if now >= deadline:
                        return out
                    self.cond.wait(min(deadline - now, 0.5))


class MqttConnector:
    """Subscribes to device topics; records are device reports, acked after commit."""

    type_name: ClassVar[str] = "mqtt"
    Config = MqttConfig

    def __init__(self, config: MqttConfig) -> None:
        self.config = config
        self.name = config.name
        self.channel: Channel = config.channel
        self.decoders = [(s.topic, Decoder(s)) for s in config.subscriptions]
        self._session: _Session | None = None
        self._session_lock = threading.Lock()

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
        if len(payload) > self.config.max_payload:
            raise DecodeError(f"payload is {len(payload)} bytes, over max_payload "
                              f"{self.config.max_payload}")
        dec = self._decoder_for(topic)
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
        if dec.kind is not DecoderType.function:
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
        # fields are built and checked above: skip re-validation on the hot path
        return RawRecord.model_construct(source=self.name, channel=self.channel, source_ref=ref,
                                         received_at=received, payload=body, attachments=[],
                                         raw_blob=None)

    def _batch(self, msgs: list[Message]) -> SourceBatch:
        records: list[RawRecord] = []
        rejects: list[Reject] = []
        tokens: list[tuple[int, int, int]] = []
        for gen, mid, qos, topic_b, payload, rx, retain in msgs:
            tokens.append((gen, mid, qos))
            topic = topic_b.decode("utf-8", "replace")
            received = datetime.fromtimestamp(rx, timezone.utc)
            try:
                records.append(self.to_record(topic, payload, received, qos=qos, retain=retain))
            except DecodeError as exc:
                digest = hashlib.sha256(payload).hexdigest()
                rejects.append(Reject(f"{topic}: {exc}", raw=payload,
                                      source_ref=f"bad:{digest[:40]}",
                                      detail={"topic": topic, "qos": qos, "size": len(payload)}))
                logger.warning("undecodable mqtt payload", extra={
                    "source": self.name, "topic": topic, "reason": str(exc)})
        return SourceBatch(records=records, rejects=rejects, ack_token=tokens)

    # -------------------------------------------------------------- run --once
    def _open(self) -> _Session:
        sess = _Session(self.config, self.name)
        sess.start()
        if not sess.connected.wait(self.config.connect_timeout):
            sess.stop()
            raise ConnectionError(sess.last_error or (
                f"cannot reach MQTT broker {self.config.host}:{self.config.effective_port} "
                f"within {self.config.connect_timeout:g}s"))
        return sess

    def fetch(self, ctx: IngestContext) -> Iterator[SourceBatch]:
        """Drain the persistent session: stop when idle for ``idle_timeout``, after
        ``max_duration`` or after ``ctx.max_records`` messages."""
        c = self.config
        sess = self._open()
        with self._session_lock:
            self._session = sess
        started = time.monotonic()
        last_activity = started
        count = 0
        try:
            while True:
                now = time.monotonic()
                if now - started >= c.max_duration:
                    break
                if not sess.connected.is_set():
                    last_activity = now  # reconnecting: idleness does not count
                msgs = sess.take(c.batch_size, min(0.25, c.idle_timeout), c.batch_linger)
                if not msgs:
                    if time.monotonic() - last_activity >= c.idle_timeout:
                        break
                    continue
                last_activity = time.monotonic()
                yield self._batch(msgs)
                count += len(msgs)
                if ctx.max_records is not None and count >= ctx.max_records:
                    break
        finally:
            with self._session_lock:
                self._session = None
            sess.stop()
            logger.info("mqtt drained", extra={"source": self.name, "messages": count})

    # -------------------------------------------------------------- listen
    def listen(self, ctx: IngestContext, commit: Callable[[SourceBatch], None],
               stop: threading.Event) -> None:
        """Run until ``stop`` is set: commit each batch (the commit acks it)."""
        c = self.config
        sess = _Session(c, self.name)
        sess.start()
        with self._session_lock:
            self._session = sess
        backoff = 1.0
        try:
            while not stop.is_set():
                msgs = sess.take(c.batch_size, 0.5, c.batch_linger, stop)
                if not msgs:
                    continue
                while True:
                    try:
                        commit(self._batch(msgs))
                        backoff = 1.0
                        break
                    except Exception as exc:
                        # store trouble: keep the messages unacked and try again
                        logger.error("mqtt batch commit failed, retrying", extra={
                            "source": self.name, "error": str(exc)})
                        if stop.wait(backoff + random.random()):
                            return
                        backoff = min(backoff * 2, 60.0)
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
        gen = sess.generation
        stale = 0
        for g, mid, qos in batch.ack_token:
            if qos == 0:
                continue
            if g != gen or not sess.connected.is_set():
                stale += 1  # the broker redelivers these; they are duplicates now
                continue
            sess.client.ack(mid, qos)
        if stale:
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
