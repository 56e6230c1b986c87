"""The GeoReport v2 facade: a platform that speaks Open311 can post to the hub."""

from __future__ import annotations

from tests.server.conftest import API_KEY

FORM = {"api_key": API_KEY, "service_code": "streetlight", "lat": "31.23", "long": "121.47",
        "description": "幸福路12号路灯不亮", "first_name": "小明", "last_name": "王",
        "email": "wang@example.com"}


def test_services_come_from_the_taxonomy(client) -> None:
    services = client.get("/open311/v2/services.json").json()
    codes = {s["service_code"] for s in services}
    assert "streetlight" in codes and "noise.construction" in codes
    lamp = next(s for s in services if s["service_code"] == "streetlight")
    assert lamp["service_name"] == "路灯故障" and lamp["metadata"] is False
    assert client.get("/open311/v2/services/streetlight.json").json()["attributes"] == []
    assert client.get("/open311/v2/services/nope.json").status_code == 404


def test_post_request_creates_a_case_once(client, server_hub) -> None:
    r = client.post("/open311/v2/requests.json", data=FORM)
    assert r.status_code == 200, r.text
    sr = r.json()[0]["service_request_id"]
    assert sr.startswith("FB-")
    again = client.post("/open311/v2/requests.json", data=FORM)
    assert again.json()[0]["service_request_id"] == sr
    assert server_hub.store.query("SELECT COUNT(*) AS n FROM cases")[0]["n"] == 1
    case = server_hub.store.find_case(sr)
    assert case.location.lat == 31.23 and case.reporter.email == "wang@example.com"
    status = client.get(f"/open311/v2/requests/{sr}.json").json()[0]
    assert status["status"] == "open" and status["service_request_id"] == sr


def test_errors_use_the_georeport_format(client, server_hub) -> None:
    r = client.post("/open311/v2/requests.json", data={**FORM, "api_key": "wrong"})
    assert r.status_code == 403
    assert r.json() == [{"code": 403, "description": "api_key missing or invalid"}]
    r = client.post("/open311/v2/requests.json", data={k: v for k, v in FORM.items()
                                                       if k != "api_key"})
    assert r.status_code == 403
    r = client.post("/open311/v2/requests.json", data={**FORM, "service_code": "nope"})
    assert r.status_code == 404 and r.json()[0]["code"] == 404
    r = client.post("/open311/v2/requests.json",
                    data={k: v for k, v in FORM.items() if k not in ("lat", "long")})
    assert r.status_code == 400 and "address_string" in r.json()[0]["description"]
    r = client.post("/open311/v2/requests.json", data={**FORM, "lat": "north"})
    assert r.status_code == 400
    r = client.post("/open311/v2/requests.json", data={**FORM, "description": "x" * 4001})
    assert r.status_code == 400
    assert server_hub.store.query("SELECT COUNT(*) AS n FROM raw_records")[0]["n"] == 0
    assert client.get("/open311/v2/requests/FB-20990101-000001.json").status_code == 404
