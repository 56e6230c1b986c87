"""P3 enrichment: records/s of the enricher chain alone; linking latency with 1,000,000 cases.

1. Chain throughput: 20,000 generated resident messages (varied categories, addresses, phone
   numbers, zh/en, simplified/traditional) run through the default chain
   (``build_enrichers({})``) with a context that has no earlier cases, on one core. The limit
   it is compared with, measured in the same run, is the cheapest useful step every record
   needs anyway: normalizing its text (NFKC, traditional → simplified, lower case).
2. Linking latency: a SQLite store holding ``LINK_CASES`` (default 1,000,000) earlier cases
   spread over a 15 km city and 30 days, built once under bench/.work/enrichment/ and reused;
   then 2,000 new cases are linked through the store's index-backed ``nearby_cases``. Reported:
   p50 and p95 of the linking enricher per case (lookup + similarity), and records/s of the
   whole chain on that store.

Run: ``.venv/bin/python -m bench.bench_enrichment [N] [LINK_CASES]``.
"""

from __future__ import annotations

import json
import random
import sqlite3
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

from bench.common import WORK, peak_rss_mib, write_results
from normalizer.case import Case, Channel, Origin, Reporter
from normalizer.enrichment_config import build_enrichers
from normalizer.linking import Linker, reporter_key
from normalizer.similarity import fingerprint
from normalizer.textnorm import normalize

N = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
LINK_CASES = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
T0 = datetime(2026, 11, 24, 1, 0, tzinfo=timezone.utc)

TEMPLATES = [
    ("streetlight", "{addr}门口的路灯已经{n}个晚上不亮了，晚上走路很危险，请尽快维修。"),
    ("road", "{addr}附近路面有个大坑，已经{n}天了，电动车经过差点摔倒。"),
    ("drainage", "暴雨后{addr}积水很深，排水口堵塞，车辆无法通行，已经{n}个小时了。"),
    ("noise.construction", "{addr}附近工地晚上{n}点以后还在施工，噪音扰民，严重影响休息。"),
    ("noise.neighbour", "住在{addr}，楼上邻居每天半夜跺脚、拖椅子，沟通{n}次都没用。"),
    ("sanitation", "{addr}的垃圾桶已经{n}天没人清运了，气味很大，苍蝇很多。"),
    ("property", "{addr}物业收费不合理，电梯坏了{n}周也不修，业主意见很大。"),
    ("utility.water", "{addr}从早上开始停水，已经{n}个小时了，也没有任何通知。"),
    ("parking", "{addr}门口天天有车乱停，把消防通道都堵了，已经反映{n}次。"),
    ("policy.social_security", "请问外地养老保险怎么转移到本市？需要带哪些材料？我住在{addr}。"),
    ("praise", "感谢{addr}社区的工作人员，上周反映的问题{n}天就解决了，给你们点赞！"),
    ("streetlight", "The streetlight at {addr} has been out for {n} nights, it is pitch dark."),
    ("noise.business", "The bar near {addr} blasts music until {n}am every night."),
    ("utility.heating", "暖氣不熱，室溫只有{n}度，{addr}家裡老人凍得受不了。"),
    ("utility.gas", "{addr}楼道里有很浓的煤气味，怀疑燃气泄漏，请马上派人来！电话13812345678"),
]
ROADS = ["幸福", "和平", "建设", "解放", "人民", "长江", "黄河", "东风", "朝阳", "光明", "新华",
         "胜利", "中山", "文化", "青年", "友谊", "团结", "民主", "湖滨", "滨河", "红旗", "丰收"]
SUFFIX = ["路", "街", "大道"]


def addresses(rng: random.Random, n: int) -> list[tuple[str, float, float]]:
    """n distinct street addresses spread over a 15 km x 15 km city."""
    out, seen = [], set()
    while len(out) < n:
        name = f"{rng.choice(ROADS)}{rng.choice(SUFFIX)}{rng.randint(1, 400)}号"
        if name not in seen:
            seen.add(name)
            out.append((name, 31.15 + rng.random() * 0.135, 121.40 + rng.random() * 0.16))
    return out


def cases(n: int, seed: int, start: datetime, span: timedelta,
          with_location: bool = False) -> list[Case]:
    """Generated cases (distinct texts), received evenly over ``span`` from ``start``."""
    rng = random.Random(seed)
    addrs = addresses(rng, 3000)
    phones = [f"139{rng.randint(0, 99_999_999):08d}" for _ in range(500)]
    out = []
    for i in range(n):
        _, body = TEMPLATES[rng.randrange(len(TEMPLATES))]
        addr, lat, lon = rng.choice(addrs)
        text = body.format(addr=addr, n=rng.randint(2, 12))
        case = Case(case_id=f"bench-{seed}-{i}", title=text[:20], description=text,
                    origin=Origin(channel=Channel.forward, source="bench",
                                  source_ref=f"{seed}:{i}",
                                  received_at=start + span * (i / max(n, 1))),
                    reporter=Reporter(phone=rng.choice(phones)))
        if with_location:
            case.location.address, case.location.lat, case.location.lon = addr, lat, lon
        out.append(case)
    return out


class _NoHistory:
    """A context with no earlier cases (the chain alone, no store)."""

    timezone = "Asia/Shanghai"
    now = T0

    def nearby_cases(self, **_: object) -> list[dict[str, object]]:
        return []


def chain_rate(chain: list, batch: list[Case], ctx: object) -> float:
    start = time.perf_counter()
    for case in batch:
        for e in chain:
            e.enrich(case, ctx)
    return len(batch) / (time.perf_counter() - start)


def build_store(path: Path, n: int) -> None:
    """n earlier cases in the store's own schema, with cells and fingerprints (built once)."""
    from outbox.blobs import BlobStore
    from outbox.store import open_store
    from outbox.store.sql import cell_of

    store = open_store(f"sqlite:///{path}", BlobStore(path.parent / "blobs"))
    store.close()
    chain = build_enrichers({"linking": {"enabled": False}})
    ctx = _NoHistory()
    conn = sqlite3.connect(str(path))
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    span = timedelta(days=30)
    start = T0 - span
    chunk = 50_000
    made = 0
    # 2,000 distinct enriched messages reused with fresh ids, places and times: enriching a
    # million texts would time the setup, not the lookup
    proto = cases(2000, 7, start, span, with_location=True)
    for c in proto:
        for e in chain:
            e.enrich(c, ctx)
    rng = random.Random(11)
    addrs = addresses(rng, 20_000)
    # 200,000 residents: a few reports each in 30 days, like a city's frequent callers, not
    # thousands per phone number (which would make every reporter lookup read 50 rows)
    residents = [SimpleNamespace(reporter=SimpleNamespace(phone=f"137{k:08d}", email=None,
                                                          anonymous=False))
                 for k in range(200_000)]
    while made < n:
        rows = []
        for i in range(made, min(n, made + chunk)):
            c = proto[i % len(proto)]
            addr, lat, lon = addrs[i % len(addrs)]
            at = (start + span * (i / n)).isoformat()
            body = json.dumps({"title": c.title, "description": c.description},
                              ensure_ascii=False)
            rows.append((f"old-{i}", f"FB-20261020-{i:07d}", "bench", f"old:{i}", "forward",
                         c.kind.value, c.classification.category_code,
                         c.classification.department, c.urgency.level.value, at, at, at, lat,
                         lon, cell_of(lat, lon), c.location.district, None,
                         c.location.community, addr,
                         reporter_key(residents[(i * 7919) % len(residents)]),  # type: ignore[arg-type]
                         fingerprint(f"{c.title}\n{c.description}"), 0, None, body))
        conn.executemany(
            "INSERT INTO cases (case_id, reference, source, source_ref, channel, kind, "
            "category_code, department, urgency, received_at, created_at, updated_at, lat, lon,"
            " cell, district, street, community, address, reporter_key, fingerprint, "
            "needs_review, raw_record_id, body) VALUES "
            "(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
        conn.commit()
        made += len(rows)
    conn.execute("ANALYZE")
    conn.commit()
    conn.close()


def link_latency(n_existing: int) -> tuple[list[float], float, int]:
    from outbox.blobs import BlobStore
    from outbox.store import open_store

    work = WORK / "enrichment"
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"linking-v2-{n_existing}.db"
    if not path.exists():
        t = time.perf_counter()
        build_store(path, n_existing)
        print(f"built {n_existing} cases in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    store = open_store(f"sqlite:///{path}", BlobStore(work / "blobs"), migrate=False)
    chain = build_enrichers({})
    linker = next(e for e in chain if isinstance(e, Linker))
    batch = cases(2000, 99, T0, timedelta(hours=2), with_location=True)
    lat_us: list[float] = []
    linked = 0
    start = time.perf_counter()
    with store.process_tx(T0) as tx:
        for case in batch:
            for e in chain:
                if e is linker:
                    t = time.perf_counter()
                    e.enrich(case, tx)
                    lat_us.append((time.perf_counter() - t) * 1e6)
                else:
                    e.enrich(case, tx)
            linked += bool(case.links.related_cases)
    rate = len(batch) / (time.perf_counter() - start)
    store.close()
    return lat_us, rate, linked


def main() -> None:
    chain = build_enrichers({})
    names = [e.name for e in chain]
    warm = cases(500, 1, T0, timedelta(hours=1))
    chain_rate(chain, warm, _NoHistory())
    batch = cases(N, 2, T0, timedelta(days=1))
    texts = [f"{c.title}\n{c.description}" for c in batch]
    t = time.perf_counter()
    for s in texts:
        normalize.__wrapped__(s)
    norm_rate = len(texts) / (time.perf_counter() - t)
    rate = chain_rate(chain, batch, _NoHistory())
    review = sum(c.review.needs_review for c in batch) / len(batch)
    rows = [
        {"measure": f"enricher chain [{', '.join(names)}], {N} generated messages, no store, "
                    f"1 core", "value": rate, "unit": "records/s",
         "limit": f"text normalization alone: {norm_rate:.0f} records/s",
         "ratio": rate / norm_rate, "goal": "well under 100 µs per record (>= 10,000/s)"},
        {"measure": "mean cost per record of the chain", "value": 1e6 / rate, "unit": "µs"},
        {"measure": "share of generated cases flagged for review", "value": review * 100,
         "unit": "%"},
    ]
    if LINK_CASES > 0:
        lat, link_rate, linked = link_latency(LINK_CASES)
        lat.sort()
        rows += [
            {"measure": f"linking latency per case, {LINK_CASES:,} earlier cases in SQLite, "
                        f"p50", "value": statistics.median(lat), "unit": "µs"},
            {"measure": "linking latency per case, p95",
             "value": lat[int(len(lat) * 0.95)], "unit": "µs"},
            {"measure": f"whole chain incl. linking on the {LINK_CASES:,}-case store "
                        f"({linked} of 2,000 linked)", "value": link_rate, "unit": "records/s"},
        ]
    rows.append({"measure": "peak RSS of the benchmark process", "value": peak_rss_mib(),
                 "unit": "MiB"})
    write_results("P3-enrichment", "enrichment throughput and linking latency", rows,
                  notes="P3-enrichment: the chain alone, no commit; the process stage with "
                        "commits is P3. Linking reads candidates through the store's indexes "
                        "(category + grid cell / community / address / reporter, received_at).")


if __name__ == "__main__":
    main()
