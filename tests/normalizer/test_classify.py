"""Classification and dispatch on real resident sentences (zh/en, traditional, typos)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from normalizer.case import CaseKind
from normalizer.classify import Classifier, classify_text, is_word_at
from normalizer.taxonomy import TaxonomyError, compile_taxonomy, load_taxonomy
from tests.normalizer.helpers import make_case


@pytest.fixture(scope="module")
def tax():
    return load_taxonomy()


@pytest.fixture(scope="module")
def clf(tax):
    return Classifier(tax)


@pytest.mark.parametrize("text,code", [
    ("幸福路上的路灯已经坏了一个星期了，晚上黑漆漆的", "streetlight"),
    ("隔壁工地天天晚上十一点还在打桩，吵得根本睡不着", "noise.construction"),
    ("每天晚上都有改装车在解放大道上炸街，轰鸣声吓人", "noise.traffic"),
    ("楼上邻居每天半夜跺脚、拖椅子，吵得人神经衰弱", "noise.neighbour"),
    ("楼下的烧烤店营业到凌晨三点，吵闹声让人受不了", "noise.business"),
    ("一下雨小区门口就积水，水深到膝盖，根本出不了门", "drainage"),
    ("东风路口有个井盖不见了，黑洞洞的，太危险了", "road"),
    ("小区垃圾桶已经满了三天没人清运，臭气熏天", "sanitation"),
    ("我们是老旧小区，想加装电梯，请问需要哪些手续？", "elevator_retrofit"),
    ("电梯坏了一个星期了，物业一直不修，老人只能爬楼", "property"),
    ("请问新生儿上户口需要带哪些材料？", "policy.household"),
    ("我在外地交的养老保险怎么转移到本市？", "policy.social_security"),
    ("随迁子女入学需要哪些材料？", "policy.schooling"),
    ("感谢环卫工人师傅，每天早上把街道扫得干干净净", "praise"),
    ("楼顶有住户私自加盖了一层彩钢板房", "illegal_construction"),
])
def test_chinese_messages_get_their_category_and_department(clf, tax, text, code) -> None:
    case = make_case(text)
    clf.enrich(case, None)
    c = case.classification
    assert c.category_code == code
    assert c.department == tax.categories[code].department
    assert c.co_departments == tax.categories[code].co_departments
    assert c.evidence and all(e.terms for e in c.evidence)
    assert 0 < c.confidence <= 1


def test_dispatch_examples_from_the_mechanism(clf) -> None:
    noise = make_case("晚上噪音太大了，吵得睡不着，工地还在施工")
    water = make_case("暴雨后路口积水严重")
    clf.enrich(noise, None)
    clf.enrich(water, None)
    assert noise.classification.department == "生态环境局"
    assert water.classification.department == "水务局"
    assert "住房和城乡建设局（市政设施）" in water.classification.co_departments


def test_traditional_script_and_english_and_typos(clf) -> None:
    for text, code in [("長江路的路燈壞了三盞，晚上根本看不清路", "streetlight"),
                       ("The bar on Riverside Road blasts music until 3am.", "noise.business"),
                       ("拉圾分类点的桶都坏了，拉圾扔得满地都是", "sanitation"),
                       ("路等坏了好几天了没人修", "streetlight")]:
        case = make_case(text)
        clf.enrich(case, None)
        assert case.classification.category_code == code, text


def test_evidence_names_terms_and_where(clf) -> None:
    case = make_case("人民路下水道堵塞，污水冒到路面上", title="下水道堵了")
    clf.enrich(case, None)
    ev = case.classification.evidence
    assert case.classification.category_code == "drainage"
    assert {e.field for e in ev} <= {"title", "description"}
    assert any("下水道" in e.terms for e in ev)
    assert any(e.rule == "regex" for e in ev)


def test_first_raised_issue_leads_a_multi_issue_message(clf) -> None:
    case = make_case("路灯坏了好几天，晚上黑乎乎的；另外门口的垃圾桶也满了，顺便反映一下")
    clf.enrich(case, None)
    assert case.classification.category_code == "streetlight"
    assert [c.code for c in case.classification.candidates][:1] == ["sanitation"]


def test_negative_keyword_cancels_a_category(tax) -> None:
    res = classify_text(tax, "", "老楼加装电梯的补贴怎么申请")
    assert "property" not in res.scores  # 加装电梯 is a negative keyword of property
    assert max(res.scores, key=res.scores.get) == "elevator_retrofit"


def test_single_character_terms_need_jieba_to_agree(tax) -> None:
    # 气 is a gas keyword only as a word of its own: not inside 天气 or 生气
    text = tax.prepare("今天天气很好，我很生气")
    assert not is_word_at(text, text.index("气"))
    gas = tax.prepare("家里没气了，做不了饭")
    assert is_word_at(gas, gas.index("气"))
    assert "utility.gas" not in classify_text(tax, "", "今天天气很好，心情不错").scores
    assert "utility.gas" in classify_text(tax, "", "家里没气了，做不了饭").scores


def test_english_terms_respect_word_boundaries(tax) -> None:
    assert "public_transport" not in classify_text(tax, "", "my business is closed").scores
    assert "public_transport" in classify_text(tax, "", "the bus never came").scores


def test_unmatched_message_goes_to_review(clf) -> None:
    case = make_case("你好，我想问一下你们热线几点下班")
    clf.enrich(case, None)
    assert case.classification.category_code == "other"
    assert case.classification.department.startswith("市民服务热线办公室")
    assert case.review.needs_review
    assert any(f.code == "unclassified" for f in case.review.flags)


def test_ambiguous_message_is_flagged_with_candidates(clf) -> None:
    case = make_case("小区停水又停电，物业也不管")
    clf.enrich(case, None)
    assert case.classification.candidates
    assert case.classification.confidence < 0.45
    flag = next(f for f in case.review.flags if f.code == "ambiguous_category")
    assert case.classification.candidates[0].code in flag.reason


def test_category_from_the_channel_is_kept(clf) -> None:
    case = make_case("路灯坏了")
    case.classification.category_code = "road"
    clf.enrich(case, None)
    assert case.classification.category_code == "road"


def test_iot_fault_type_maps_to_a_category(clf) -> None:
    case = make_case("Lamp controller LC-0042 reports lamp_failure", kind=CaseKind.device_fault)
    case.extra["fault"] = "lamp_failure"
    clf.enrich(case, None)
    assert case.classification.category_code == "streetlight"
    assert case.classification.confidence == 1.0
    assert case.classification.evidence[0].rule == "iot_fault"


def test_attachment_text_counts(clf) -> None:
    from normalizer.case import Attachment

    case = make_case("见附件照片")
    case.attachments.append(Attachment(sha256="a" * 64, mime="image/jpeg", size=10,
                                       filename="p.jpg", derived_text="路灯不亮 灯杆倾斜"))
    clf.enrich(case, None)
    assert case.classification.category_code == "streetlight"
    assert case.classification.evidence[0].field == "attachment:p.jpg"


def test_shipped_taxonomy_covers_the_required_categories(tax) -> None:
    required = {"streetlight", "road", "drainage", "noise.construction", "noise.traffic",
                "noise.neighbour", "noise.business", "sanitation", "greenery", "utility.water",
                "utility.power", "utility.gas", "utility.heating", "property",
                "elevator_retrofit", "parking", "illegal_construction", "food_safety",
                "traffic", "public_transport", "neighbour_dispute", "policy.social_security",
                "policy.household", "policy.schooling", "praise"}
    assert required <= set(tax.categories)
    for cat in tax.categories.values():
        assert cat.label and cat.label_en and cat.department


def test_a_replacement_taxonomy_file_is_used(tmp_path: Path) -> None:
    doc = {"version": "t1", "default_category": "misc", "categories": [
        {"code": "pets", "label": "宠物", "label_en": "Pets", "department": "畜牧兽医站",
         "keywords": ["流浪猫", "流浪狗", "stray cat"], "negative": ["猫粮广告"]},
        {"code": "misc", "label": "其他", "department": "热线办"}]}
    path = tmp_path / "tax.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    tax = load_taxonomy(path)
    case = make_case("小区里流浪猫太多了，晚上叫个不停")
    Classifier(tax).enrich(case, None)
    assert case.classification.category_code == "pets"
    assert case.classification.department == "畜牧兽医站"


@pytest.mark.parametrize("doc,message", [
    ({"categories": [{"code": "a", "label": "A", "department": "D", "regex": ["(unclosed"]}],
      "default_category": "a"}, "regex[0]"),
    ({"categories": [{"code": "a", "label": "A", "department": "D"},
                     {"code": "a", "label": "B", "department": "D"}],
      "default_category": "a"}, "duplicate code"),
    ({"categories": [{"code": "a", "label": "A", "department": "D", "keyword": ["x"]}],
      "default_category": "a"}, "unknown keys"),
    ({"categories": [{"code": "a", "label": "A"}], "default_category": "a"}, "department"),
    ({"categories": [{"code": "a", "label": "A", "department": "D"}],
      "default_category": "zzz"}, "default_category"),
    ({"categories": [{"code": "a", "label": "A", "department": "D"}],
      "default_category": "a", "kinds": {"rant": ["x"]}}, "unknown kinds"),
])
def test_invalid_taxonomy_is_rejected_with_the_entry_named(doc, message) -> None:
    with pytest.raises(TaxonomyError, match=message.replace("[", r"\[").replace("]", r"\]")):
        compile_taxonomy(doc)
