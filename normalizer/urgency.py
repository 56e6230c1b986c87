"""Urgency: normal / urgent / emergency, with the reasons that set it.

Cue words come from the taxonomy file's ``urgency:`` section (scanned together with the other
cues, once per message):

* danger words (燃气泄漏, 漏电, 塌陷, 起火, 受伤, 被困...) → emergency, unless negated right
  before (没有人受伤, 未起火, no one injured);
* risk words (危险, 安全隐患...) and vulnerable people (老人, 孕妇, 行动不便...) → urgent;
* IoT: faults listed in ``iot_urgent``, or the device's own severity (``extra["severity"]``:
  critical → emergency, major/high → urgent);
* many reports of the same problem → urgent (set by the linking enricher, which sees them).

Urgency is only ever raised here, never lowered: a level set by the channel stays.
"""

from __future__ import annotations

import re

from normalizer.case import Case, CaseKind, Urgency
from normalizer.taxonomy import Taxonomy
from normalizer.textnorm import message_text

_NEGATION = re.compile(r"(?:没有人?|没人|没|并未|未|无人|不是|no one |nobody |not |no )$")
SEVERITY_LEVELS = {"critical": Urgency.emergency, "emergency": Urgency.emergency,
                   "major": Urgency.urgent, "high": Urgency.urgent, "urgent": Urgency.urgent}
_RANK = {Urgency.normal: 0, Urgency.urgent: 1, Urgency.emergency: 2}


class UrgencyAssessor:
    """Enricher: danger words, vulnerable people and device severity raise the urgency."""

    name = "urgency"
    #: works on the case alone (nothing read from the store)
    reads_store = False

    def __init__(self, tax: Taxonomy) -> None:
        self.tax = tax
        self.iot_urgent = {str(f) for f in tax.urgency.get("iot_urgent") or []}

    def assess(self, text: str) -> tuple[Urgency, list[str]]:
        """The level and reasons the wording of a message calls for."""
        prepared = self.tax.prepare(text)
        found: dict[str, set[str]] = {}
        for group, term, start in self.tax.cue_groups(prepared, "urgency"):
            if _NEGATION.search(prepared, max(0, start - 4), start):
                continue  # 没有人受伤, no one injured
            found.setdefault(group, set()).add(term)
        level, reasons = Urgency.normal, []
        if "emergency" in found:
            level = Urgency.emergency
            reasons.append(f"danger: {', '.join(sorted(found['emergency']))}")
        if "urgent" in found:
            level = max(level, Urgency.urgent, key=_RANK.__getitem__)
            reasons.append(f"risk: {', '.join(sorted(found['urgent']))}")
        if "vulnerable" in found:
            level = max(level, Urgency.urgent, key=_RANK.__getitem__)
            reasons.append(f"vulnerable people: {', '.join(sorted(found['vulnerable']))}")
        return level, reasons

    def enrich(self, case: Case, ctx: object) -> None:
        """Raise the urgency when the text or the device says so (never lowers it)."""
        level, reasons = self.assess(message_text(case.title, case.description))
        if case.kind is CaseKind.device_fault:
            fault = case.extra.get("fault") or case.extra.get("fault_type")
            if fault in self.iot_urgent:
                level = max(level, Urgency.urgent, key=_RANK.__getitem__)
                reasons.append(f"device fault {fault}")
            severity = str(case.extra.get("severity") or "").lower()
            if severity in SEVERITY_LEVELS:
                level = max(level, SEVERITY_LEVELS[severity], key=_RANK.__getitem__)
                reasons.append(f"device severity {severity}")
        if _RANK[level] > _RANK[case.urgency.level]:
            case.urgency.level = level
        if reasons:
            case.urgency.reasons = list(dict.fromkeys([*case.urgency.reasons, *reasons]))
