"""Fault episodes: a fault becomes ONE case once it persists, and closes on a clear.

State lives in the store (``MapContext.state_*``, namespace ``iot:<source>``), written in the
same transaction as the cases it causes, so a crash or a reprocess never opens a second case:

* ``dev:<device>``: last report time (device clock), last receipt (hub clock), when each fault
  was last cleared (older fault reports are stale), recent suppressed flaps;
* ``ep:<device>:<fault>``: an episode, ``pending`` until it persists (``reports`` reports in a
  row or ``seconds`` without a clear), then ``open`` with its case id;
* ``street:<fault>:<street>:<device>``: open episodes by street (the several-lamps-out rule);
* ``due:<device>:<fault>``: episodes confirmed by time or beside another case, emitted by the
  next sweep (a record yields at most one new case).

A pending episode cleared before it persists is suppressed (a flap). Enough flaps within the
flapping window open a ``cycling`` episode instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from connectors.iot.config import MqttConfig
from normalizer.iot.faults import Fault
from normalizer.iot.registry import Device, DeviceRegistry, device_key
from normalizer.mapping import MapContext

COMM_LOST = Fault.communication_lost.value
CYCLING = Fault.cycling.value


def _iso(dt: datetime) -> str:
    # one fixed form (UTC, microseconds) so the strings compare in time order
    return dt.astimezone(timezone.utc).isoformat(timespec="microseconds")


def _dt(s: str) -> datetime:
    return datetime.fromisoformat(s)


@dataclass
class Outcome:
    """What one report (or one sweep) did to the episodes."""

    confirmed: list[dict[str, Any]] = field(default_factory=list)  # episodes needing a case
    bumped: list[dict[str, Any]] = field(default_factory=list)  # open episodes seen again
    restored: list[tuple[dict[str, Any], str, str]] = field(default_factory=list)  # ep, at, ref
    notes: list[str] = field(default_factory=list)


class EpisodeEngine:
    """The episode state machine of one source."""

    def __init__(self, source: str, config: MqttConfig, registry: DeviceRegistry) -> None:
        self.source = source
        self.config = config
        self.registry = registry
        self.ns = f"iot:{source}"

    # ------------------------------------------------------------------ helpers
    def _new_episode(self, dev: str, device_id: str, fault: str, ref: str, at: str, rx: str,
                     device: Device | None) -> dict[str, Any]:
        return {"device_id": device_id, "device_key": dev, "fault": fault, "status": "pending",
                "start_ref": ref, "first_at": at, "last_at": at, "first_rx": rx, "last_rx": rx,
                "count": 1, "codes": [], "values": {},
                "street": device.street if device else None}

    def _persisted(self, ep: dict[str, Any], now: datetime | None = None) -> bool:
        pol = self.config.policy(ep["fault"])
        if ep["count"] >= pol.reports:
            return True
        if pol.seconds > 0:
            span = (_dt(ep["last_at"]) - _dt(ep["first_at"])).total_seconds()
            if span >= pol.seconds:
                return True
            if now is not None and (now - _dt(ep["first_rx"])).total_seconds() >= pol.seconds:
                return True
        return False

    def _open(self, ctx: MapContext, ep: dict[str, Any]) -> None:
        ep["status"] = "open"
        if ep.get("street"):
            ctx.state_put(self.ns, f"street:{ep['fault']}:{ep['street']}:{ep['device_key']}",
                          {"device_id": ep["device_id"], "since": ep["first_at"]})

    def _close(self, ctx: MapContext, ep: dict[str, Any]) -> None:
        ctx.state_put(self.ns, f"ep:{ep['device_key']}:{ep['fault']}", None)
        ctx.state_put(self.ns, f"due:{ep['device_key']}:{ep['fault']}", None)
        if ep.get("street"):
            ctx.state_put(self.ns, f"street:{ep['fault']}:{ep['street']}:{ep['device_key']}",
                          None)

    def street_peers(self, ctx: MapContext, ep: dict[str, Any]) -> list[str]:
        """Device ids with an open episode of a street-rule fault on this episode's street."""
        rule = self.config.street_rule
        if rule is None or not ep.get("street") or ep["fault"] not in rule.faults:
            return []
        me = self.registry.get(ep["device_id"])
        peers: dict[str, str] = {}
        for fault in rule.faults:
            for key, val in ctx.state_scan(self.ns, f"street:{fault}:{ep['street']}:"):
                dev_k = key.rsplit(":", 1)[-1]
                if rule.within_m and me and me.lat is not None:
                    other = self.registry.get(val["device_id"])
                    if other is None or other.lat is None or _distance_m(
                            me.lat, me.lon or 0.0, other.lat, other.lon or 0.0) > rule.within_m:
                        continue
                peers[dev_k] = val["device_id"]
        return sorted(peers.values())

    # ------------------------------------------------------------------ per report
    def observe(self, ctx: MapContext, report: dict[str, Any], ref: str,
                received_at: datetime) -> Outcome:
        """Apply one report to the device's episodes."""
        out = Outcome()
        device_id = report["device_id"]
        dev = device_key(device_id)
        device = self.registry.get(device_id)
        rx = _iso(received_at)
        at = report.get("time") or rx
        dkey = f"dev:{dev}"
        dstate = ctx.state_get(self.ns, dkey) or {"device_id": device_id, "cleared": {},
                                                  "flaps": []}
        if not dstate.get("last_at") or at > dstate["last_at"]:
            dstate["last_at"] = at
        if not dstate.get("last_rx") or rx > dstate["last_rx"]:
            dstate["last_rx"] = rx
        dstate["interval"] = (device.interval if device and device.interval
                              else self.config.silence_timeout)
        # any report ends a communication-lost episode
        lost = ctx.state_get(self.ns, f"ep:{dev}:{COMM_LOST}")
        if lost is not None:
            if lost["status"] == "open":
                out.restored.append((lost, at, ref))
            self._close(ctx, lost)
        status = report.get("status")
        if status == "fault":
            for fault in report.get("faults") or []:
                cleared_at = dstate["cleared"].get(fault)
                if cleared_at and at <= cleared_at:
                    out.notes.append(f"stale {fault} report (cleared at {cleared_at})")
                    continue
                key = f"ep:{dev}:{fault}"
                ep = ctx.state_get(self.ns, key)
                if ep is None:
                    ep = self._new_episode(dev, device_id, fault, ref, at, rx, device)
                else:
                    ep["count"] += 1
                    ep["last_at"] = max(ep["last_at"], at)
                    ep["last_rx"] = max(ep["last_rx"], rx)
                ep["codes"] = list(dict.fromkeys([*ep["codes"], *report.get("codes", [])]))[-10:]
                if report.get("values"):
                    ep["values"] = report["values"]
                if report.get("unknown_codes"):
                    ep["unknown_codes"] = report["unknown_codes"]
                if ep["status"] == "pending":
                    if self._persisted(ep):
                        self._open(ctx, ep)
                        out.confirmed.append(ep)
                    else:
                        pol = self.config.policy(fault)
                        out.notes.append(f"{fault} pending ({ep['count']}/{pol.reports} reports)")
                else:
                    out.bumped.append(ep)
                ctx.state_put(self.ns, key, ep)
        elif status == "clear":
            targets = report.get("cleared") or []
            if targets:
                eps = [(f, ctx.state_get(self.ns, f"ep:{dev}:{f}")) for f in targets]
            else:
                prefix = f"ep:{dev}:"
                # the rest of the key is the fault name (no colon); a longer rest belongs to
                # another device whose id starts with this one's and a colon
                eps = [(k[len(prefix):], v) for k, v in ctx.state_scan(self.ns, prefix)
                       if ":" not in k[len(prefix):]]
            for fault, ep in eps:
                if fault == COMM_LOST:
                    continue
                if not targets or fault in targets:
                    prev = dstate["cleared"].get(fault)
                    dstate["cleared"][fault] = max(prev, at) if prev else at
                if ep is None:
                    continue
                if at < ep["first_at"]:
                    out.notes.append(f"stale clear of {fault}")
                    continue
                if ep["status"] == "pending":
                    self._close(ctx, ep)
                    if fault != CYCLING:
                        dstate["flaps"] = [*dstate.get("flaps", []), at][-20:]
                        out.notes.append(f"{fault} cleared before it persisted (suppressed)")
                        self._maybe_cycling(ctx, dstate, dev, device_id, ref, at, rx, device,
                                            out)
                else:
                    self._close(ctx, ep)
                    out.restored.append((ep, at, ref))
            if not targets:
                for fault in list(dstate["cleared"]):
                    dstate["cleared"][fault] = max(dstate["cleared"][fault], at)
        ctx.state_put(self.ns, dkey, dstate)
        if len(out.confirmed) > 1:
            # one record yields one new case: the others are emitted by the next sweep
            for ep in out.confirmed[1:]:
                ctx.state_put(self.ns, f"due:{ep['device_key']}:{ep['fault']}", {"at": rx})
            out.confirmed = out.confirmed[:1]
        return out

    def _maybe_cycling(self, ctx: MapContext, dstate: dict[str, Any], dev: str, device_id: str,
                       ref: str, at: str, rx: str, device: Device | None, out: Outcome) -> None:
        pol = self.config.flapping
        if pol.window <= 0:
            return
        since = _iso(_dt(at) - timedelta(seconds=pol.window))
        recent = [t for t in dstate.get("flaps", []) if t >= since]
        dstate["flaps"] = recent
        if len(recent) < pol.transitions:
            return
        key = f"ep:{dev}:{CYCLING}"
        ep = ctx.state_get(self.ns, key)
        if ep is None:
            ep = self._new_episode(dev, device_id, CYCLING, ref, recent[0], rx, device)
            ep["count"] = len(recent)
            ep["last_at"] = at
            self._open(ctx, ep)
            if out.confirmed:
                ctx.state_put(self.ns, f"due:{dev}:{CYCLING}", {"at": rx})
            else:
                out.confirmed.append(ep)
        else:
            ep["count"] += 1
            ep["last_at"] = at
            out.bumped.append(ep)
        ctx.state_put(self.ns, key, ep)

    # ------------------------------------------------------------------ time-based
    def sweep(self, ctx: MapContext, now: datetime) -> Outcome:
        """Confirm episodes by time, emit due cases, open communication-lost episodes."""
        out = Outcome()
        for key, _ in ctx.state_scan(self.ns, "due:"):
            dev, fault = key[len("due:"):].rsplit(":", 1)
            ep = ctx.state_get(self.ns, f"ep:{dev}:{fault}")
            ctx.state_put(self.ns, key, None)
            if ep is not None and ep["status"] == "open":
                out.confirmed.append(ep)
        meta = ctx.state_get(self.ns, "meta:sweep") or {}
        last = meta.get("at")
        if last and (now - _dt(last)).total_seconds() < self.config.sweep_interval:
            return out
        ctx.state_put(self.ns, "meta:sweep", {"at": _iso(now)})
        for key, ep in ctx.state_scan(self.ns, "ep:"):
            if ep["status"] == "pending" and self._persisted(ep, now):
                self._open(ctx, ep)
                ctx.state_put(self.ns, key, ep)
                out.confirmed.append(ep)
            elif ep["status"] == "open" and ep["fault"] == CYCLING:
                window = self.config.flapping.window
                if window > 0 and (now - _dt(ep["last_rx"])).total_seconds() > window:
                    self._close(ctx, ep)
                    out.restored.append((ep, _iso(now), f"quiet:{_iso(now)}"))
        for key, dstate in ctx.state_scan(self.ns, "dev:"):
            interval = dstate.get("interval")
            if not interval or not dstate.get("last_rx"):
                continue
            silent = (now - _dt(dstate["last_rx"])).total_seconds()
            if silent <= interval:
                continue
            dev = key[4:]
            ep_key = f"ep:{dev}:{COMM_LOST}"
            if ctx.state_get(self.ns, ep_key) is not None:
                continue
            device = self.registry.get(dstate["device_id"])
            ep = self._new_episode(dev, dstate["device_id"], COMM_LOST,
                                   f"silent-since:{dstate['last_rx']}", dstate["last_rx"],
                                   _iso(now), device)
            ep["values"] = {"silent_seconds": round(silent), "expected_interval": interval}
            self._open(ctx, ep)
            ctx.state_put(self.ns, ep_key, ep)
            out.confirmed.append(ep)
        return out


def _distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    import math

    r = 6_371_000.0
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * r * math.asin(math.sqrt(a))
