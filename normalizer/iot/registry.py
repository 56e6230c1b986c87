"""The device registry: which pole / asset a device sits on, and where.

CSV (a header row) or YAML (a list of mappings, or ``{devices: [...]}``) with the columns
``device_id`` (required), ``asset_id``, ``asset_type``, ``address``, ``lat``, ``lon``,
``district``, ``street``, ``community``, ``grid`` and ``interval`` (expected reporting interval:
silence longer than this opens a communication-lost episode). Device ids match without regard to
case (ChirpStack writes DevEUIs in lower case, The Things Stack in upper case).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hub.config_types import parse_duration


@dataclass(frozen=True)
class Device:
    """One registered device."""

    device_id: str
    asset_id: str | None = None
    asset_type: str | None = None
    address: str | None = None
    lat: float | None = None
    lon: float | None = None
    district: str | None = None
    street: str | None = None
    community: str | None = None
    grid: str | None = None
    interval: float | None = None


def device_key(device_id: str) -> str:
    """The case-insensitive key of a device id."""
    return device_id.strip().lower()


class DeviceRegistry:
    """Device id → :class:`Device`."""

    def __init__(self, devices: dict[str, Device] | None = None, source: str | None = None):
        self.devices = devices or {}
        self.source = source

    def get(self, device_id: str) -> Device | None:
        """Look a device up (case-insensitive)."""
        return self.devices.get(device_key(device_id))

    def __len__(self) -> int:
        return len(self.devices)

    @classmethod
    def load(cls, path: str | Path) -> DeviceRegistry:
        """Load a CSV or YAML registry.

        Raises:
            ValueError: naming the file and row of a bad entry.
        """
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"device registry not found: {p}")
        text = p.read_text(encoding="utf-8-sig")
        if p.suffix.lower() in (".yaml", ".yml"):
            doc = yaml.safe_load(text) or []
            rows = doc.get("devices", []) if isinstance(doc, dict) else doc
            if not isinstance(rows, list):
                raise ValueError(f"{p}: expected a list of devices")
        else:
            rows = list(csv.DictReader(text.splitlines()))
        devices: dict[str, Device] = {}
        for i, row in enumerate(rows, 1):
            where = f"{p.name} entry {i}"
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected a mapping")
            dev = _device(row, where)
            devices[device_key(dev.device_id)] = dev
        return cls(devices, str(p))


def _text(row: dict[str, Any], key: str) -> str | None:
    v = row.get(key)
    if v is None:
        return None
    s = str(v).strip()
    return s or None


def _device(row: dict[str, Any], where: str) -> Device:
    device_id = _text(row, "device_id")
    if not device_id:
        raise ValueError(f"{where}: device_id is missing")
    coords: list[float | None] = []
    for key, lo, hi in (("lat", -90, 90), ("lon", -180, 180)):
        v = _text(row, key)
        if v is None:
            coords.append(None)
            continue
        try:
            f = float(v)
        except ValueError as exc:
            raise ValueError(f"{where}: {key} must be a number, got {v!r}") from exc
        if not lo <= f <= hi:
            raise ValueError(f"{where}: {key} out of range: {f}")
        coords.append(f)
    interval = None
    if _text(row, "interval"):
        try:
            interval = parse_duration(_text(row, "interval"))
        except ValueError as exc:
            raise ValueError(f"{where}: interval: {exc}") from exc
    return Device(device_id=device_id, asset_id=_text(row, "asset_id"),
                  asset_type=_text(row, "asset_type"), address=_text(row, "address"),
                  lat=coords[0], lon=coords[1], district=_text(row, "district"),
                  street=_text(row, "street"), community=_text(row, "community"),
                  grid=_text(row, "grid"), interval=interval)
