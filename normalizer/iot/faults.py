"""The fault model, after TALQ's lamp-monitoring faults, and mapping device codes onto it.

A decoded report carries zero or more device codes. Each code maps to a fault (a lamp failure,
supply loss...), to a clear (all faults, or ``clear:<fault>`` for one), or to ``heartbeat`` /
``telemetry`` (no fault). Codes nobody mapped become the fault ``other`` and the case is flagged
for review rather than dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Fault(str, Enum):
    """Device faults (TALQ lamp monitoring plus communication lost)."""

    lamp_failure = "lamp_failure"
    supply_loss = "supply_loss"
    relay_failure = "relay_failure"
    cycling = "cycling"
    high_temperature = "high_temperature"
    day_burner = "day_burner"
    communication_lost = "communication_lost"
    other = "other"


LABELS_ZH: dict[str, str] = {
    "lamp_failure": "灯具故障（不亮）",
    "supply_loss": "供电中断",
    "relay_failure": "继电器故障",
    "cycling": "灯具闪烁",
    "high_temperature": "温度过高",
    "day_burner": "白天亮灯",
    "communication_lost": "通信中断",
    "other": "未知故障",
}
LABELS_EN: dict[str, str] = {
    "lamp_failure": "lamp failure", "supply_loss": "supply loss",
    "relay_failure": "relay failure", "cycling": "cycling (flicker)",
    "high_temperature": "high temperature", "day_burner": "day burner",
    "communication_lost": "communication lost", "other": "unknown fault",
}
NO_FAULT = ("heartbeat", "telemetry")
_CLEAR_WORDS = {"clear", "ok", "normal", "restored", "cleared", "none", "0"}
#: Codes understood without configuration (TALQ-ish spellings and common vendor words).
DEFAULT_CODES: dict[str, str] = {
    **{f.value: f.value for f in Fault},
    "lampfailure": "lamp_failure", "lamp_fail": "lamp_failure", "lamp_out": "lamp_failure",
    "powerloss": "supply_loss", "power_loss": "supply_loss", "supplyloss": "supply_loss",
    "relayfailure": "relay_failure", "flicker": "cycling", "dayburner": "day_burner",
    "overtemperature": "high_temperature", "over_temperature": "high_temperature",
    "commlost": "communication_lost", "heartbeat": "heartbeat", "telemetry": "telemetry",
    **{w: "clear" for w in _CLEAR_WORDS},
}


def check_code_target(target: str) -> str | None:
    """Return a problem with a ``codes`` mapping target, or None when it is valid."""
    names = {f.value for f in Fault}
    if target in names or target in NO_FAULT or target == "clear":
        return None
    if target.startswith("clear:") and target[6:] in names:
        return None
    return (f"unknown target {target!r}; use a fault ({', '.join(sorted(names))}), clear, "
            f"clear:<fault>, heartbeat or telemetry")


@dataclass
class Classified:
    """What a report's codes say."""

    status: str  # fault | clear | heartbeat | telemetry
    faults: list[str] = field(default_factory=list)
    cleared: list[str] = field(default_factory=list)  # empty with status clear: every fault
    unknown: list[str] = field(default_factory=list)


def classify_codes(codes: list[str], mapping: dict[str, str], has_values: bool) -> Classified:
    """Map raw device codes to faults / clears.

    Args:
        codes: the raw codes of one report (empty: no fault field).
        mapping: the subscription's ``codes`` (device code → target), checked first.
        has_values: the report carries measured values (telemetry rather than a heartbeat).
    """
    faults: list[str] = []
    cleared: list[str] = []
    unknown: list[str] = []
    clear_all = False
    for code in codes:
        target = mapping.get(code)
        if target is None:
            target = DEFAULT_CODES.get(code.strip().lower().replace("-", "_").replace(" ", "_"))
        if target is None:
            unknown.append(code)
            faults.append(Fault.other.value)
        elif target == "clear":
            clear_all = True
        elif target.startswith("clear:"):
            cleared.append(target[6:])
        elif target in NO_FAULT:
            continue
        else:
            faults.append(target)
    faults = list(dict.fromkeys(faults))
    if faults:
        return Classified("fault", faults, list(dict.fromkeys(cleared)), unknown)
    if clear_all or cleared:
        return Classified("clear", [], [] if clear_all else list(dict.fromkeys(cleared)))
    return Classified("telemetry" if has_values else "heartbeat")
