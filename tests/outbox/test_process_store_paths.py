"""Store paths the process stage runs per record (real SQLite file): pending raw records read
back exactly, the proximity lookup's grid cells, the savepoint's buffer cut."""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta, timezone

import pytest

from connectors.base import BlobRef, RawRecord
from normalizer.case import Case, Channel, Location, Origin, case_id_for
from outbox.store.sql import CELL_DEG, SqlStore, box_cells, cell_of, neighbour_cells

T0 = datetime(2026, 11, 24, 10, 0, tzinfo=timezone.utc)


def test_pending_raw_gives_back_what_was_ingested(store: SqlStore) -> None:
    payloads = [
        {"record": {"title": "路灯不亮", "n": 3, "x": -0.0, "f": 0.1 + 0.2, "e": 1e16}},
        {"big": 123456789012345678901234567890, "neg": -9223372036854775809,  # past 64 bits
         "u64": 18446744073709551615, "digits": "1234567890123456789012"},
        {"nested": [{"a": None, "b": [True, False]}], "text": "引号\"和\\反斜杠\n"},
    ]
    sha = "ab" * 32
    recs = [RawRecord(source="src", channel=Channel.forward, source_ref=f"r{i}",
                      received_at=T0 + timedelta(microseconds=i), payload=p)
            for i, p in enumerate(payloads)]
    recs.append(RawRecord(source="src", channel=Channel.email, source_ref="m1", received_at=T0,
                          payload={"subject": "x"}, raw_blob=sha,
                          attachments=[BlobRef(sha256=sha, mime="image/jpeg", size=3,
                                               filename="a.jpg")]))
    store.commit_ingest("src", recs)
    back = [s.record for s in store.pending_raw(10)]
    assert [r.model_dump() for r in back] == [r.model_dump() for r in recs]
    assert type(back[1].payload["big"]) is int and type(back[1].payload["neg"]) is int


def test_box_cells_are_the_cells_a_point_in_the_box_can_fall_in() -> None:
    rng = random.Random(5)
    for _ in range(5000):
        lat, lon = rng.uniform(-60, 60), rng.uniform(-179, 179)
        radius = rng.choice([10.0, 50.0, 55.0])
        dlat = radius / 111_320.0
        dlon = radius / (111_320.0 * max(math.cos(math.radians(lat)), 0.01))
        box = (lat - dlat, lat + dlat, lon - dlon, lon + dlon)
        cells = box_cells(*box)
        assert set(cells) <= set(neighbour_cells(lat, lon, radius))
        if abs(lat) < 45 and radius <= 50:
            assert 1 <= len(cells) <= 6  # 9 for the square
        for p_lat in (box[0], box[1], lat, rng.uniform(box[0], box[1])):
            for p_lon in (box[2], box[3], lon, rng.uniform(box[2], box[3])):
                assert cell_of(p_lat, p_lon) in cells
    assert CELL_DEG == 0.001


def _case(ref: str, lat: float, lon: float, at: datetime) -> Case:
    return Case(case_id=case_id_for("src", ref), title=ref,
                origin=Origin(channel=Channel.forward, source="src", source_ref=ref,
                              received_at=at),
                location=Location(lat=lat, lon=lon, address=f"addr-{ref}"))


def test_nearby_finds_what_the_full_square_of_cells_finds(store: SqlStore) -> None:
    rng = random.Random(9)
    with store.process_tx() as tx:
        for i in range(400):  # a 300 m x 300 m block: many cells and cell edges
            tx.save_case(_case(f"c{i}", 31.2 + rng.uniform(0, 0.0027),
                               121.4 + rng.uniform(0, 0.0032), T0 + timedelta(seconds=i)),
                         None, [])
    with store.process_tx() as tx:
        for _ in range(200):
            lat, lon = 31.2 + rng.uniform(0, 0.0027), 121.4 + rng.uniform(0, 0.0032)
            got = tx.nearby_cases(category_code=None, since=T0, until=T0 + timedelta(hours=1),
                                  lat=lat, lon=lon, radius_m=50, limit=500)
            dlat = 50 / 111_320.0
            dlon = 50 / (111_320.0 * math.cos(math.radians(lat)))
            cells = neighbour_cells(lat, lon, 50)
            want = store.query(
                f"SELECT case_id FROM cases WHERE category_code IS NULL AND cell IN "
                f"({','.join('?' * len(cells))}) AND lat BETWEEN ? AND ? AND lon BETWEEN ? "
                f"AND ? ORDER BY received_at DESC",
                [*cells, lat - dlat, lat + dlat, lon - dlon, lon + dlon])
            assert [c["case_id"] for c in got] == [r["case_id"] for r in want]


def test_failed_savepoint_cuts_the_write_behind_buffers(store: SqlStore) -> None:
    with store.process_tx() as tx:
        tx.save_case(_case("a", 31.2, 121.4, T0), None, ["s1"])
        tx.mark_raw(1, "processed", None, case_id_for("src", "a"))
        with pytest.raises(ValueError), tx.savepoint():
            tx.save_case(_case("b", 31.2, 121.4, T0), None, ["s1", "s2"])
            tx.mark_raw(2, "processed", None, case_id_for("src", "b"))
            assert (len(tx._events), len(tx._outbox), len(tx._raw)) == (2, 3, 2)
            raise ValueError("enricher bug after the writes were buffered")
        assert (len(tx._events), len(tx._outbox), len(tx._raw)) == (1, 1, 1)
        with tx.savepoint():  # the next record goes on normally
            tx.save_case(_case("c", 31.2, 121.4, T0), None, ["s1"])
    assert [r["case_id"] for r in store.query("SELECT case_id FROM cases ORDER BY reference")] \
        == [case_id_for("src", "a"), case_id_for("src", "c")]
    assert store.query("SELECT COUNT(*) AS n FROM outbox")[0]["n"] == 2
    assert store.query("SELECT COUNT(*) AS n FROM case_events")[0]["n"] == 2


def test_pending_payloads_read_back_as_json_reads_them(store: SqlStore) -> None:
    """Payload text is parsed with orjson unless it may hold what orjson reads differently
    or refuses: every one of these must come back exactly as json.loads gives it."""
    import json

    texts = ['{"n":123456789012345678901,"m":-9223372036854775809}',  # past 64 bits
             '{"n":1234567890123456789}',  # 19 digits, fits: either parser
             '{"x":NaN,"y":Infinity,"z":-Infinity}',  # json's extensions (older rows)
             '{"s":"\\ud800 lone surrogate"}',
             '{"a":1,"a":2,"f":0.30000000000000004,"z":-0.0,"e":1e16,"big":1e308}',
             '{"t":"引号\\"和\\\\反斜杠\\n","u":"\\u00e9","list":[null,true,1.5]}']
    with store._write_tx() as cur:
        for i, text in enumerate(texts):
            store._exec(cur, "INSERT INTO raw_records (source, channel, source_ref, "
                             "received_at, ingested_at, payload, attachments) VALUES "
                             "('src', 'forward', ?, ?, ?, ?, '[]')",
                        (f"p{i}", "2026-11-24T10:00:00.000000Z",
                         "2026-11-24T10:00:00.000000Z", text))
    back = [s.record.payload for s in store.pending_raw(10)]
    want = [json.loads(t) for t in texts]
    assert json.dumps(back) == json.dumps(want)  # NaN != NaN: compare the spelling
    assert repr(back) == repr(want)
    assert type(back[0]["n"]) is int and back[0]["n"] == 123456789012345678901


def test_long_digit_run_is_nineteen_ascii_digits_in_a_row() -> None:
    import re

    from outbox.store.sql import _long_digit_run

    rx = re.compile(r"[0-9]{19}")
    rng = random.Random(3)
    alphabet = "0123456789" * 6 + "路灯１２３٣.-e\":,\ud800 x"
    for _ in range(20000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        assert _long_digit_run(text) == bool(rx.search(text)), text
    assert _long_digit_run('{"n":1234567890123456789}')
    assert not _long_digit_run('{"lat":31.239473779638367,"phone":"13873836349"}')
    assert not _long_digit_run("１" * 30)  # full-width digits are not JSON digits
