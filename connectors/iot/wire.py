"""``client: native``: a lean MQTT 5 / 3.1.1 subscriber for the receive path.

Only what an at-least-once subscriber needs, done in bulk:

* CONNECT with ``clean_start`` false, a Session Expiry Interval and a Receive Maximum (v5) /
  clean session false (3.1.1), user name and password, TLS through :mod:`ssl`;
* SUBSCRIBE (QoS 0/1, ``$share/`` filters) and a check of every SUBACK reason code;
* PUBLISH packets parsed straight out of large ``recv`` chunks (one ``bytes`` slice each for the
  topic and the payload) and appended to the session queue;
* PUBACKs queued by the committing thread and written by the network thread in one ``sendall``,
  in arrival order, only on the connection that received them (a reconnect discards the acks
  still queued for the old one: the broker redelivers those messages);
* PINGREQ when nothing was sent for half the keepalive (the broker's Server Keep Alive wins), a
  dead connection declared when no PINGRESP comes back within the keepalive;
* reconnects with exponential backoff and jitter (``reconnect_min``..``reconnect_max``), and
  errors that name the broker and its reason code.

Every socket operation (also for TLS) happens on the one network thread; the committing thread
only appends to the outgoing buffer and wakes it through a socket pair.

Spec: MQTT Version 5.0 (OASIS Standard) sections 2 and 3; 3.1.1 where it differs.
"""

from __future__ import annotations

import logging
import random
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Sequence
from typing import Any

from connectors.iot.config import MqttConfig, Protocol
from connectors.iot.session import Message, Session

logger = logging.getLogger(__name__)

RECV_CHUNK = 1 << 20

# packet types (high nibble of the first byte)
CONNACK, PUBLISH, PUBACK, PUBREL, SUBACK, PINGRESP, DISCONNECT, AUTH = 2, 3, 4, 6, 9, 13, 14, 15
PINGREQ_BYTES = b"\xc0\x00"
DISCONNECT_BYTES = b"\xe0\x00"  # v5: reason 0x00 (normal) and no properties may be omitted
_PUBACK = struct.Struct(">BBH")

REASONS = {
    0x80: "Unspecified error", 0x81: "Malformed Packet", 0x82: "Protocol Error",
    0x83: "Implementation specific error", 0x84: "Unsupported Protocol Version",
    0x85: "Client Identifier not valid", 0x86: "Bad User Name or Password",
    0x87: "Not authorized", 0x88: "Server unavailable", 0x89: "Server busy", 0x8A: "Banned",
    0x8B: "Server shutting down", 0x8C: "Bad authentication method",
    0x8D: "Keep Alive timeout", 0x8E: "Session taken over", 0x8F: "Topic Filter invalid",
    0x90: "Topic Name invalid", 0x93: "Receive Maximum exceeded", 0x94: "Topic Alias invalid",
    0x95: "Packet too large", 0x97: "Quota exceeded", 0x98: "Administrative action",
    0x99: "Payload format invalid", 0x9B: "QoS not supported", 0x9C: "Use another server",
    0x9D: "Server moved", 0x9E: "Shared Subscriptions not supported",
    0x9F: "Connection rate exceeded", 0xA0: "Maximum connect time",
    0xA2: "Wildcard Subscriptions not supported",
}
V311_CONNACK = {1: "unacceptable protocol version", 2: "identifier rejected",
                3: "server unavailable", 4: "bad user name or password", 5: "not authorized"}

# v5 property identifiers → value kind (section 2.2.2.2)
_BYTE, _U16, _U32, _VARINT, _STR, _BIN, _PAIR = range(7)
PROPERTY_KINDS = {
    0x01: _BYTE, 0x02: _U32, 0x03: _STR, 0x08: _STR, 0x09: _BIN, 0x0B: _VARINT, 0x11: _U32,
    0x12: _STR, 0x13: _U16, 0x15: _STR, 0x16: _BIN, 0x17: _BYTE, 0x18: _U32, 0x19: _BYTE,
    0x1A: _STR, 0x1C: _STR, 0x1F: _STR, 0x21: _U16, 0x22: _U16, 0x23: _U16, 0x24: _BYTE,
    0x25: _BYTE, 0x26: _PAIR, 0x27: _U32, 0x28: _BYTE, 0x29: _BYTE, 0x2A: _BYTE,
}
SERVER_KEEP_ALIVE, REASON_STRING, ASSIGNED_CLIENT_ID = 0x13, 0x1F, 0x12


class ProtocolError(ConnectionError):
    """The broker sent something this client cannot accept; the connection is dropped."""


class RefusedError(ConnectionError):
    """The broker refused the connection or a subscription (with its reason)."""


# ============================================================== encoding
def varint(n: int) -> bytes:
    """Variable Byte Integer (section 1.5.5)."""
    if not 0 <= n <= 268_435_455:
        raise ValueError(f"variable byte integer out of range: {n}")
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def utf8(text: str) -> bytes:
    """UTF-8 Encoded String: two-byte length, then the bytes."""
    raw = text.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise ValueError("string longer than 65535 bytes")
    return struct.pack(">H", len(raw)) + raw


def packet(first: int, body: bytes) -> bytes:
    """A control packet: fixed header byte, remaining length, body."""
    return bytes([first]) + varint(len(body)) + body


def connect_packet(client_id: str, *, keepalive: int, v5: bool, session_expiry: int,
                   receive_maximum: int, username: str | None = None,
                   password: str | None = None) -> bytes:
    """CONNECT resuming the session (clean start / clean session false)."""
    flags = (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    body = utf8("MQTT") + bytes([5 if v5 else 4, flags]) + struct.pack(">H", keepalive)
    if v5:
        props = (b"\x11" + struct.pack(">I", min(session_expiry, 0xFFFFFFFF))
                 + b"\x21" + struct.pack(">H", receive_maximum))
        body += varint(len(props)) + props
    body += utf8(client_id)
    if username is not None:
        body += utf8(username)
    if password is not None:
        raw = password.encode("utf-8")
        body += struct.pack(">H", len(raw)) + raw
    return packet(0x10, body)


def subscribe_packet(packet_id: int, filters: Sequence[tuple[str, int]], *, v5: bool) -> bytes:
    """SUBSCRIBE (options: maximum QoS only; No Local stays 0, as shared subscriptions need)."""
    body = struct.pack(">H", packet_id) + (b"\x00" if v5 else b"")
    for filt, qos in filters:
        body += utf8(filt) + bytes([qos])
    return packet(0x82, body)


def puback_packets(packet_ids: Sequence[int]) -> bytes:
    """PUBACKs with reason Success (Remaining Length 2: the reason code is omitted)."""
    pack = _PUBACK.pack
    return b"".join([pack(0x40, 2, pid) for pid in packet_ids])


# ============================================================== decoding
def read_varint(data: bytes, pos: int) -> tuple[int, int] | None:
    """(value, position after it), or None when the buffer ends inside it."""
    value, mult = 0, 1
    for i in range(pos, min(pos + 4, len(data))):
        b = data[i]
        value += (b & 0x7F) * mult
        if b < 0x80:
            return value, i + 1
        mult *= 128
    if len(data) - pos >= 4:
        raise ProtocolError("malformed remaining length")
    return None


def read_properties(data: bytes, pos: int) -> tuple[dict[int, Any], int]:
    """The v5 property block at ``pos`` (user properties are skipped)."""
    res = read_varint(data, pos)
    if res is None:
        raise ProtocolError("truncated properties")
    length, pos = res
    end = pos + length
    props: dict[int, Any] = {}
    while pos < end:
        pid = data[pos]
        kind = PROPERTY_KINDS.get(pid)
        pos += 1
        if kind is _BYTE:
            props[pid], pos = data[pos], pos + 1
        elif kind is _U16:
            props[pid], pos = int.from_bytes(data[pos:pos + 2], "big"), pos + 2
        elif kind is _U32:
            props[pid], pos = int.from_bytes(data[pos:pos + 4], "big"), pos + 4
        elif kind is _VARINT:
            got = read_varint(data, pos)
            if got is None:
                raise ProtocolError("truncated property")
            props[pid], pos = got
        elif kind is _STR or kind is _BIN:
            n = int.from_bytes(data[pos:pos + 2], "big")
            value = data[pos + 2:pos + 2 + n]
            props[pid] = value.decode("utf-8", "replace") if kind is _STR else value
            pos += 2 + n
        elif kind is _PAIR:
            for _ in range(2):
                pos += 2 + int.from_bytes(data[pos:pos + 2], "big")
        else:
            raise ProtocolError(f"unknown property 0x{pid:02x}")
    if pos != end:
        raise ProtocolError("malformed properties")
    return props, end


def reason_text(code: int, props: dict[int, Any] | None = None) -> str:
    """'Not authorized (0x87): <reason string>'."""
    text = f"{REASONS.get(code, 'reason')} (0x{code:02x})"
    if props and props.get(REASON_STRING):
        text += f": {props[REASON_STRING]}"
    return text


class PacketParser:
    """Splits a byte stream into packets; PUBLISH packets become queue messages."""

    def __init__(self, v5: bool) -> None:
        self.v5 = v5
        self.rest = b""

    def feed(self, chunk: bytes, generation: int, received: float,
             messages: list[Message]) -> list[tuple[int, int, bytes]]:
        """Parse every complete packet in ``rest + chunk``: PUBLISHes are appended to
        ``messages``; other packets are returned as (type, flags, body)."""
        data = self.rest + chunk if self.rest else chunk
        end = len(data)
        pos = 0
        v5 = self.v5
        others: list[tuple[int, int, bytes]] = []
        append = messages.append
        while end - pos >= 2:
            first = data[pos]
            b = data[pos + 1]
            if b < 0x80:
                length, body = b, pos + 2
            elif end - pos >= 3 and data[pos + 2] < 0x80:  # 128 B to 16 KiB: two bytes
                length, body = (b & 0x7F) | (data[pos + 2] << 7), pos + 3
            else:
                got = read_varint(data, pos + 1)
                if got is None:
                    break
                length, body = got
            nxt = body + length
            if nxt > end:
                break
            if first >> 4 == PUBLISH:
                qos = (first >> 1) & 3
                p = body + 2 + ((data[body] << 8) | data[body + 1])
                topic = data[body + 2:p]
                if qos:
                    if qos > 1:  # we subscribe with QoS 0 or 1 only
                        raise ProtocolError(f"PUBLISH with QoS {qos}")
                    pid = (data[p] << 8) | data[p + 1]
                    p += 2
                else:
                    pid = 0
                if v5:
                    plen = data[p]
                    if plen < 0x80:
                        p += 1 + plen
                    else:
                        p = read_properties(data, p)[1]
                if not topic:
                    # we never allow topic aliases (Topic Alias Maximum 0)
                    raise ProtocolError("PUBLISH without a topic name")
                append((generation, pid, qos, topic, data[p:nxt], received, bool(first & 1)))
            else:
                others.append((first >> 4, first & 0x0F, data[body:nxt]))
            pos = nxt
        self.rest = data[pos:] if pos < end else b""
        return others


# ============================================================== the session
class WireSession(Session):
    """One connection at a time, served by one network thread."""

    def __init__(self, config: MqttConfig, name: str) -> None:
        super().__init__(config, name)
        self.v5 = config.protocol is Protocol.v5
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._out_lock = threading.Lock()
        self._out: list[bytes] = []
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._next_pid = 0
        self._keepalive = config.keepalive

    # -------------------------------------------------------------- public
    def start(self) -> None:
        """Start the network thread (it connects, and reconnects with backoff)."""
        self._thread = threading.Thread(target=self._run, name=f"mqtt-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Flush the queued PUBACKs, send DISCONNECT, close and join the thread."""
        self._stopping.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(10.0)
        self._wake_r.close()
        self._wake_w.close()

    def ack(self, generation: int, packet_ids: Sequence[int]) -> int:
        """Queue PUBACKs for the network thread (dropped if the connection changed)."""
        if not packet_ids:
            return 0
        data = puback_packets(packet_ids)
        with self._out_lock:
            if generation != self.generation or not self.connected.is_set():
                return len(packet_ids)
            self._out.append(data)
        self._wake()
        return 0

    # -------------------------------------------------------------- network thread
    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\x00")
        except (BlockingIOError, OSError):
            pass  # already woken (buffer full) or closed

    def _run(self) -> None:
        c = self.config
        delay = c.reconnect_min
        while not self._stopping.is_set():
            sock: socket.socket | None = None
            try:
                sock = self._connect()
                delay = c.reconnect_min
                self._serve(sock)
            except RefusedError as exc:
                self.last_error = f"MQTT broker {c.host}:{c.effective_port} {exc}"
                logger.error("mqtt refused", extra={"source": self.name, "reason": str(exc)})
            except (OSError, ProtocolError) as exc:
                where = f"{c.host}:{c.effective_port}"
                lost = self.connected.is_set()
                self.last_error = (f"{'lost the connection to' if lost else 'cannot reach'} "
                                   f"MQTT broker {where}: {type(exc).__name__}: {exc}")
                (logger.info if lost else logger.warning)(
                    "mqtt connection lost" if lost else "mqtt connect failed",
                    extra={"source": self.name, "broker": where, "error": str(exc)})
            except Exception as exc:  # a bug must not end the thread: log it and reconnect
                self.last_error = f"MQTT client error: {type(exc).__name__}: {exc}"
                logger.error("mqtt client error", exc_info=True, extra={"source": self.name})
            finally:
                self._drop(sock)
            if self._stopping.wait(delay * (0.5 + random.random())):
                break
            delay = min(delay * 2, c.reconnect_max)

    def _drop(self, sock: socket.socket | None) -> None:
        with self._out_lock:
            self._out.clear()  # packet ids of a closed connection mean nothing on the next
            was = self.connected.is_set()
            self.connected.clear()
        self.disconnected.set()
        with self.cond:
            self.cond.notify_all()
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass
        if was:
            logger.info("mqtt disconnected", extra={"source": self.name})

    def _connect(self) -> socket.socket:
        """TCP (+TLS), CONNECT, CONNACK; returns the socket (SUBSCRIBE is sent by _serve)."""
        c = self.config
        sock: socket.socket = socket.create_connection((c.host, c.effective_port),
                                                       timeout=c.connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if c.tls:
                ctx = ssl.create_default_context(cafile=c.ca_file)
                if not c.tls_verify:
                    ctx.check_hostname = False
                    ctx.verify_mode = ssl.CERT_NONE
                sock = ctx.wrap_socket(sock, server_hostname=c.host)
            # a password only with a user name (3.1.1 forbids it alone; as with paho before)
            pw = (c.password.get_secret_value()
                  if c.password is not None and c.username is not None else None)
            sock.sendall(connect_packet(c.client_id, keepalive=c.keepalive, v5=self.v5,
                                        session_expiry=int(c.session_expiry),
                                        receive_maximum=c.receive_maximum,
                                        username=c.username, password=pw))
            first, body = self._read_packet(sock)
            if first >> 4 != CONNACK or len(body) < 2:
                raise ProtocolError(f"expected CONNACK, got packet type {first >> 4}")
            code = body[1]
            props: dict[int, Any] = read_properties(body, 2)[0] if self.v5 else {}
            if code:
                raise RefusedError("refused the connection: " + (
                    reason_text(code, props) if self.v5
                    else f"{V311_CONNACK.get(code, 'refused')} ({code})"))
        except BaseException:
            sock.close()
            raise
        self.session_present = bool(body[0] & 1)
        self._keepalive = int(props.get(SERVER_KEEP_ALIVE, c.keepalive))
        sock.settimeout(None)
        return sock

    def _read_packet(self, sock: socket.socket) -> tuple[int, bytes]:
        """One whole packet, blocking (only used for the CONNACK)."""
        head = self._recv_exact(sock, 2)
        length, mult, b = 0, 1, head[1]
        while True:
            length += (b & 0x7F) * mult
            if b < 0x80:
                break
            mult *= 128
            if mult > 128 ** 3:
                raise ProtocolError("malformed remaining length")
            b = self._recv_exact(sock, 1)[0]
        return head[0], self._recv_exact(sock, length)

    @staticmethod
    def _recv_exact(sock: socket.socket, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("the broker closed the connection")
            buf += chunk
        return buf

    def _serve(self, sock: socket.socket) -> None:
        """Subscribe, then read, enqueue and write acks until the connection ends or stop."""
        self._next_pid = self._next_pid % 0xFFFF + 1
        sub_pid = self._next_pid
        sock.sendall(subscribe_packet(sub_pid, self.filters(), v5=self.v5))
        with self._out_lock:  # from here on, acks queued belong to this connection
            self._out.clear()
            with self.cond:
                self.generation += 1
                generation = self.generation
            self.disconnected.clear()
            self.connected.set()
        logger.info("mqtt connected", extra={"source": self.name, "generation": generation,
                                             "session_present": self.session_present})
        parser = PacketParser(self.v5)
        keepalive = self._keepalive
        last_tx = sub_sent = time.monotonic()
        ping_sent: float | None = None
        subscribed = False
        tls = isinstance(sock, ssl.SSLSocket)
        wake = self._wake_r
        msgs: list[Message] = []
        while True:
            now = time.monotonic()
            if ping_sent is not None:
                if now - ping_sent > keepalive:
                    raise ConnectionError(f"no PINGRESP within the keepalive ({keepalive}s)")
                timeout = ping_sent + keepalive - now
            elif keepalive:
                timeout = max(0.0, last_tx + keepalive / 2 - now)
            else:
                timeout = 1.0
            if not subscribed:
                if now - sub_sent > self.config.connect_timeout:
                    raise ConnectionError("no SUBACK from the broker")
                timeout = min(timeout, 1.0)
            if tls and sock.pending():  # type: ignore[attr-defined]
                readable: list[Any] = [sock]
            else:
                readable = select.select([sock, wake], [], [], timeout)[0]
            if wake in readable or self._out:
                try:
                    wake.recv(4096)
                except BlockingIOError:
                    pass
                with self._out_lock:
                    out, self._out = self._out, []
                if out:
                    sock.sendall(b"".join(out))
                    last_tx = time.monotonic()
            if self._stopping.is_set():
                with self._out_lock:
                    out, self._out = self._out, []
                sock.sendall(b"".join(out) + DISCONNECT_BYTES)
                _linger_close(sock)
                return
            if sock in readable:
                try:
                    chunk = sock.recv(RECV_CHUNK)
                except ssl.SSLWantReadError:
                    continue
                if not chunk:
                    raise ConnectionError("the broker closed the connection")
                received = time.time()
                try:
                    others = parser.feed(chunk, generation, received, msgs)
                except (IndexError, ValueError) as exc:
                    raise ProtocolError(f"malformed packet: {exc}") from exc
                if msgs:
                    with self.cond:
                        self.queue.extend(msgs)
                        self.received += len(msgs)
                        self.cond.notify()
                    msgs = []
                for ptype, _flags, body in others:
                    if ptype == PINGRESP:
                        ping_sent = None
                    elif ptype == SUBACK:
                        self._check_suback(body, sub_pid)
                        subscribed = True
                    elif ptype == DISCONNECT:
                        code = body[0] if body else 0
                        props = read_properties(body, 1)[0] if self.v5 and len(body) > 1 else {}
                        raise ConnectionError("the broker disconnected: "
                                              + reason_text(code, props))
                    else:
                        raise ProtocolError(f"unexpected packet type {ptype}")
            now = time.monotonic()
            if keepalive and ping_sent is None and now - last_tx >= keepalive / 2:
                sock.sendall(PINGREQ_BYTES)
                last_tx = ping_sent = now

    def _check_suback(self, body: bytes, pid: int) -> None:
        if int.from_bytes(body[:2], "big") != pid:
            raise ProtocolError("SUBACK for an unknown packet id")
        pos = 2
        props: dict[int, Any] = {}
        if self.v5:
            props, pos = read_properties(body, pos)
        filters = self.filters()
        for (filt, _qos), code in zip(filters, body[pos:], strict=False):
            if code >= 0x80:
                self.fatal.set()  # a refused subscription does not get better by retrying
                self._stopping.set()
                raise RefusedError(f"refused the subscription to {filt!r}: "
                                   + (reason_text(code, props) if self.v5 else f"0x{code:02x}"))


def _linger_close(sock: socket.socket, timeout: float = 2.0) -> None:
    """Half-close and read until the broker closes: closing a socket with unread data makes the
    kernel send a reset and drop what is still unsent (the last PUBACKs and the DISCONNECT)."""
    try:
        sock.settimeout(timeout)
        sock.shutdown(socket.SHUT_WR)  # (on a TLS socket: the raw socket, no close_notify)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and sock.recv(65536):
            pass
    except (OSError, ValueError):
        pass
