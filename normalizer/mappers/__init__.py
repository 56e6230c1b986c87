"""Channel mappers: which mapper handles records of which connector type.

A mapper is chosen by the connector ``type`` of the record's source (so it can read that
connector's options, e.g. a device registry), falling back to the record's channel for sources
that are not connectors (records posted to ``feedback-hub serve``).
"""

from __future__ import annotations

import importlib
from typing import Any

from normalizer.mapping import Mapper

#: connector type → "module:Class"; the class is built with (connector_config, hub_config).
MAPPERS_BY_TYPE: dict[str, str] = {
    "jsonfile": "normalizer.mappers.forward:ForwardMapper",
    "imap": "normalizer.mappers.email:EmailMapper",
    "mqtt": "normalizer.mappers.iot:IotMapper",
}
#: channel → "module:Class" for sources without a connector entry.
MAPPERS_BY_CHANNEL: dict[str, str] = {
    "forward": "normalizer.mappers.forward:ForwardMapper",
}


def _load(path: str) -> Any:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def build_mapper(connector_type: str | None, channel: str, connector_config: Any,
                 hub_config: Any) -> Mapper:
    """Build the mapper for a source.

    Raises:
        LookupError: when no mapper handles this connector type or channel.
    """
    if connector_type and connector_type in MAPPERS_BY_TYPE:
        return _load(MAPPERS_BY_TYPE[connector_type])(connector_config, hub_config)
    if channel in MAPPERS_BY_CHANNEL:
        return _load(MAPPERS_BY_CHANNEL[channel])(connector_config, hub_config)
    raise LookupError(f"no mapper for connector type {connector_type!r} / channel {channel!r}")
