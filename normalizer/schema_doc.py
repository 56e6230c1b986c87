"""Render docs/case-schema.md from the Case model: ``python -m normalizer.schema_doc``.

The page lists every field of every group with its type and meaning, then an example case.
A test checks the checked-in page matches what this renders, so the docs cannot drift.
"""

from __future__ import annotations

import json
import sys
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from normalizer import case as case_mod
from normalizer.case import SCHEMA_VERSION, Case

DOC = Path(__file__).resolve().parent.parent / "docs" / "case-schema.md"

#: Meanings for fields whose model has no description (kept here to keep the model terse).
FIELD_DOCS: dict[str, str] = {
    "Case.schema_version": "Version of this schema; consumers should check the major part.",
    "Case.origin": "Provenance back to the raw record (see Origin).",
    "Case.kind": "Nature of the matter: complaint 投诉, report 举报, help 求助, inquiry 咨询, "
                 "suggestion 建议, praise 表扬, device_fault 设备故障.",
    "Case.title": "Short subject (at most 500 characters); derived from the text if absent.",
    "Case.description": "The resident's text as received (quoted replies and signatures "
                        "trimmed for mail).",
    "Case.reporter": "Who raised it (see Reporter).",
    "Case.location": "Where it is (see Location).",
    "Case.classification": "Category and responsible departments (see Classification).",
    "Case.urgency": "Urgency with reasons (see UrgencyInfo).",
    "Case.deadlines": "Service-level deadlines (see Deadlines).",
    "Case.attachments": "Files that came with it, with any derived text (see Attachment).",
    "Case.links": "Relations to other cases (see Links).",
    "Case.review": "Why a person should look at it (see Review).",
    "Reporter.name": "Display name as given.",
    "Reporter.phone": "Phone number as given (masked in logs, kept as data).",
    "Reporter.email": "E-mail address (masked in logs, kept as data).",
    "Reporter.anonymous": "The reporter asked not to be identified; no repeat linking by person.",
    "Reporter.preferred_language": "Language to answer in, when known.",
    "Location.address": "Address text as given or found in the text.",
    "Location.lat": "WGS 84 latitude.",
    "Location.lon": "WGS 84 longitude.",
    "Location.district": "区 / district.",
    "Location.street": "街道 / sub-district (street office).",
    "Location.community": "社区 / community (residents' committee).",
    "Location.grid": "网格 / grid cell of grid-based management.",
    "Location.device_id": "Device that reported it (IoT).",
    "Location.asset_id": "Asset (pole, pump...) the device belongs to.",
    "Location.source": "How the location was obtained: reporter, text, device_registry, exif, "
                       "upstream, unknown.",
    "Location.confidence": "Confidence of a location found in text (0..1).",
    "Evidence.rule": "The rule that matched (keyword, regex, fault type...).",
    "Evidence.terms": "Matched terms.",
    "Evidence.field": "Where they matched.",
    "Evidence.weight": "Contribution to the score.",
    "Candidate.code": "Category code.",
    "Candidate.label": "Category label.",
    "Candidate.score": "Score of this candidate.",
    "Classification.category_code": "Taxonomy code, e.g. `streetlight`.",
    "Classification.category_label": "Label in Chinese.",
    "Classification.category_label_en": "Label in English.",
    "Classification.confidence": "0..1; low values set a review flag.",
    "Classification.evidence": "Why (list of Evidence).",
    "Classification.candidates": "Runner-up categories when ambiguous.",
    "UrgencyInfo.level": "normal, urgent or emergency.",
    "UrgencyInfo.reasons": "Why (danger words, vulnerable people, many reports...).",
    "Deadlines.respond_by": "Respond by (default 24 h after receipt; sooner for emergencies).",
    "Deadlines.resolve_by": "Resolve by (3 working days; 7 for major matters).",
    "Attachment.sha256": "Content hash; the blob's name in the blob store.",
    "Attachment.mime": "Type sniffed from the content, not from headers.",
    "Attachment.size": "Bytes.",
    "Attachment.filename": "Sanitised file name.",
    "Attachment.derived_text": "Text from OCR or speech-to-text.",
    "Attachment.confidence": "Confidence of the derived text (0..1).",
    "Attachment.model": "Model used to derive the text (e.g. faster-whisper base).",
    "RelatedCase.case_id": "The other case.",
    "RelatedCase.reference": "Its human reference.",
    "RelatedCase.score": "Similarity 0..1.",
    "RelatedCase.reason": "What matched (distance, community, text similarity...).",
    "Links.related_cases": "Similar earlier cases.",
    "Links.duplicate_of": "The earlier case this one duplicates, if any.",
    "Links.repeat_complaint": "The same reporter raised the same matter again.",
    "Review.needs_review": "A person should look at this case.",
    "Review.flags": "The reasons (list of ReviewFlag).",
    "ReviewFlag.reason": "Human-readable reason.",
    "Origin.occurred_at": "When the matter happened, if said.",
    "Origin.channel": "email, hotline, iot, scan or forward.",
}

GROUPS: list[tuple[str, type[BaseModel], str]] = [
    ("Case (top level: identity and content)", Case, ""),
    ("Origin", case_mod.Origin, "Where the case came from (provenance, NiFi-style)."),
    ("Reporter", case_mod.Reporter, "Held as data for case workers; masked in every log line."),
    ("Location", case_mod.Location, ""),
    ("Classification", case_mod.Classification, "Filled by enrichment (docs/enrichment.md)."),
    ("Evidence", case_mod.Evidence, ""),
    ("Candidate", case_mod.Candidate, ""),
    ("UrgencyInfo", case_mod.UrgencyInfo, ""),
    ("Deadlines", case_mod.Deadlines, ""),
    ("Attachment", case_mod.Attachment, ""),
    ("Links", case_mod.Links, ""),
    ("RelatedCase", case_mod.RelatedCase, ""),
    ("Review", case_mod.Review, ""),
    ("ReviewFlag", case_mod.ReviewFlag, ""),
]


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        names = [_type_name(a) for a in args if a is not type(None)]
        return " \\| ".join(names) + (" \\| null" if type(None) in args else "")
    if origin is list:
        return f"list[{_type_name(args[0])}]"
    if origin is dict:
        return "object"
    if str(origin) == "typing.Literal":
        return "`" + "`, `".join(str(a) for a in args) + "`"
    if getattr(tp, "__metadata__", None) is not None:
        return _type_name(typing.get_args(tp)[0])
    name = getattr(tp, "__name__", str(tp))
    return {"AwareDatetime": "datetime (with zone)", "str": "string", "int": "integer",
            "float": "number", "bool": "boolean"}.get(name, name)


def render(example: dict[str, Any] | None = None) -> str:
    """Render the page."""
    out = [
        "# The case schema",
        "",
        f"Schema version **{SCHEMA_VERSION}**. Every channel is normalized into this one "
        "schema; it is what sinks receive (the webhook body, the jsonl `case` field, the "
        "Open311 fields are mapped from it). The machine-readable JSON Schema (draft "
        "2020-12) is printed by `feedback-hub schema`. This page is generated by "
        "`python -m normalizer.schema_doc` from the model, so it always matches it.",
        "",
        "Identity: `case_id` is the UUIDv5 of source + source_ref, so reprocessing a raw "
        "record yields the same case; `reference` (`FB-YYYYMMDD-NNNNNN`, the local date of "
        "receipt and a per-day sequence) is allocated once by the store and never reused.",
        "",
    ]
    for title, model, intro in GROUPS:
        out += [f"## {title}", ""]
        if intro:
            out += [intro, ""]
        out += ["| field | type | meaning |", "|---|---|---|"]
        for name, field in model.model_fields.items():
            meaning = field.description or FIELD_DOCS.get(f"{model.__name__}.{name}", "")
            out.append(f"| `{name}` | {_type_name(field.annotation)} | {meaning} |")
        out.append("")
    if example is not None:
        out += ["## Example case", "",
                "A sample upstream record after `make demo` (reporter data as stored; logs "
                "and screens mask it):", "", "```json",
                json.dumps(example, ensure_ascii=False, indent=2), "```", ""]
    return "\n".join(out)


def example_case() -> dict[str, Any]:
    """The example: the first demo record mapped and validated (no store needed)."""
    from datetime import datetime, timezone

    from connectors.base import RawRecord
    from normalizer.mappers.forward import ForwardMapper

    line = (Path(__file__).resolve().parent.parent / "samples" / "forward" /
            "city-app-export-20261124.ndjson").read_text(encoding="utf-8").splitlines()[0]
    raw = RawRecord(source="city-app", channel="forward", source_ref="id:APP-20261124-0001",
                    received_at=datetime(2026, 11, 24, 11, 42, 5, tzinfo=timezone.utc),
                    payload={"record": json.loads(line)})

    class _Ctx:
        timezone = "Asia/Shanghai"

    case = ForwardMapper().map(raw, _Ctx()).case  # type: ignore[arg-type]
    assert case is not None
    case.reference = "FB-20261124-000001"
    case.origin.raw_record_id = 1
    return case.model_dump(mode="json")


def write_doc(path: Path, text: str, argv: list[str]) -> None:
    """Write a generated page, or print it when the only argument is ``-``."""
    if argv == ["-"]:
        sys.stdout.write(text)
    else:
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")


def main() -> None:
    """Write docs/case-schema.md (or print it with ``-``)."""
    write_doc(DOC, render(example_case()), sys.argv[1:])


if __name__ == "__main__":
    main()
