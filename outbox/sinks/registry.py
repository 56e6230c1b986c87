"""Sink types known to the hub: ``type`` in config → implementation."""

from __future__ import annotations

import importlib
from typing import Any

from hub.config_types import ComponentConfig

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
    if not isinstance(type_name, str) or type_name not in SINK_TYPES:
        known = ", ".join(sorted(SINK_TYPES))
        raise KeyError(f"unknown sink type {type_name!r} (known: {known})")
    module, _, attr = SINK_TYPES[type_name].partition(":")
    return getattr(importlib.import_module(module), attr)


def sink_config_model(type_name: Any) -> type[ComponentConfig]:
    """Return the pydantic config model for a sink type."""
    return sink_class(type_name).Config
