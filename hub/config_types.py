"""Typed building blocks for configuration models (durations, sizes, component bases).

Every connector and sink declares its own pydantic config model deriving from
:class:`ComponentConfig`; the loader in :mod:`hub.config` picks the model by ``type``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|mb|gb|kib|mib|gib)?\s*$", re.I)
_SIZE_UNITS = {
    None: 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3,
}


def parse_duration(value: Any) -> float:
    """Parse ``"30s"``, ``"5m"``, ``"2h"``, ``"1d"``, ``"250ms"`` or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f'expected a duration like "30s", got {value!r}')
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f'expected a duration like "30s", got {value!r}')
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _UNITS[m.group(2)]
    raise ValueError(f'expected a duration like "30s", got "{value}"')


def parse_size(value: Any) -> int:
    """Parse ``"25MB"``, ``"512KiB"`` or a number of bytes."""
    if isinstance(value, bool):
        raise ValueError(f'expected a size like "25MB", got {value!r}')
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            unit = m.group(2).lower() if m.group(2) else None
            return int(float(m.group(1)) * _SIZE_UNITS[unit])
    raise ValueError(f'expected a size like "25MB", got "{value}"')


#: Seconds, written in config as "30s", "5m", "2h" or a plain number.
Duration = Annotated[float, BeforeValidator(parse_duration)]
#: Bytes, written in config as "25MB", "512KiB" or a plain number.
ByteSize = Annotated[int, BeforeValidator(parse_size)]


class StrictModel(BaseModel):
    """Base for config models: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ComponentConfig(StrictModel):
    """Common fields of every connector and sink entry."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$",
                      description="Unique name (letters, digits, . _ -); the record's source.")
    type: str = Field(description="Which implementation (see the sections below).")
    enabled: bool = Field(default=True, description="false keeps the entry but skips it.")
