"""Text normalization for matching: traditional → simplified, full-width → half-width, lower case.

Every enricher matches on normalized text, and several of them look at the same title and
description, so results are cached (a bounded LRU keyed by the string itself).
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

import zhconv
import zhconv.zhconv as _zc

_zc.loaddict()
#: Characters written only in traditional script (zhconv's own table), so the slower
#: conversion runs only on text that needs it.
_TRAD_SET: frozenset[str] = frozenset(
    k for k, v in _zc.zhcdicts["zh2Hans"].items() if len(k) == 1 and k != v)


def has_traditional(text: str) -> bool:
    """Tell whether text contains characters written only in traditional script."""
    return not _TRAD_SET.isdisjoint(text)


@lru_cache(maxsize=4096)
def normalize(text: str) -> str:
    """Simplified, NFKC (full-width letters and digits to ASCII), lower case."""
    if not text:
        return ""
    if not unicodedata.is_normalized("NFKC", text):
        text = unicodedata.normalize("NFKC", text)
    if has_traditional(text):
        text = zhconv.convert(text, "zh-hans")
    return text.lower()


def message_text(title: str, description: str) -> str:
    """The text of a message as every enricher reads it: title and description, once.

    Mappers often make the title from the description's first words; then the description
    alone is the message, so its words are not counted twice and all enrichers share one
    cached normalization of the same string.
    """
    if not title or description.startswith(title):
        return description
    if not description or title.startswith(description):
        return title
    return f"{title}\n{description}"
