"""Fingerprints and similarity give exactly what the straightforward definitions give."""

from __future__ import annotations

import random

import pytest

from normalizer import similarity as sim


def _reference_fingerprint(text: str) -> str:
    hashes = sorted(sim.shingle_hashes(text))[:sim.K]
    return sim.PREFIX + "".join(f"{h:08x}" for h in hashes)


def _reference_parse(fp: str) -> frozenset[int]:
    if not fp or not fp.startswith(sim.PREFIX):
        return frozenset()
    body = fp[len(sim.PREFIX):]
    return frozenset(int(body[i:i + 8], 16) for i in range(0, len(body) - 7, 8))


def _reference_similarity(fa: str, fb: str) -> float:
    a, b = _reference_parse(fa), _reference_parse(fb)
    if not a or not b:
        return 0.0
    union = sorted(a | b)[:sim.K]
    return sum(1 for h in union if h in a and h in b) / len(union)


def _texts() -> list[str]:
    rng = random.Random(11)
    out = ["", "a", "路", "路灯", "Ｆｕｌｌ ｗｉｄｔｈ 臺灣", "x" * 300]
    for _ in range(1500):
        out.append("".join(chr(rng.choice([rng.randint(0x4E00, 0x4E60), rng.randint(48, 122),
                                           0x10400 + rng.randint(0, 40)]))
                           for _ in range(rng.randint(0, 120))))
    return out


def test_fingerprints_and_similarities_match_the_definitions() -> None:
    rng = random.Random(12)
    texts = _texts()
    fps = [sim.fingerprint(t) for t in texts]
    assert fps == [_reference_fingerprint(t) for t in texts]
    fps += ["", "x1:abcdef01", "m1:", "m1:ABCDEF01abcdef01", "m1:12345678 "]
    for _ in range(20000):
        a, b = rng.choice(fps), rng.choice(fps)
        assert sim.similarity(a, b) == _reference_similarity(a, b)


@pytest.mark.parametrize("fp", ["m1:" + "0" * 16, "m1:1234abcd1234abcd", "m1:ABCDEF01",
                                "m1:abc", "m1:12345678 ", "m1:٣٣٣٣٣٣٣٣", "m1:1234abcg"])
def test_stored_fingerprints_parse_as_they_always_did(fp: str) -> None:
    sim._SKETCHES.clear()
    try:
        want: object = _reference_parse(fp)
    except ValueError:
        want = ValueError
    try:
        got: object = sim.parse_fingerprint(fp)
    except ValueError:
        got = ValueError
    assert got == want
