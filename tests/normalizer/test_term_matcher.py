"""TermMatcher: the Aho-Corasick scan finds exactly what the regex alternation finds."""

from __future__ import annotations

import random

from normalizer.location import load_gazetteer
from normalizer.taxonomy import TermMatcher, load_taxonomy


def _by_regex(m: TermMatcher, text: str) -> list[tuple[str, int, int]]:
    assert m.pattern is not None
    return [(x.group(0), x.start(), x.end()) for x in m.pattern.finditer(text)]


#: Latin letters would add the English word lookup's hits to find(): keep them out
_NO_LATIN = {c: "。" for c in range(ord("a"), ord("z") + 1)}


def test_overlapping_terms_leftmost_then_longest() -> None:
    m = TermMatcher(["路灯", "灯不亮", "不亮", "路灯不亮了", "😀灯"])
    text = "😀灯路灯不亮𠀀路灯不亮了灯不亮"
    assert m.find(text) == _by_regex(m, text) == [
        ("😀灯", 0, 2), ("路灯", 2, 4), ("不亮", 4, 6), ("路灯不亮了", 7, 12), ("灯不亮", 12, 15)]


def test_same_hits_as_the_alternation_on_random_text() -> None:
    rng = random.Random(7)
    tax = load_taxonomy()
    for m in (tax.terms, tax.cue_terms, load_gazetteer().matcher):
        terms = m._cjk
        alphabet = [*sorted({ch for t in terms for ch in t}), "的", "。", "𠀀", " ", "1"]
        for _ in range(400):
            parts = [rng.choice(terms) if rng.random() < 0.4 else
                     "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4)))
                     for _ in range(rng.randint(0, 12))]
            text = "".join(parts).translate(_NO_LATIN)
            assert m.find(text) == _by_regex(m, text), text
