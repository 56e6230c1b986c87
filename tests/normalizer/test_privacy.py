"""Personal data: ID check digits, Luhn, phone numbers, masking in logs, public redaction."""

from __future__ import annotations

import pytest

from normalizer.case import Attachment
from normalizer.privacy import (
    PiiFlagger,
    find_pii,
    id_checksum_ok,
    luhn_ok,
    mask_text,
    redact_case,
    redact_text,
)
from tests.normalizer.helpers import make_case

VALID_ID = "11010519491231002X"  # the GB 11643-1999 example number


@pytest.mark.parametrize("number", [VALID_ID, "110105194912310021"[:17] + "X",
                                    "440524188001010014"])
def test_valid_id_numbers(number) -> None:
    assert id_checksum_ok(number)


@pytest.mark.parametrize("number", ["110105194912310021", "11010519491231002Y",
                                    "123456789012345678", "440524188001010015", "1101051949"])
def test_invalid_id_numbers(number) -> None:
    assert not id_checksum_ok(number)


def test_random_digits_and_order_numbers_are_not_ids() -> None:
    text = "订单号 110105194912310021，快递单 440524188001010015"
    assert [p.kind for p in find_pii(text)] == []
    assert [p.kind for p in find_pii(f"身份证{VALID_ID}")] == ["id_number"]


def test_luhn() -> None:
    assert luhn_ok("4111111111111111") and luhn_ok("6011111111111117")
    assert not luhn_ok("4111111111111112")
    found = find_pii("卡号 4111 1111 1111 1111，另一个 4111 1111 1111 1112")
    assert [(p.kind, p.value) for p in found] == [("bank_card", "4111 1111 1111 1111")]


def test_phones_and_email() -> None:
    found = find_pii("电话13812345678，座机021-62345678，邮箱 wang.li@example.com，"
                     "+86 139 1234 5678")
    assert [p.kind for p in found] == ["mobile", "landline", "email", "mobile"]
    assert find_pii("房间号12345678，价格 2026") == []


def test_mask_text_keeps_enough_to_recognise() -> None:
    masked = mask_text(f"来电13812345678，身份证{VALID_ID}，邮箱wang@example.com")
    assert "138****5678" in masked and "110***********002X" in masked
    assert "w***@example.com" in masked
    assert "13812345678" not in masked and VALID_ID not in masked
    assert mask_text("processed 5000 records in 2.5 s") == "processed 5000 records in 2.5 s"


def test_redact_text_for_a_public_board() -> None:
    assert redact_text(f"联系13812345678，身份证{VALID_ID}") == "联系[电话]，身份证[身份证号]"


def test_redact_case_removes_reporter_and_pii() -> None:
    case = make_case(f"光明小区3号楼2单元301室漏水，联系我13812345678，身份证{VALID_ID}",
                     phone="13812345678")
    case.reporter.name = "王小明"
    case.location.address = "光明小区3号楼2单元301室"
    case.attachments.append(Attachment(sha256="b" * 64, mime="image/jpeg", size=1,
                                       filename="王小明.jpg",
                                       derived_text="手机 13912345678"))
    case.extra["from"] = "王小明 <wang@example.com>"
    public = redact_case(case)
    dump = public.model_dump_json()
    for secret in ("13812345678", VALID_ID, "王小明", "13912345678", "wang@example.com", "301"):
        assert secret not in dump
    assert public.reporter.anonymous and public.location.address == "光明小区"
    assert case.reporter.phone == "13812345678"  # the original is untouched
    as_dict = redact_case(case.model_dump(mode="json"))
    assert isinstance(as_dict, dict) and as_dict["reporter"]["anonymous"]


def test_flagger_keeps_contact_in_reporter_fields_and_flags_ids() -> None:
    case = make_case(f"路灯坏了，联系电话13812345678，邮箱a.b@example.com，身份证{VALID_ID}")
    PiiFlagger().enrich(case, None)
    assert case.reporter.phone == "13812345678"
    assert case.reporter.email == "a.b@example.com"
    assert any(f.code == "pii_in_text" for f in case.review.flags)
    plain = make_case("路灯坏了，电话13812345678")
    PiiFlagger().enrich(plain, None)
    assert not plain.review.needs_review
    anon = make_case("路灯坏了，电话13812345678")
    anon.reporter.anonymous = True
    PiiFlagger().enrich(anon, None)
    assert anon.reporter.phone is None
