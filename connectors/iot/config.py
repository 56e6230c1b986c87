"""Config of the ``mqtt`` connector and of the IoT mapper (registry, fault episodes, urgency)."""

from __future__ import annotations

from enum import Enum
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from hub.config_types import ComponentConfig, Duration, StrictModel
from normalizer.case import Channel, Urgency


class Protocol(str, Enum):
    """MQTT protocol version."""

    v5 = "v5"
    v311 = "v311"


class ClientKind(str, Enum):
    """Which MQTT client receives the messages."""

    native = "native"  # connectors/iot/wire.py: lean, parses packets in bulk
    paho = "paho"  # paho-mqtt 2.x


class DecoderType(str, Enum):
    """How a message payload becomes a device report."""

    json = "json"  # plain JSON with a field mapping
    chirpstack = "chirpstack"  # ChirpStack v4 uplink event (application/+/device/+/event/up)
    tts = "tts"  # The Things Stack v3 uplink message (v3/+/devices/+/up)
    function = "function"  # a user function "module:callable"(topic, payload bytes) -> dict


class FieldMap(StrictModel):
    """Dotted paths to the report fields (for ``json``: from the message root; for
    ``chirpstack``/``tts``: ``fault`` and ``values`` are inside the decoded object)."""

    device_id: str | None = Field(default=None, description="Device id (json default: "
                                  "device_id; LoRaWAN: the DevEUI).")
    event_id: str | None = Field(default=None, description="Unique event id per device "
                                 "(json default: event_id; absent: a payload hash is used).")
    time: str | None = Field(default=None, description="Report time (ISO 8601 or epoch s).")
    fault: str | None = Field(default=None, description="Fault / status code (a value or a list"
                              " of values), default: fault.")
    values: str | None = Field(default=None, description="Object of measured values (default:"
                               " values; LoRaWAN: the whole decoded object).")


class Subscription(StrictModel):
    """One topic filter and how its messages are decoded."""

    topic: str = Field(description="Topic filter, e.g. application/+/device/+/event/up.")
    decoder: DecoderType = Field(default=DecoderType.json,
                                 description="json, chirpstack, tts or function.")
    function: str | None = Field(default=None, description='decoder: function: "pkg.mod:name", '
                                 "called as name(topic, payload_bytes) and returning a dict with"
                                 " device_id, event_id, time, fault, values.")
    fields: FieldMap = Field(default_factory=FieldMap, description="Field paths (above).")
    codes: dict[str, str] = Field(
        default_factory=dict,
        description="Device code → lamp_failure, supply_loss, relay_failure, cycling, "
                    "high_temperature, day_burner, communication_lost, clear, clear:<fault>, "
                    "heartbeat or telemetry. Fault names and ok/clear/normal map by default.")
    qos: int = Field(default=1, ge=0, le=1, description="Subscription QoS (1: at least once).")

    @model_validator(mode="after")
    def _check(self) -> Subscription:
        if self.decoder is DecoderType.function and not self.function:
            raise ValueError('decoder: function needs function: "module:callable"')
        if self.function and ":" not in self.function:
            raise ValueError(f'function: expected "module:callable", got {self.function!r}')
        from normalizer.iot.faults import check_code_target

        for code, target in self.codes.items():
            problem = check_code_target(target)
            if problem:
                raise ValueError(f"codes.{code}: {problem}")
        return self


class FaultPolicy(StrictModel):
    """When a fault becomes a case and how its episode is reported."""

    reports: int = Field(default=2, ge=1, description="Open a case after this many fault "
                         "reports in a row...")
    seconds: Duration = Field(default=300.0, description="...or once the fault has persisted "
                              "this long without a clear (0: reports only).")
    urgency: Urgency | None = Field(default=None, description="Urgency of its cases.")
    update_every: int = Field(default=0, ge=0, description="Deliver an episode_update every N "
                              "further reports (0: record them, deliver only the restore).")


class StreetRule(StrictModel):
    """Several lamps out on one street: raise the urgency."""

    faults: list[str] = Field(default_factory=lambda: ["lamp_failure", "supply_loss"],
                              description="Faults that count.")
    min_devices: int = Field(default=3, ge=2, description="Open episodes on the street "
                             "(including this one) that trigger the rule.")
    within_m: float | None = Field(default=None, gt=0, description="Only count devices this "
                                   "close (needs lat/lon in the registry).")
    level: Urgency = Field(default=Urgency.urgent, description="Urgency to raise to.")


class FlapPolicy(StrictModel):
    """A fault that keeps appearing and clearing before it persists (flicker)."""

    transitions: int = Field(default=4, ge=2, description="Suppressed fault/clear cycles...")
    window: Duration = Field(default=3600.0, description="...within this long open a "
                             "'cycling' episode (0 disables).")


class MqttConfig(ComponentConfig):
    """Config of an ``mqtt`` connector."""

    type: Literal["mqtt"] = "mqtt"
    channel: Channel = Field(default=Channel.iot, description="Channel of these records.")
    host: str = Field(description="Broker host.")
    port: int | None = Field(default=None, ge=1, le=65535, description="Default 1883, 8883 "
                             "with TLS.")
    protocol: Protocol = Field(default=Protocol.v5, description="v5 or v311.")
    client: ClientKind = Field(default=ClientKind.native, description="native (the built-in "
                               "receive-only client, fastest) or paho (paho-mqtt).")
    client_id: str = Field(min_length=1, max_length=128, description="Fixed client id: the "
                           "broker keeps the persistent session under it.")
    session_expiry: Duration = Field(default=7 * 86400, description="How long the broker keeps"
                                     " the session (and queues reports) while the hub is away.")
    keepalive: int = Field(default=30, ge=5, le=65535, description="Keepalive (seconds).")
    username: str | None = Field(default=None, description="${MQTT_USERNAME}.")
    password: SecretStr | None = Field(default=None, description="${MQTT_PASSWORD}.")
    tls: bool = Field(default=False, description="Connect with TLS.")
    ca_file: str | None = Field(default=None, description="CA bundle (PEM) for TLS.")
    tls_verify: bool = Field(default=True, description="Verify the broker certificate.")
    shared_group: str | None = Field(default=None, pattern=r"^[^/+#]+$",
                                     description="Subscribe as $share/<group>/<filter> so "
                                     "several hub processes split one stream.")
    subscriptions: list[Subscription] = Field(min_length=1, description="Topics and decoders.")
    batch_size: int = Field(default=500, ge=1, le=65535, description="Messages committed (then "
                            "acknowledged) together.")
    batch_linger: Duration = Field(default=0.05, description="Commit a partial batch when no "
                                   "message arrived for this long.")
    receive_maximum: int = Field(default=2000, ge=1, le=65535, description="v5: unacknowledged "
                                 "messages the broker may send ahead (the broker's "
                                 "max_inflight_messages also caps it).")
    idle_timeout: Duration = Field(default=2.0, description="run --once: stop after this long "
                                   "without a message.")
    max_duration: Duration = Field(default=120.0, description="run --once: stop after this "
                                   "long in any case.")
    connect_timeout: Duration = Field(default=15.0, description="run --once: give up when the "
                                      "broker cannot be reached within this long.")
    reconnect_min: Duration = Field(default=0.5, description="First reconnect delay.")
    reconnect_max: Duration = Field(default=60.0, description="Longest reconnect delay.")
    max_payload: int = Field(default=256_000, ge=16, description="Larger payloads: dead letter.")
    # -- mapper (process stage) -------------------------------------------------------------
    registry: str | None = Field(default=None, description="Device registry (CSV or YAML): "
                                 "device_id → asset, address, lat/lon, district/street/community.")
    faults: dict[str, FaultPolicy] = Field(default_factory=dict, description="Per fault name "
                                           "(or 'default'): persistence, urgency, updates.")
    silence_timeout: Duration | None = Field(default=None, description="A device silent longer "
                                             "than this gets a communication_lost episode "
                                             "(the registry's interval column wins).")
    sweep_interval: Duration = Field(default=30.0, description="How often the time-based check"
                                     " (persistence by time, silence) scans all devices.")
    street_rule: StreetRule | None = Field(default_factory=StreetRule, description="Several "
                                           "lamps out on one street → urgent (null disables).")
    flapping: FlapPolicy = Field(default_factory=FlapPolicy, description="Flicker detection.")
    asset_labels: dict[str, str] = Field(default_factory=lambda: {"streetlight": "路灯"},
                                         description="Asset type → label in case titles.")

    @field_validator("faults")
    @classmethod
    def _fault_names(cls, v: dict[str, FaultPolicy]) -> dict[str, FaultPolicy]:
        from normalizer.iot.faults import Fault

        known = {f.value for f in Fault} | {"default"}
        bad = sorted(set(v) - known)
        if bad:
            names = sorted(known - {"default"})
            raise ValueError(f"unknown fault names {bad}; use default or {names}")
        return v

    @model_validator(mode="after")
    def _check(self) -> MqttConfig:
        if self.batch_size > self.receive_maximum and self.protocol is Protocol.v5:
            raise ValueError("batch_size must not exceed receive_maximum")
        return self

    @property
    def effective_port(self) -> int:
        """The port to connect to."""
        return self.port or (8883 if self.tls else 1883)

    def policy(self, fault: str) -> FaultPolicy:
        """The persistence policy of a fault."""
        if fault in self.faults:
            return self.faults[fault]
        if fault == "communication_lost" or fault == "cycling":
            return self.faults.get("default", FaultPolicy()).model_copy(
                update={"reports": 1, "seconds": 0.0})
        return self.faults.get("default", FaultPolicy())
