"""Text similarity for repeat and duplicate linking: bottom-k MinHash of character bigrams.

A case's :func:`fingerprint` is computed once, stored by the store next to the case (column
``cases.fingerprint``) and compared with :func:`similarity` without reading either text again.
Character bigrams suit Chinese (no spaces) and survive typos and reordering; the sketch keeps the
``K`` smallest 32-bit bigram hashes, so for messages with fewer than ``K`` distinct bigrams the
estimate is the exact Jaccard similarity, and for longer ones an unbiased estimate of it.

The fingerprint format is ``m1:`` followed by up to ``K`` sorted 8-digit hex hashes. The hash is
a fixed multiply-shift of the two code points (never Python's salted ``hash``), so fingerprints
are stable across processes and versions.
"""

from __future__ import annotations

import struct
from functools import lru_cache
from itertools import pairwise

from normalizer.textnorm import normalize

K = 48
PREFIX = "m1:"
_MULT = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1


def _clean(text: str) -> str:
    return "".join(filter(str.isalnum, normalize(text)))


def shingle_hashes(text: str) -> set[int]:
    """32-bit hashes of the character bigrams of the normalized text (letters and digits only)."""
    t = _clean(text)
    if len(t) < 2:
        return {((ord(t) * _MULT) & _MASK64) >> 32} if t else set()
    codes = [ord(c) for c in t]
    return {((((a << 21) | b) * _MULT) & _MASK64) >> 32 for a, b in pairwise(codes)}


@lru_cache(maxsize=2048)
def fingerprint(text: str) -> str:
    """The stored similarity sketch of a text (``m1:`` + up to K sorted hex hashes)."""
    hashes = sorted(shingle_hashes(text))[:K]
    # big-endian 32-bit words in hex: the same text as "".join(f"{h:08x}" ...), in one call
    fp = PREFIX + struct.pack(f">{len(hashes)}I", *hashes).hex()
    _remember(fp, frozenset(hashes))  # linking compares it next: no need to parse it back
    return fp


#: fingerprint text → its hashes, for the fingerprints compared lately (cleared when full)
_SKETCHES: dict[str, frozenset[int]] = {}
_SKETCHES_MAX = 8192


def _remember(fp: str, hashes: frozenset[int]) -> frozenset[int]:
    if len(_SKETCHES) >= _SKETCHES_MAX:
        _SKETCHES.clear()
    _SKETCHES[fp] = hashes
    return hashes


def parse_fingerprint(fp: str) -> frozenset[int]:
    """The hashes in a fingerprint (empty for a foreign or empty one)."""
    hit = _SKETCHES.get(fp)
    if hit is not None:
        return hit
    if not fp or not fp.startswith(PREFIX):
        return frozenset()
    body = fp[len(PREFIX):]
    # what fingerprint() writes, lower-case hex, in one call; anything else (upper case,
    # spaces...) the way it was always read, 8 characters at a time
    if len(body) % 8 == 0 and body.isascii() and body.isalnum() and body.islower():
        try:
            return _remember(fp, frozenset(struct.unpack(f">{len(body) // 8}I",
                                                         bytes.fromhex(body))))
        except ValueError:  # letters past f
            pass
    return _remember(fp, frozenset(int(body[i:i + 8], 16) for i in range(0, len(body) - 7, 8)))


def similarity(fp_a: str, fp_b: str) -> float:
    """Estimated Jaccard similarity (0..1) of the texts two fingerprints were made from."""
    a, b = parse_fingerprint(fp_a), parse_fingerprint(fp_b)
    if not a or not b:
        return 0.0
    every = a | b
    if len(every) <= K:  # the bottom K of the union is all of it: the exact Jaccard index
        return len(a & b) / len(every)
    both = a & b
    if not both:
        return 0.0
    kth = sorted(every)[K - 1]  # the largest hash of the union's bottom K
    return sum(1 for h in both if h <= kth) / K


def text_similarity(a: str, b: str) -> float:
    """Similarity of two texts (fingerprints them first)."""
    return similarity(fingerprint(a), fingerprint(b))
