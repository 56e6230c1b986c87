"""Kind (投诉/举报/求助/咨询/建议/表扬) and urgency from wording, on real sentences."""

from __future__ import annotations

import pytest

from normalizer.case import CaseKind, Urgency
from normalizer.classify import Classifier
from normalizer.kind import KindDetector
from normalizer.taxonomy import load_taxonomy
from normalizer.urgency import UrgencyAssessor
from tests.normalizer.helpers import make_case


@pytest.fixture(scope="module")
def tax():
    return load_taxonomy()


@pytest.mark.parametrize("text,kind", [
    ("物业公司收了物业费什么都不管，小区环境一团糟", CaseKind.complaint),
    ("举报：金色家园对面工地没有夜间施工许可证，半夜还在浇筑混凝土", CaseKind.report),
    ("楼道里有很浓的煤气味，请马上派人来", CaseKind.help),
    ("请问社保断缴了三个月，会有什么影响？", CaseKind.inquiry),
    ("建议在滨河公园多放几个垃圾桶", CaseKind.suggestion),
    ("特此表扬供电公司的抢修人员，半夜冒雨抢修", CaseKind.praise),
    ("How do I transfer my pension account when I change cities?", CaseKind.inquiry),
    ("Many thanks to the officer who helped my father find his way home.", CaseKind.praise),
    ("Strong smell of gas in the stairwell, please send someone now!", CaseKind.help),
])
def test_kind_from_wording(tax, text, kind) -> None:
    case = make_case(text)
    Classifier(tax).enrich(case, None)
    KindDetector(tax).enrich(case, None)
    assert case.kind is kind


def test_polite_thanks_do_not_turn_a_complaint_into_praise(tax) -> None:
    case = make_case("路灯坏了一周了，麻烦尽快修一下，谢谢")
    Classifier(tax).enrich(case, None)
    KindDetector(tax).enrich(case, None)
    assert case.kind is CaseKind.complaint


def test_kind_given_by_the_channel_and_device_faults_are_kept(tax) -> None:
    case = make_case("请问路灯什么时候修？")
    case.kind = CaseKind.complaint
    case.extra["kind_explicit"] = True
    KindDetector(tax).enrich(case, None)
    assert case.kind is CaseKind.complaint
    fault = make_case("lamp failure", kind=CaseKind.device_fault)
    KindDetector(tax).enrich(fault, None)
    assert fault.kind is CaseKind.device_fault


@pytest.mark.parametrize("text,level,reason", [
    ("楼道里有很浓的煤气味，怀疑燃气泄漏，请马上派人来", Urgency.emergency, "danger"),
    ("电梯突然停了，有人被困在里面", Urgency.emergency, "被困"),
    ("路面塌陷了一个大洞，车不敢过", Urgency.emergency, "塌陷"),
    ("Strong smell of gas in the stairwell, someone is injured", Urgency.emergency, "injured"),
    ("井盖丢了，晚上很危险", Urgency.urgent, "risk"),
    ("暖气不热，家里独居老人冻得受不了", Urgency.urgent, "vulnerable people"),
])
def test_danger_words_and_vulnerable_people(tax, text, level, reason) -> None:
    case = make_case(text)
    UrgencyAssessor(tax).enrich(case, None)
    assert case.urgency.level is level
    assert any(reason in r for r in case.urgency.reasons)


def test_negated_danger_is_not_an_emergency(tax) -> None:
    case = make_case("昨天电动车在路口摔了，还好没有人受伤，路面坑太多")
    UrgencyAssessor(tax).enrich(case, None)
    assert case.urgency.level is not Urgency.emergency
    assert not any("受伤" in r for r in case.urgency.reasons)


def test_ordinary_message_stays_normal(tax) -> None:
    case = make_case("建议在建设路低洼路段多加几个排水口")
    UrgencyAssessor(tax).enrich(case, None)
    assert case.urgency.level is Urgency.normal
    assert case.urgency.reasons == []


def test_iot_severity_and_urgent_fault_types(tax) -> None:
    crit = make_case("Cabinet C-7 reports supply loss", kind=CaseKind.device_fault)
    crit.extra.update({"fault": "supply_loss", "severity": "critical"})
    UrgencyAssessor(tax).enrich(crit, None)
    assert crit.urgency.level is Urgency.emergency
    assert "device fault supply_loss" in crit.urgency.reasons
    minor = make_case("Lamp LC-1 cycling", kind=CaseKind.device_fault)
    minor.extra.update({"fault": "cycling", "severity": "minor"})
    UrgencyAssessor(tax).enrich(minor, None)
    assert minor.urgency.level is Urgency.normal


def test_urgency_is_never_lowered(tax) -> None:
    case = make_case("建议多放几个垃圾桶")
    case.urgency.level = Urgency.urgent
    case.urgency.reasons = ["set by the hotline operator"]
    UrgencyAssessor(tax).enrich(case, None)
    assert case.urgency.level is Urgency.urgent
    assert case.urgency.reasons == ["set by the hotline operator"]
