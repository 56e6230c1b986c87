"""What every MQTT client of the connector offers: an inbound queue and its connection state.

A session receives PUBLISH packets on its own network thread and only appends them to
:attr:`Session.queue` (no decoding, no I/O): the connector takes them in batches with
:meth:`Session.take`, commits them and then calls :meth:`Session.ack` with the packet ids of
the connection that received them. Two implementations: :class:`connectors.iot.wire.WireSession`
(the default, ``client: native``) and :class:`connectors.iot.paho_session.PahoSession`
(``client: paho``).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence

from connectors.iot.config import ClientKind, MqttConfig

#: (connection generation, packet id, qos, topic bytes, payload, received epoch s, retain)
Message = tuple[int, int, int, bytes, bytes, float, bool]


class Session:
    """The inbound queue and connection state shared by both MQTT clients."""

    def __init__(self, config: MqttConfig, name: str) -> None:
        self.config = config
        self.name = name
        self.queue: deque[Message] = deque()
        self.cond = threading.Condition()
        #: bumped on every successful CONNACK: packet ids belong to one connection
        self.generation = 0
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        #: set when retrying cannot help (a subscription the broker refuses)
        self.fatal = threading.Event()
        self.session_present: bool | None = None
        self.last_error: str | None = None
        self.received = 0

    def filters(self) -> list[tuple[str, int]]:
        """The topic filters to subscribe to, with their QoS (``$share/`` when grouped)."""
        group = self.config.shared_group
        return [(f"$share/{group}/{s.topic}" if group else s.topic, s.qos)
                for s in self.config.subscriptions]

    # -------------------------------------------------------------- implemented per client
    def start(self) -> None:
        """Connect in the background (reconnecting with backoff on its own)."""
        raise NotImplementedError

    def stop(self) -> None:
        """Send the PUBACKs still queued, disconnect cleanly and stop the network thread."""
        raise NotImplementedError

    def ack(self, generation: int, packet_ids: Sequence[int]) -> int:
        """PUBACK ``packet_ids`` (QoS 1, arrival order) if ``generation`` is still the live
        connection; return how many were skipped as stale (the broker redelivers those)."""
        raise NotImplementedError

    # -------------------------------------------------------------- shared
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


def open_session(config: MqttConfig, name: str) -> Session:
    """A session of the configured client (not started)."""
    if config.client is ClientKind.paho:
        from connectors.iot.paho_session import PahoSession

        return PahoSession(config, name)
    from connectors.iot.wire import WireSession

    return WireSession(config, name)
