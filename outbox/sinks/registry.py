"""Sink types known to the hub: ``type`` in config → implementation."""

from __future__ import annotations

from typing import Any

from hub.config_types import ComponentConfig
from hub.plugins import load_type

SINK_TYPES: dict[str, str] = {
    "jsonl": "outbox.sinks.jsonl:JsonlSink",
    "webhook": "outbox.sinks.webhook:WebhookSink",
    "open311": "outbox.sinks.open311:Open311Sink",
}


def sink_class(type_name: Any) -> Any:
    """Return the sink class for a config ``type``.

    Raises:
        KeyError: with a message listing the known types.
    """
    return load_type(SINK_TYPES, "sink", type_name)


def sink_config_model(type_name: Any) -> type[ComponentConfig]:
    """Return the pydantic config model for a sink type."""
    return sink_class(type_name).Config
