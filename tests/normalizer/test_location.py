"""Addresses in free text and the gazetteer: district / street / community / grid, lat/lon."""

from __future__ import annotations

import pytest

from normalizer.case import LocationSource
from normalizer.location import Locator, extract_address, load_gazetteer
from tests.normalizer.helpers import make_case


@pytest.mark.parametrize("text,address", [
    ("我住在幸福里社区5栋2单元301室，楼上天天吵", "幸福里社区5栋2单元301室"),
    ("北京市朝阳区幸福路88号门口的井盖丢了", "北京市朝阳区幸福路88号"),
    ("上海市浦东新区张江镇科苑路的路灯坏了", "上海市浦东新区张江镇科苑路"),
    ("在光明小区3号楼2单元，电梯坏了", "光明小区3号楼2单元"),
    ("The streetlight outside No. 12 Riverside Road is out", "No. 12 Riverside Road"),
])
def test_address_patterns(text, address) -> None:
    assert extract_address(text) == address


@pytest.mark.parametrize("text", ["超市门口卖的面包过期了", "路灯坏了好几天", "请问社保怎么转移？"])
def test_no_address_where_there_is_none(text) -> None:
    assert extract_address(text) is None


@pytest.fixture(scope="module")
def locator() -> Locator:
    return Locator(load_gazetteer())


def test_gazetteer_place_in_text_fills_the_location(locator) -> None:
    case = make_case("光明小区3号楼门口的垃圾好几天没人清运")
    locator.enrich(case, None)
    loc = case.location
    assert loc.address == "光明小区3号楼"
    assert (loc.district, loc.street, loc.community, loc.grid) == (
        "南城区", "光明街道", "光明社区", "NC-GM-02")
    assert (loc.lat, loc.lon) == (31.2120, 121.4655)
    assert loc.source is LocationSource.text and loc.confidence == 0.9
    assert case.extra["location_match"] == {"place": "光明小区", "kind": "estate",
                                            "matched_in": "address"}


def test_the_most_specific_place_wins(locator) -> None:
    case = make_case("幸福路旁边的锦绣花园北门积水严重")
    locator.enrich(case, None)
    assert case.location.community == "锦绣社区"  # the estate, not the road


def test_english_and_traditional_place_names(locator) -> None:
    en = make_case("Rubbish bins outside Lakeside Apartments are overflowing")
    locator.enrich(en, None)
    assert en.location.district == "西城区"
    trad = make_case("長江社區門口的人行道破損嚴重")
    locator.enrich(trad, None)
    assert trad.location.community == "长江社区"


def test_structured_location_is_not_overwritten(locator) -> None:
    case = make_case("光明小区的路灯不亮")
    case.location.lat, case.location.lon = 31.3, 121.5
    case.location.source = LocationSource.reporter
    case.location.address = "光明小区"
    locator.enrich(case, None)
    assert (case.location.lat, case.location.lon) == (31.3, 121.5)
    assert case.location.source is LocationSource.reporter
    assert case.location.district == "南城区"  # missing fields are still filled


def test_device_coordinates_snap_to_the_nearest_place(locator) -> None:
    case = make_case("Lamp controller LC-0042 reports lamp_failure")
    case.location.lat, case.location.lon = 31.2122, 121.4657  # ~30 m from 光明小区
    case.location.source = LocationSource.device_registry
    locator.enrich(case, None)
    assert case.location.community == "光明社区" and case.location.grid == "NC-GM-02"
    assert case.location.source is LocationSource.device_registry
    assert case.extra["location_match"]["matched_in"] == "coordinates"


def test_unknown_address_is_kept_with_low_confidence(locator) -> None:
    case = make_case("我家在胜利路300号，门口路灯不亮")
    locator.enrich(case, None)
    assert case.location.address == "胜利路300号"
    assert case.location.source is LocationSource.text and case.location.confidence == 0.3
    assert case.location.lat is None
