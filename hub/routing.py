"""Choose the sinks a case goes to, from the ``routing:`` rules in config."""

from __future__ import annotations

from collections.abc import Sequence

from hub.config import RoutingRule
from normalizer.case import Case


def _match(values: Sequence[str], actual: str | None, prefix: bool = False) -> bool:
    if not values:
        return True
    if actual is None:
        return False
    return any(actual.startswith(v) if prefix else actual == v for v in values)


def rule_matches(rule: RoutingRule, case: Case) -> bool:
    """Tell whether every condition of a rule holds for a case."""
    cls = case.classification
    departments = [d for d in [cls.department, *cls.co_departments] if d]
    return (
        _match(rule.categories, cls.category_code, prefix=True)
        and (not rule.departments or any(d in rule.departments for d in departments))
        and _match(rule.channels, case.origin.channel.value)
        and _match(rule.urgencies, case.urgency.level.value)
        and _match(rule.kinds, case.kind.value)
        and _match(rule.sources, case.origin.source)
    )


def route(case: Case, rules: Sequence[RoutingRule], sinks: Sequence[str]) -> list[str]:
    """Return the sink names for a case (every sink when there are no rules)."""
    if not rules:
        return list(sinks)
    chosen: list[str] = []
    for rule in rules:
        if rule_matches(rule, case):
            chosen.extend(s for s in rule.sinks if s not in chosen and s in sinks)
            if rule.stop:
                break
    return chosen
