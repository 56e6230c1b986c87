"""The enrichment: section: defaults, validation with named keys, the built chain."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from normalizer.enrichment_config import EnrichmentConfig, build_enrichers, validate_enrichment
from tests.normalizer.helpers import MemoryContext, make_case


def test_empty_section_builds_the_full_default_chain() -> None:
    chain = build_enrichers({}, base_dir=".", timezone="Asia/Shanghai")
    assert [e.name for e in chain] == ["classify", "kind", "location", "privacy", "urgency",
                                       "linking", "deadlines"]
    cfg = EnrichmentConfig()
    assert cfg.linking.radius_m == 50 and cfg.linking.window == 30 * 86400


def test_disabled_parts() -> None:
    assert build_enrichers({"enabled": False}) == []
    names = [e.name for e in build_enrichers({"linking": {"enabled": False}})]
    assert "linking" not in names


def test_the_chain_enriches_a_case_end_to_end() -> None:
    chain = build_enrichers({})
    case = make_case("光明小区3号楼门口的路灯坏了一周了，晚上很黑，我家有老人，电话13812345678")
    ctx = MemoryContext()
    for e in chain:
        e.enrich(case, ctx)
    assert case.classification.category_code == "streetlight"
    assert case.location.community == "光明社区"
    assert case.urgency.level.value == "urgent"
    assert case.reporter.phone == "13812345678"
    assert case.deadlines.respond_by and case.deadlines.resolve_by
    assert ctx.lookups == 1


@pytest.mark.parametrize("data,message", [
    ({"linking": {"radius": 10}}, "radius"),
    ({"deadlines": {"respond_hours": {"critical": 1}}}, "unknown urgency levels"),
    ({"deadlines": {"resolve_days": {"huge": 9}}}, "unknown policies"),
    ({"deadlines": {"calendar_fallback": "guess"}}, "calendar_fallback"),
    ({"min_confidence": 2}, "min_confidence"),
])
def test_bad_values_name_the_key(data, message) -> None:
    with pytest.raises(ValidationError, match=message):
        validate_enrichment(data)


def test_files_and_categories_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"enrichment\.taxonomy: file not found"):
        validate_enrichment({"taxonomy": "nope.yaml"}, base_dir=str(tmp_path))
    with pytest.raises(ValueError, match="per_category: no category 'lamps'"):
        validate_enrichment({"deadlines": {"per_category": {"lamps": {"resolve_days": 1}}}})
    bad = tmp_path / "cal.yaml"
    bad.write_text("2031: {holidays: [2030-01-01]}\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"enrichment\.calendar_override"):
        validate_enrichment({"calendar_override": "cal.yaml"}, base_dir=str(tmp_path))
