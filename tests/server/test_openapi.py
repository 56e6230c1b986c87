"""The checked-in OpenAPI document (docs/openapi.json) matches the app's."""

from __future__ import annotations

import json

from tests.conftest import REPO


def test_checked_in_openapi_matches_the_app(client) -> None:
    served = client.get("/openapi.json").json()
    checked_in = json.loads((REPO / "docs" / "openapi.json").read_text(encoding="utf-8"))
    assert served == checked_in, (
        "docs/openapi.json is stale: regenerate it with "
        "`.venv/bin/feedback-hub -c samples/feedback-hub.yaml serve --print-openapi "
        "> docs/openapi.json`")
    paths = set(served["paths"])
    assert {"/v1/records", "/v1/cases/{reference}", "/open311/v2/requests.json",
            "/open311/v2/services.json", "/healthz", "/metrics"} <= paths


def test_every_ref_resolves(client) -> None:
    doc = client.get("/openapi.json").json()
    text = json.dumps(doc)
    import re

    for ref in set(re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', text)):
        assert ref in doc["components"]["schemas"], ref
