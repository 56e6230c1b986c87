"""``client: paho``: the inbound session on paho-mqtt 2.x (``manual_ack=True``).

paho's network thread calls ``on_message``, which only appends the message to the queue; the
connector acknowledges after the commit through ``client.ack``. paho reconnects on its own with
backoff (``reconnect_min``..``reconnect_max``).
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from connectors.iot.config import MqttConfig, Protocol
from connectors.iot.session import Session

logger = logging.getLogger(__name__)


class PahoSession(Session):
    """One paho client feeding the inbound queue."""

    def __init__(self, config: MqttConfig, name: str) -> None:
        super().__init__(config, name)
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
        v5 = self.config.protocol is Protocol.v5
        client.subscribe([(filt, SubscribeOptions(qos=qos) if v5 else qos)
                          for filt, qos in self.filters()])
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

    def ack(self, generation: int, packet_ids: Sequence[int]) -> int:
        """PUBACK through paho (it sends them from its network thread, in order)."""
        if generation != self.generation or not self.connected.is_set():
            return len(packet_ids)
        for mid in packet_ids:
            self.client.ack(mid, 1)
        return 0
