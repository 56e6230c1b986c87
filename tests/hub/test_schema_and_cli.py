"""The published JSON Schema, and the CLI's read-only commands."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema

from tests.conftest import jsonl_lines


def test_every_delivered_sample_case_validates_against_the_published_schema(
        hub_dir: Path, cli) -> None:
    schema_out = cli(hub_dir / "feedback-hub.yaml", "schema")
    assert schema_out.returncode == 0
    schema = json.loads(schema_out.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert cli(hub_dir / "feedback-hub.yaml", "run", "--once").returncode == 0
    validator = jsonschema.Draft202012Validator(schema)
    lines = jsonl_lines(hub_dir / "out" / "cases.jsonl")
    assert lines
    for line in lines:
        errors = list(validator.iter_errors(line["case"]))
        assert not errors, errors[0].message
    broken = dict(lines[0]["case"], kind="rant")
    assert list(validator.iter_errors(broken))


def test_status_cases_and_exit_codes(hub_dir: Path, cli) -> None:
    cfg = hub_dir / "feedback-hub.yaml"
    assert cli(cfg, "run", "--once").returncode == 0
    status = json.loads(cli(cfg, "status", "--json").stdout)
    conn = status["connectors"][0]
    assert conn["name"] == "city-app" and conn["records_total"] == 26
    assert conn["checkpoint"] == {"last_file": "wechat-export-20261124.json"}
    assert status["sinks"][0]["delivered"] == 25 and status["dead_letters_open"] == 2
    listed = json.loads(cli(cfg, "cases", "list", "--kind", "inquiry", "--json").stdout)
    assert len(listed) == 4 and {c["kind"] for c in listed} == {"inquiry"}
    shown = cli(cfg, "cases", "show", listed[0]["reference"])
    assert shown.returncode == 0 and "Timeline" in shown.stdout and "delivered" in shown.stdout
    # PII is masked on screen even though the case keeps it as data
    phone_case = cli(cfg, "cases", "show", "FB-20261124-000001")
    assert "138****5678" in phone_case.stdout and "13812345678" not in phone_case.stdout
    assert cli(cfg, "cases", "show", "FB-20990101-000001").returncode == 4
    assert cli(cfg, "dead-letters", "show", "999").returncode == 4
    assert cli(cfg, "run", "--once", "--connector", "nope").returncode == 2
    help_out = cli(cfg, "--help")
    assert help_out.returncode == 0 and "run" in help_out.stdout


def test_failing_connector_gives_exit_code_3_and_others_still_run(tmp_path: Path, cli) -> None:
    from tests.conftest import write_config

    cfg = write_config(tmp_path, connectors=[
        {"name": "gone", "type": "jsonfile", "path": "missing-folder"},
        {"name": "city-app", "type": "jsonfile", "path": "inbox"}])
    (tmp_path / "inbox" / "a.ndjson").write_text(
        '{"id": 1, "title": "噪音", "content": "夜间施工噪音"}\n', encoding="utf-8")
    res = cli(cfg, "run", "--once", "--json")
    assert res.returncode == 3
    summary = json.loads(res.stdout)
    errors = {s["source"]: s["error"] for s in summary["ingest"]}
    assert "inbox folder not found" in errors["gone"] and errors["city-app"] is None
    assert summary["deliver"]["delivered"] == 1
    status = json.loads(cli(cfg, "status", "--json").stdout)
    gone = next(c for c in status["connectors"] if c["name"] == "gone")
    assert gone["last_success_at"] is None and "inbox folder not found" in gone["last_error"]


def test_case_ids_are_standard_uuid5_and_stable() -> None:
    import uuid

    from normalizer.case import CASE_NAMESPACE, case_id_for

    for source, ref in [("city-app", "id:APP-1"), ("mailbox", "<a@b>#sha"), ("iot", "路灯:7")]:
        expected = str(uuid.uuid5(CASE_NAMESPACE, f"{source}\x1f{ref}"))
        assert case_id_for(source, ref) == expected
    # pinned: changing the namespace would silently duplicate every case on reprocessing
    assert case_id_for("city-app", "id:APP-20261124-0001") == \
        "746b1816-c216-52c4-8344-26a64e008bdd"


def test_case_schema_doc_is_current() -> None:
    from normalizer.schema_doc import DOC, example_case, render

    assert DOC.read_text(encoding="utf-8") == render(example_case()), \
        "docs/case-schema.md is stale: run `python -m normalizer.schema_doc`"


def test_every_schema_field_has_a_meaning() -> None:
    from normalizer.schema_doc import FIELD_DOCS, GROUPS

    missing = [f"{model.__name__}.{name}" for _, model, _ in GROUPS
               for name, field in model.model_fields.items()
               if not (field.description or FIELD_DOCS.get(f"{model.__name__}.{name}"))]
    assert missing == []
