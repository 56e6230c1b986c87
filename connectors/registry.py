"""Connector types known to the hub: ``type`` in config → implementation.

Entries are import paths so a deployment only imports the clients it uses. A connector class
has a ``Config`` attribute (a :class:`~hub.config_types.ComponentConfig` subclass) and
``from_config(config, runtime)``.
"""

from __future__ import annotations

from typing import Any

from hub.config_types import ComponentConfig
from hub.plugins import load_type

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
    return load_type(CONNECTOR_TYPES, "connector", type_name)


def connector_config_model(type_name: Any) -> type[ComponentConfig]:
    """Return the pydantic config model for a connector type."""
    return connector_class(type_name).Config
