"""Mapper for MQTT device reports: fault episodes → ``device_fault`` cases and updates.

The connector already decoded each message into a report (``payload["report"]``). Here the
report is applied to the device's fault episodes (:mod:`normalizer.iot.episodes`):

* heartbeats and telemetry only refresh the device's last-seen time: ``ignored``;
* a fault that has not persisted yet: ``ignored`` (pending; a flap never reaches the sink);
* a fault that persists: ONE case, its id derived from the episode's first report;
* further reports of an open episode: an ``episode_update`` recorded on the case (delivered
  only every ``update_every`` reports, so a chatty lamp does not flood the sink);
* a clear: a ``restored`` update, delivered; the next fault opens a new episode.

``sweep`` (once per process run) confirms faults that persisted by time and opens
communication-lost episodes for silent devices.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from connectors.base import RawRecord
from connectors.iot.config import MqttConfig
from normalizer.case import (
    Case,
    CaseKind,
    CaseUpdate,
    Channel,
    Location,
    LocationSource,
    Origin,
    Urgency,
    case_id_for,
)
from normalizer.iot.episodes import EpisodeEngine, Outcome
from normalizer.iot.faults import LABELS_EN, LABELS_ZH
from normalizer.iot.registry import DeviceRegistry
from normalizer.mapping import MapContext, MappingError, MapResult

logger = logging.getLogger(__name__)
_RANK = {Urgency.normal: 0, Urgency.urgent: 1, Urgency.emergency: 2}


def episode_ref(ep: dict[str, Any]) -> str:
    """The source_ref of an episode's case (stable: from its first report)."""
    return f"episode:{ep['device_key']}:{ep['fault']}:{ep['start_ref']}"


class IotMapper:
    """Maps decoded device reports to device-fault cases through fault episodes."""

    def __init__(self, connector_config: MqttConfig | None, hub_config: Any) -> None:
        if connector_config is None:
            raise MappingError("iot records need their mqtt connector's config")
        self.config = connector_config
        self.source = connector_config.name
        registry = DeviceRegistry()
        if connector_config.registry:
            path = (hub_config.resolve_path(connector_config.registry)
                    if hub_config is not None else connector_config.registry)
            registry = DeviceRegistry.load(path)
        self.registry = registry
        self.engine = EpisodeEngine(self.source, connector_config, registry)
        self.tz = ZoneInfo(getattr(hub_config, "timezone", None) or "UTC")

    def _local(self, iso: str) -> str:
        """A stored UTC time as local time for texts (``2026-11-24 19:40:00+08:00``)."""
        return datetime.fromisoformat(iso).astimezone(self.tz).isoformat(sep=" ",
                                                                         timespec="seconds")

    # ------------------------------------------------------------------ map
    def map(self, raw: RawRecord, ctx: MapContext) -> MapResult:
        """Apply one report to the episodes of its device."""
        report = raw.payload.get("report") if isinstance(raw.payload, dict) else None
        if not isinstance(report, dict) or not report.get("device_id"):
            raise MappingError("iot record has no decoded report (payload.report.device_id)")
        out = self.engine.observe(ctx, report, raw.source_ref, raw.received_at)
        result = self._result(ctx, out, raw.source, raw.received_at)
        if result.case is None and not result.updates:
            status = report.get("status")
            if status in ("heartbeat", "telemetry"):
                return MapResult.ignored(f"{status}: last seen of {report['device_id']} updated")
            note = "; ".join(out.notes) or f"{status} with nothing open"
            return MapResult.ignored(f"{status}: {note}")
        return result

    def sweep(self, ctx: MapContext) -> list[MapResult]:
        """Time-based work: faults persisted by time, devices gone silent, due cases."""
        out = self.engine.sweep(ctx, ctx.now)
        results = []
        for ep in out.confirmed:
            results.append(MapResult(case=self._case(ctx, ep, self.source)))
        for ep, at, ref in out.restored:
            results.append(MapResult(updates=[self._restored(ep, at, ref)]))
        return results

    # ------------------------------------------------------------------ results
    def _result(self, ctx: MapContext, out: Outcome, source: str,
                received_at: datetime) -> MapResult:
        case = self._case(ctx, out.confirmed[0], source) if out.confirmed else None
        updates: list[CaseUpdate] = []
        for ep in out.bumped:
            updates.append(self._bump(ep, source))
        for ep, at, ref in out.restored:
            updates.append(self._restored(ep, at, ref))
        return MapResult(case=case, updates=updates)

    def _case_id(self, ep: dict[str, Any], source: str | None = None) -> str:
        return case_id_for(source or self.source, episode_ref(ep))

    def _bump(self, ep: dict[str, Any], source: str) -> CaseUpdate:
        pol = self.config.policy(ep["fault"])
        deliver = bool(pol.update_every) and ep["count"] % pol.update_every == 0
        return CaseUpdate(
            case_id=self._case_id(ep, source), update_id=f"{ep['fault']}:{ep['count']}",
            kind="episode_update", at=datetime.fromisoformat(ep["last_at"]),
            text=f"{LABELS_EN[ep['fault']]} reported again ({ep['count']} reports, last at "
                 f"{self._local(ep['last_at'])})",
            data={"fault": ep["fault"], "count": ep["count"], "last_seen": ep["last_at"],
                  "device_id": ep["device_id"], "values": ep.get("values") or {}},
            deliver=deliver)

    def _restored(self, ep: dict[str, Any], at: str, ref: str) -> CaseUpdate:
        return CaseUpdate(
            case_id=self._case_id(ep), update_id=f"restored:{ref}", kind="restored",
            at=datetime.fromisoformat(at),
            text=f"{LABELS_EN[ep['fault']]} restored at {self._local(at)} "
                 f"({LABELS_ZH[ep['fault']]}已恢复)",
            data={"fault": ep["fault"], "restored_at": at, "count": ep["count"],
                  "first_seen": ep["first_at"], "device_id": ep["device_id"]},
            deliver=True)

    def _case(self, ctx: MapContext, ep: dict[str, Any], source: str) -> Case:
        device = self.registry.get(ep["device_id"])
        fault = ep["fault"]
        ref = episode_ref(ep)
        asset_label = self.config.asset_labels.get(
            (device.asset_type if device else None) or "", "设备")
        where = (device.asset_id if device and device.asset_id else ep["device_id"])
        title = f"{asset_label}{LABELS_ZH[fault]}：{where}"
        if device and device.address:
            title += f"（{device.address}）"
        lines = [f"Fault: {LABELS_EN[fault]} ({fault}) / {LABELS_ZH[fault]}",
                 f"Device: {ep['device_id']}" + (f", asset {device.asset_id}"
                                                 if device and device.asset_id else ""),
                 f"First reported: {self._local(ep['first_at'])}; reports so far: "
                 f"{ep['count']}"]
        if ep.get("codes"):
            lines.append(f"Device codes: {', '.join(ep['codes'])}")
        if ep.get("values"):
            lines.append("Last values: " + ", ".join(f"{k}={v}" for k, v in
                                                     sorted(ep["values"].items())[:12]))
        if device is None:
            location = Location(device_id=ep["device_id"], source=LocationSource.unknown)
        else:
            location = Location(address=device.address, lat=device.lat, lon=device.lon,
                                district=device.district, street=device.street,
                                community=device.community, grid=device.grid,
                                device_id=device.device_id, asset_id=device.asset_id,
                                source=LocationSource.device_registry, confidence=1.0)
        case = Case(
            case_id=case_id_for(source, ref),
            origin=Origin(channel=Channel.iot, source=source, source_ref=ref,
                          received_at=datetime.fromisoformat(ep["first_rx"]),
                          occurred_at=datetime.fromisoformat(ep["first_at"])),
            kind=CaseKind.device_fault, title=title[:500], description="\n".join(lines),
            language="zh", location=location,
            extra={"fault": fault, "device_id": ep["device_id"],
                   "asset_type": device.asset_type if device else None,
                   "episode": {"start_ref": ep["start_ref"], "first_seen": ep["first_at"],
                               "reports": ep["count"], "codes": ep.get("codes") or []}})
        pol = self.config.policy(fault)
        if pol.urgency is not None and _RANK[pol.urgency] > _RANK[case.urgency.level]:
            case.urgency.level = pol.urgency
            case.urgency.reasons.append(f"device fault {fault} (config)")
        peers = self.engine.street_peers(ctx, ep)
        rule = self.config.street_rule
        if rule is not None and len(peers) >= rule.min_devices:
            if _RANK[rule.level] > _RANK[case.urgency.level]:
                case.urgency.level = rule.level
            case.urgency.reasons.append(
                f"{len(peers)} devices out on {ep['street']}: {', '.join(peers[:10])}")
        if device is None:
            case.flag("unknown_device", f"device {ep['device_id']} is not in the device "
                      "registry: location unknown")
        if ep.get("unknown_codes"):
            case.flag("unknown_fault_code", f"device codes not mapped to a fault: "
                      f"{', '.join(ep['unknown_codes'])}")
        return case
