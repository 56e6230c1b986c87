"""Repeat complaints, duplicates and related cases on generated report streams."""

from __future__ import annotations

import random
import re
from datetime import timedelta

import pytest

from normalizer.case import Urgency
from normalizer.linking import Linker, reporter_key
from normalizer.similarity import K, fingerprint, parse_fingerprint, similarity, text_similarity
from tests.normalizer.helpers import T0, MemoryContext, make_case

BASE_LAT, BASE_LON = 31.2300, 121.4700


def lamp_case(i: int, *, text: str, lat: float, lon: float, minutes: float,
              phone: str | None = None, category: str = "streetlight",
              community: str | None = None):
    case = make_case(text, case_id=f"case-{i}", received_at=T0 + timedelta(minutes=minutes),
                     phone=phone)
    case.classification.category_code = category
    case.location.lat, case.location.lon, case.location.community = lat, lon, community
    return case


def offset(lat: float, lon: float, north_m: float, east_m: float) -> tuple[float, float]:
    return lat + north_m / 111_320, lon + east_m / (111_320 * 0.8599)


def test_fingerprint_is_stable_and_estimates_jaccard() -> None:
    a = "幸福路88号门口的路灯已经三个晚上不亮了，晚上走路很危险"
    fp = fingerprint(a)
    assert re.fullmatch(r"m1:([0-9a-f]{8})+", fp) and len(parse_fingerprint(fp)) <= K
    assert fp == fingerprint(a)  # deterministic (no salted hash)
    assert similarity(fp, fp) == 1.0
    assert text_similarity(a, "幸福路88號門口的路燈已經三個晚上不亮了，晚上走路很危險") == 1.0
    near = text_similarity(a, "幸福路88号门口的路灯不亮了，晚上走路很危险，请修一下")
    far = text_similarity(a, "请问社保卡丢了怎么补办？需要带什么材料")
    assert near > 0.5 > 0.1 > far
    assert similarity(fp, "") == 0.0 and similarity(fp, "garbage") == 0.0


def test_bottom_k_estimate_on_long_texts_is_close_to_exact_jaccard() -> None:
    from normalizer.similarity import shingle_hashes

    rng = random.Random(3)
    words = list("路灯积水垃圾噪音施工物业电梯停车绿化供水供电燃气暖气违建食品交通公交邻居")
    errs = []
    for _ in range(50):
        base = "".join(rng.choice(words) for _ in range(120))
        other = base[:80] + "".join(rng.choice(words) for _ in range(40))
        a, b = shingle_hashes(base), shingle_hashes(other)
        exact = len(a & b) / len(a | b)
        errs.append(abs(text_similarity(base, other) - exact))
    assert sum(errs) / len(errs) < 0.1


@pytest.fixture
def linker() -> Linker:
    return Linker(radius_m=50, window_days=30, related_threshold=0.2, duplicate_threshold=0.5,
                  duplicate_window_days=7, urgent_after=3)


def test_same_problem_nearby_is_linked_and_far_away_is_not(linker) -> None:
    ctx = MemoryContext()
    first = lamp_case(1, text="幸福路88号门口的路灯不亮了，晚上很黑", lat=BASE_LAT,
                      lon=BASE_LON, minutes=0)
    ctx.add(first)
    lat, lon = offset(BASE_LAT, BASE_LON, 30, 10)
    again = lamp_case(2, text="幸福路88号门口路灯不亮了，晚上太黑了", lat=lat, lon=lon,
                      minutes=60)
    linker.enrich(again, ctx)
    assert [r.case_id for r in again.links.related_cases] == ["case-1"]
    assert again.links.duplicate_of is not None and again.links.duplicate_of.case_id == "case-1"
    assert "m apart" in again.links.duplicate_of.reason
    lat, lon = offset(BASE_LAT, BASE_LON, 400, 0)
    far = lamp_case(3, text="幸福路88号门口的路灯不亮了，晚上很黑", lat=lat, lon=lon,
                    minutes=90)
    linker.enrich(far, ctx)
    assert far.links.related_cases == [] and far.links.duplicate_of is None


def test_other_category_older_than_the_window_and_later_cases_are_ignored(linker) -> None:
    ctx = MemoryContext()
    ctx.add(lamp_case(1, text="幸福路88号门口的路灯不亮了", lat=BASE_LAT, lon=BASE_LON,
                      minutes=-40 * 24 * 60))  # 40 days earlier
    ctx.add(lamp_case(2, text="幸福路88号门口的路灯不亮了", lat=BASE_LAT, lon=BASE_LON,
                      minutes=0, category="road"))
    ctx.add(lamp_case(3, text="幸福路88号门口的路灯不亮了", lat=BASE_LAT, lon=BASE_LON,
                      minutes=500))  # later than the new case (reprocessing)
    new = lamp_case(4, text="幸福路88号门口的路灯不亮了", lat=BASE_LAT, lon=BASE_LON,
                    minutes=100)
    linker.enrich(new, ctx)
    assert new.links.related_cases == []


def test_same_community_counts_as_the_same_place(linker) -> None:
    ctx = MemoryContext()
    ctx.add(lamp_case(1, text="光明小区北门的路灯坏了", lat=None, lon=None, minutes=0,
                      community="光明社区"))
    new = lamp_case(2, text="光明小区北门路灯坏了好几天", lat=None, lon=None, minutes=30,
                    community="光明社区")
    linker.enrich(new, ctx)
    assert new.links.related_cases[0].reason == "same community 光明社区"


def test_same_reporter_same_matter_is_a_repeat_complaint(linker) -> None:
    ctx = MemoryContext()
    ctx.add(lamp_case(1, text="东风路口的路灯坏了一周了", lat=BASE_LAT, lon=BASE_LON,
                      minutes=0, phone="13812345678"))
    lat, lon = offset(BASE_LAT, BASE_LON, 2000, 0)  # reported from elsewhere this time
    new = lamp_case(2, text="我上周反映的东风路口路灯还是坏的，怎么还不修", lat=lat, lon=lon,
                    minutes=3 * 24 * 60, phone="138-1234-5678")
    linker.enrich(new, ctx)
    assert new.links.repeat_complaint
    assert new.links.related_cases[0].relation == "repeat"
    assert any(f.code == "repeat_complaint" for f in new.review.flags)
    other = lamp_case(3, text="请问社保卡怎么补办", lat=lat, lon=lon, minutes=4 * 24 * 60,
                      phone="13812345678", category="policy.social_security")
    linker.enrich(other, ctx)
    assert not other.links.repeat_complaint


def test_reporter_key_hides_the_number() -> None:
    a = make_case("x", phone="+86 138 1234 5678")
    b = make_case("x", phone="13812345678")
    assert reporter_key(a) == reporter_key(b)
    assert "5678" not in (reporter_key(a) or "")
    b.reporter.anonymous = True
    assert reporter_key(b) is None


def test_many_reports_make_it_urgent(linker) -> None:
    ctx = MemoryContext()
    texts = ["解放大道下穿隧道积水很深，车都熄火了", "解放大道隧道积水严重，车辆熄火",
             "解放大道下穿隧道又积水了，车过不去"]
    for i, t in enumerate(texts):
        lat, lon = offset(BASE_LAT, BASE_LON, i * 5, 0)
        c = lamp_case(i, text=t, lat=lat, lon=lon, minutes=i * 10, category="drainage")
        ctx.add(c)
    new = lamp_case(9, text="解放大道下穿隧道积水，车熄火了", lat=BASE_LAT, lon=BASE_LON,
                    minutes=60, category="drainage")
    linker.enrich(new, ctx)
    assert len(new.links.related_cases) == 3
    assert new.urgency.level is Urgency.urgent
    assert any("4 reports of the same problem" in r for r in new.urgency.reasons)


def test_generated_stream_duplicates_are_found_and_lookups_stay_bounded(linker) -> None:
    """5,000 reports over 30 days across a city: planted duplicates are linked, lookups use
    the index (each examines a handful of rows, not the whole history)."""
    rng = random.Random(7)
    ctx = MemoryContext()
    spots = [offset(BASE_LAT, BASE_LON, rng.uniform(-7000, 7000), rng.uniform(-7000, 7000))
             for _ in range(2500)]
    topics = [("streetlight", "{r}路{n}号门口的路灯不亮了，晚上很黑"),
              ("sanitation", "{r}路{n}号的垃圾桶满了没人清运，气味很大"),
              ("drainage", "{r}路{n}号门口积水很深，排水口堵塞"),
              ("noise.construction", "{r}路{n}号旁边工地半夜施工，噪音扰民")]
    roads = ["幸福", "建设", "人民", "长江", "东风", "胜利", "中山", "文化"]
    planted = []
    for i in range(5000):
        cat, tpl = topics[i % len(topics)]
        lat, lon = spots[i % len(spots)]
        text = tpl.format(r=roads[i % len(roads)], n=i % 300)
        case = lamp_case(i, text=text, lat=lat, lon=lon, minutes=i * 8.6, category=cat)
        if i % 500 == 499:  # a second resident reports the previous problem again, nearby
            prev = ctx.rows[f"case-{i - 4}"]
            lat2, lon2 = offset(prev["lat"], prev["lon"], 10, -10)
            case = lamp_case(i, text=prev["description"].replace("很", "非常"), lat=lat2,
                             lon=lon2, minutes=i * 8.6, category=topics[(i - 4) % 4][0])
            planted.append((case, prev["case_id"]))
        linker.enrich(case, ctx)
        ctx.add(case)
    assert planted
    for case, original in planted:
        assert case.links.duplicate_of is not None, case.description
        assert case.links.duplicate_of.case_id == original
    assert ctx.examined / ctx.lookups < 20
