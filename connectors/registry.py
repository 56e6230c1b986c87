"""Connector types known to the hub: ``type`` in config → implementation.

Entries are import paths so a deployment only imports the clients it uses. A connector class
has a ``Config`` attribute (a :class:`~hub.config_types.ComponentConfig` subclass) and
``from_config(config, runtime)``.
"""

from __future__ import annotations

import importlib
from typing import Any

from hub.config_types import ComponentConfig

CONNECTOR_TYPES: dict[str, str] = {
    "jsonfile": "connectors.jsonfile:JsonFileConnector",
    "imap": "connectors.email.connector:ImapConnector",
    "mqtt": "connectors.iot.connector:MqttConnector",
}


def connector_class(type_name: Any) -> Any:
    """Return the connector class for a config ``type``.

    Raises:
        KeyError: with a message listing the known types.
    """
    if not isinstance(type_name, str) or type_name not in CONNECTOR_TYPES:
        known = ", ".join(sorted(CONNECTOR_TYPES))
        raise KeyError(f"unknown connector type {type_name!r} (known: {known})")
    module, _, attr = CONNECTOR_TYPES[type_name].partition(":")
    return getattr(importlib.import_module(module), attr)


def connector_config_model(type_name: Any) -> type[ComponentConfig]:
    """Return the pydantic config model for a connector type."""
    return connector_class(type_name).Config
