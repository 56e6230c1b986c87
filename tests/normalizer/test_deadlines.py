"""Working-day deadlines on the mainland calendar: 国庆 and 春节 with 调休, unknown years."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml

from normalizer.case import CaseKind, Urgency
from normalizer.deadlines import DeadlineSetter
from normalizer.enrichment_config import build_enrichers
from normalizer.taxonomy import load_taxonomy
from normalizer.workcalendar import CalendarFileError, CalendarRangeError, WorkCalendar
from tests.normalizer.helpers import make_case

SH = ZoneInfo("Asia/Shanghai")


def local(y: int, m: int, d: int, h: int = 10, mi: int = 0) -> dt.datetime:
    return dt.datetime(y, m, d, h, mi, tzinfo=SH)


@pytest.fixture(scope="module")
def cal() -> WorkCalendar:
    return WorkCalendar.load()


@pytest.mark.parametrize("start,n,expected", [
    # 国庆 2025: Sun 28 Sep is a make-up working day, 1-8 Oct off, Sat 11 Oct works
    (dt.date(2025, 9, 26), 3, dt.date(2025, 9, 30)),
    (dt.date(2025, 9, 30), 3, dt.date(2025, 10, 11)),
    # 国庆 2026: 1-7 Oct off, Sat 10 Oct is a make-up working day
    (dt.date(2026, 9, 30), 3, dt.date(2026, 10, 10)),
    (dt.date(2026, 9, 30), 7, dt.date(2026, 10, 15)),
    # 春节 2025: Sun 26 Jan works, 28 Jan - 4 Feb off, Sat 8 Feb works
    (dt.date(2025, 1, 24), 3, dt.date(2025, 2, 5)),
    # 春节 2026: Sat 14 Feb works, 15-23 Feb off
    (dt.date(2026, 2, 13), 3, dt.date(2026, 2, 25)),
    (dt.date(2026, 2, 13), 1, dt.date(2026, 2, 14)),
])
def test_working_days_across_national_day_and_spring_festival(cal, start, n, expected) -> None:
    assert cal.add_workdays(start, n) == expected


def test_make_up_saturdays_are_working_days(cal) -> None:
    assert cal.is_workday(dt.date(2026, 2, 14))  # Saturday, 调休
    assert cal.is_workday(dt.date(2026, 10, 10))  # Saturday, 调休
    assert not cal.is_workday(dt.date(2026, 10, 5))  # Monday, 国庆
    assert not cal.is_workday(dt.date(2026, 11, 28))  # an ordinary Saturday


def test_an_unknown_year_fails_clearly(cal) -> None:
    with pytest.raises(CalendarRangeError, match=r"2027.*calendar_override"):
        cal.is_workday(dt.date(2027, 1, 4))


def test_override_file_supplies_a_year(tmp_path: Path) -> None:
    # a made-up schedule for a far year: only the file format is under test here
    path = tmp_path / "cal.yaml"
    path.write_text(yaml.safe_dump({2031: {
        "source": "test schedule", "holidays": ["2031-01-01", "2031-01-02"],
        "workdays": ["2031-01-04"]}}), encoding="utf-8")
    cal = WorkCalendar.load(path)
    assert not cal.is_workday(dt.date(2031, 1, 2))
    assert cal.is_workday(dt.date(2031, 1, 4))  # Saturday made a working day
    # Wed 1 and Thu 2 off, Fri 3 works, Sat 4 made a working day
    assert cal.add_workdays(dt.date(2030, 12, 31), 2) == dt.date(2031, 1, 4)
    assert cal.add_workdays(dt.date(2030, 12, 31), 3) == dt.date(2031, 1, 6)
    assert "2031 (test schedule)" in cal.source


@pytest.mark.parametrize("doc,message", [
    ({2031: {"holidays": ["2030-12-31"]}}, "not in 2031"),
    ({2031: {"holidays": ["2031-13-01"]}}, "not a date"),
    ({2031: {"holidays": ["2031-01-01"], "workdays": ["2031-01-01"]}}, "both"),
    ({"next": {}}, "not a year"),
])
def test_invalid_override_is_rejected(tmp_path: Path, doc, message) -> None:
    path = tmp_path / "cal.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    with pytest.raises(CalendarFileError, match=message):
        WorkCalendar.load(path)


@pytest.fixture(scope="module")
def setter() -> DeadlineSetter:
    tax = load_taxonomy()
    return DeadlineSetter(WorkCalendar.load(), "Asia/Shanghai", major=tax.major, tax=tax)


def test_ordinary_matter_three_working_days_and_24h_response(setter) -> None:
    case = make_case("小区垃圾桶满了没人清运", received_at=local(2026, 9, 30, 10))
    setter.enrich(case, None)
    d = case.deadlines
    assert d.respond_by == local(2026, 10, 1, 10)
    assert d.resolve_by == dt.datetime(2026, 10, 10, 23, 59, 59, tzinfo=SH)
    assert "chinese-calendar 1.11.0" in d.calendar and "Asia/Shanghai" in d.calendar
    assert d.policy.startswith("ordinary matter")


def test_receipt_day_is_the_local_day(setter) -> None:
    # 2026-10-09 17:00 UTC is already Saturday 10 October (a 调休 working day) in Shanghai:
    # counting starts after the 10th, not after the 9th
    case = make_case("路灯坏了", received_at=dt.datetime(2026, 10, 9, 17, 0,
                                                      tzinfo=dt.timezone.utc))
    setter.enrich(case, None)
    assert case.deadlines.resolve_by.date() == dt.date(2026, 10, 14)


def test_major_matter_gets_seven_working_days(setter) -> None:
    case = make_case("整个小区几百户停水多年得不到解决", received_at=local(2026, 11, 2))
    setter.enrich(case, None)
    assert case.classification.major
    assert case.deadlines.resolve_by.date() == dt.date(2026, 11, 11)
    major_cat = make_case("楼顶私自加盖彩钢板房", received_at=local(2026, 11, 2))
    major_cat.classification.category_code = "illegal_construction"
    setter.enrich(major_cat, None)
    assert major_cat.deadlines.policy.startswith("major matter")


def test_simple_matter_is_answered_the_same_working_day(setter) -> None:
    morning = make_case("请问社保卡丢了怎么补办？", received_at=local(2026, 11, 24, 9),
                        kind=CaseKind.inquiry)
    setter.enrich(morning, None)
    assert morning.deadlines.resolve_by == dt.datetime(2026, 11, 24, 23, 59, 59, tzinfo=SH)
    evening = make_case("请问社保卡丢了怎么补办？", received_at=local(2026, 11, 27, 18),
                        kind=CaseKind.inquiry)  # Friday after the cut-off
    setter.enrich(evening, None)
    assert evening.deadlines.resolve_by.date() == dt.date(2026, 11, 30)


def test_emergency_responds_in_two_hours(setter) -> None:
    case = make_case("燃气泄漏", received_at=local(2026, 11, 24, 9))
    case.urgency.level = Urgency.emergency
    setter.enrich(case, None)
    assert case.deadlines.respond_by == local(2026, 11, 24, 11)
    assert case.deadlines.resolve_by.date() == dt.date(2026, 11, 25)


def test_per_category_and_per_urgency_overrides() -> None:
    chain = build_enrichers({"deadlines": {
        "respond_hours": {"urgent": 6},
        "per_category": {"streetlight": {"resolve_days": 1, "respond_hours": {"normal": 8}}}}})
    setter = chain[-1]
    lamp = make_case("路灯不亮", received_at=local(2026, 11, 24, 9))
    lamp.classification.category_code = "streetlight"
    setter.enrich(lamp, None)
    assert lamp.deadlines.respond_by == local(2026, 11, 24, 17)
    assert lamp.deadlines.resolve_by.date() == dt.date(2026, 11, 25)
    urgent = make_case("垃圾没人收", received_at=local(2026, 11, 24, 9))
    urgent.urgency.level = Urgency.urgent
    setter.enrich(urgent, None)
    assert urgent.deadlines.respond_by == local(2026, 11, 24, 15)


def test_deadline_into_an_unknown_year_is_flagged_not_guessed(setter) -> None:
    case = make_case("小区垃圾桶满了没人清运", received_at=local(2026, 12, 30, 10))
    setter.enrich(case, None)
    assert case.deadlines.respond_by == local(2026, 12, 31, 10)
    assert case.deadlines.resolve_by is None
    assert "not computed" in case.deadlines.policy
    flag = next(f for f in case.review.flags if f.code == "deadline_unknown")
    assert "2027" in flag.reason and case.review.needs_review


def test_weekday_fallback_is_flagged_provisional() -> None:
    setter = build_enrichers({"deadlines": {"calendar_fallback": "weekdays"}})[-1]
    case = make_case("小区垃圾桶满了没人清运", received_at=local(2026, 12, 30, 10))
    setter.enrich(case, None)
    assert case.deadlines.resolve_by.date() == dt.date(2027, 1, 4)
    assert "Monday-Friday estimate for 2027" in case.deadlines.calendar
    assert any(f.code == "deadline_provisional" for f in case.review.flags)
