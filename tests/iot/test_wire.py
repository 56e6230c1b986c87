"""The native MQTT client (connectors/iot/wire.py): codec units, then against a real Mosquitto."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from connectors.iot.config import MqttConfig
from connectors.iot.demo_replay import Mosquitto
from connectors.iot.session import Message
from connectors.iot.wire import (
    PacketParser,
    ProtocolError,
    RefusedError,
    WireSession,
    connect_packet,
    puback_packets,
    read_varint,
    subscribe_packet,
    varint,
)
from tests.conftest import wait_for
from tests.iot.conftest import report, send

# ------------------------------------------------------------------ codec


@pytest.mark.parametrize("n", [0, 1, 127, 128, 16_383, 16_384, 2_097_151, 268_435_455])
def test_varint_round_trip(n: int) -> None:
    data = varint(n)
    assert len(data) == 1 + (n >= 128) + (n >= 16_384) + (n >= 2_097_152)
    assert read_varint(data + b"rest", 0) == (n, len(data))
    if len(data) > 1:
        assert read_varint(data[:-1], 0) is None  # not complete yet


def test_connect_and_subscribe_bytes() -> None:
    pkt = connect_packet("hub", keepalive=30, v5=True, session_expiry=3600,
                         receive_maximum=500, username="u", password="p")
    # fixed header, "MQTT", level 5, flags user+password (clean start 0), keepalive 30,
    # properties: session expiry 3600, receive maximum 500; then client id, user, password
    assert pkt == (b"\x10\x1e\x00\x04MQTT\x05\xc0\x00\x1e\x08\x11\x00\x00\x0e\x10\x21\x01\xf4"
                   b"\x00\x03hub\x00\x01u\x00\x01p")
    assert connect_packet("c", keepalive=5, v5=False, session_expiry=0,
                          receive_maximum=1) == b"\x10\x0d\x00\x04MQTT\x04\x00\x00\x05\x00\x01c"
    assert subscribe_packet(7, [("$share/g/a/+", 1)], v5=True) == (
        b"\x82\x12\x00\x07\x00\x00\x0c$share/g/a/+\x01")
    assert puback_packets([1, 258]) == b"\x40\x02\x00\x01\x40\x02\x01\x02"


def _publish(topic: bytes, payload: bytes, pid: int, *, qos: int = 1, v5: bool = True,
             props: bytes = b"") -> bytes:
    body = len(topic).to_bytes(2, "big") + topic
    if qos:
        body += pid.to_bytes(2, "big")
    if v5:
        body += varint(len(props)) + props
    return bytes([0x30 | (qos << 1)]) + varint(len(body + payload)) + body + payload


@pytest.mark.parametrize("v5", [True, False])
def test_parser_splits_packets_across_any_chunk_boundary(v5: bool) -> None:
    big = b"x" * 20_000  # a remaining length of three bytes
    user_prop = b"\x26\x00\x01k\x00\x01v" * 20  # a property block longer than 127 bytes
    stream = (_publish(b"a/b", b"one", 1, v5=v5) + b"\xd0\x00"
              + _publish(b"a/c", big, 2, v5=v5, props=user_prop if v5 else b"")
              + _publish(b"a/d", b"qos0", 0, qos=0, v5=v5))
    for step in (1, 2, 7, 1000, len(stream)):
        parser = PacketParser(v5)
        msgs: list[Message] = []
        others = []
        for i in range(0, len(stream), step):
            others += parser.feed(stream[i:i + step], 3, 1.5, msgs)
        assert [(m[0], m[1], m[2], m[3], m[4]) for m in msgs] == [
            (3, 1, 1, b"a/b", b"one"), (3, 2, 1, b"a/c", big), (3, 0, 0, b"a/d", b"qos0")]
        assert [o[0] for o in others] == [13]  # the PINGRESP
        assert parser.rest == b""


def test_parser_rejects_what_it_cannot_accept() -> None:
    with pytest.raises(ProtocolError, match="QoS 2"):
        PacketParser(True).feed(_publish(b"t", b"p", 1, qos=2), 1, 0.0, [])
    with pytest.raises(ProtocolError, match="without a topic"):
        PacketParser(True).feed(_publish(b"", b"p", 1), 1, 0.0, [])


# ------------------------------------------------------------------ against Mosquitto


def _config(broker: Mosquitto, **kw: object) -> MqttConfig:
    entry: dict[str, object] = {
        "name": "lights", "host": "127.0.0.1", "port": broker.port, "client_id": "wire-test",
        "keepalive": 5, "reconnect_min": 0.1, "reconnect_max": 0.5,
        "subscriptions": [{"topic": "city/lights/+/report"}]}
    entry.update(kw)
    return MqttConfig.model_validate(entry)


def _drain(sess: WireSession, n: int, timeout: float = 30) -> list[Message]:
    got: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got += sess.take(n - len(got), 0.5, 0.05)
    return got


def _session(cfg: MqttConfig) -> WireSession:
    sess = WireSession(cfg, cfg.name)
    sess.start()
    assert sess.connected.wait(10), sess.last_error
    return sess


@pytest.mark.integration
@pytest.mark.parametrize("protocol", ["v5", "v311"])
def test_backlog_is_kept_until_acked(broker: Mosquitto, protocol: str) -> None:
    cfg = _config(broker, protocol=protocol)
    _session(cfg).stop()  # the persistent session now exists
    msgs = [report("SL-001", i) for i in range(300)]
    send(broker, msgs)
    sess = _session(cfg)
    assert sess.session_present
    got = _drain(sess, 300)
    assert [m[4] for m in got] == [p for _, p, _ in msgs]  # all, in order
    first = got[:200]
    assert sess.ack(first[0][0], [m[1] for m in first]) == 0  # the last 100 stay unacked
    sess.stop()
    # the broker resends exactly the unacknowledged ones on the next connection
    sess = _session(cfg)
    again = _drain(sess, 100)
    assert [m[4] for m in again] == [p for _, p, _ in msgs[200:]]
    assert sess.ack(again[0][0] - 1, [m[1] for m in again]) == 100  # an old connection's ids
    assert sess.ack(again[0][0], [m[1] for m in again]) == 0
    sess.stop()
    sess = _session(cfg)
    assert sess.take(10, 1.0, 0.05) == []  # nothing left
    sess.stop()


@pytest.mark.integration
def test_shared_subscription_splits_the_stream(broker: Mosquitto) -> None:
    sessions = [_session(_config(broker, client_id=f"wire-{i}", shared_group="hub"))
                for i in range(2)]
    try:
        send(broker, [report("SL-002", i) for i in range(200)])
        seen: list[list[Message]] = [[], []]
        deadline = time.monotonic() + 20
        while sum(len(s) for s in seen) < 200 and time.monotonic() < deadline:
            for got, sess in zip(seen, sessions, strict=True):
                got += sess.take(500, 0.1, 0.01)
        payloads = sorted(m[4] for s in seen for m in s)
        assert len(payloads) == 200 == len(set(payloads))  # each message to one member only
        assert all(seen)  # both members got a share
    finally:
        for sess in sessions:
            sess.stop()


@pytest.mark.integration
def test_reconnects_after_a_broker_restart(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "b", persistence=True).start()
    try:
        cfg = _config(broker)
        sess = _session(cfg)
        gen = sess.generation
        broker.restart()
        assert wait_for(lambda: sess.connected.is_set() and sess.generation > gen, timeout=20)
        send(broker, [report("SL-003", 1)])
        got = _drain(sess, 1)
        assert len(got) == 1 and got[0][0] == sess.generation
        sess.stop()
    finally:
        broker.stop()


@pytest.mark.integration
def test_keepalive_pings_keep_an_idle_connection(broker: Mosquitto) -> None:
    sess = _session(_config(broker, keepalive=5))
    try:
        gen = sess.generation
        time.sleep(7)  # longer than the keepalive: without PINGREQs the broker drops us
        assert sess.connected.is_set() and sess.generation == gen
    finally:
        sess.stop()


def test_refused_subscription_is_a_clear_fatal_error() -> None:
    cfg = MqttConfig(name="x", host="h", client_id="c", shared_group="g",
                     subscriptions=[{"topic": "a/+"}, {"topic": "b/#"}])
    sess = WireSession(cfg, cfg.name)
    try:
        sess._check_suback(b"\x00\x05\x00\x01\x01", 5)  # both granted QoS 1
        assert not sess.fatal.is_set()
        # v5 SUBACK: packet id 5, properties (reason string "no"), reason codes 0x01, 0x9E
        with pytest.raises(RefusedError, match=r"refused the subscription to '\$share/g/b/#': "
                           r"Shared Subscriptions not supported \(0x9e\): no"):
            sess._check_suback(b"\x00\x05\x05\x1f\x00\x02no\x01\x9e", 5)
        assert sess.fatal.is_set()
        with pytest.raises(ProtocolError):
            sess._check_suback(b"\x00\x06\x00\x01\x01", 5)
    finally:
        sess.stop()
