"""The taxonomy file: categories, departments, keywords, kind and urgency cues.

Loaded once per file (cached by path and modification time) and compiled so that matching a
message costs one pass of one alternation over its text whatever the number of keywords:

* every keyword, weak keyword and negative keyword of every category goes into ONE regular
  expression (longest terms first), mapped back to ``(category, weight, rule)`` by a dict;
* every category regex is run only when the text holds a character a match must start with
  (worked out from the pattern), so most regexes cost a set lookup;
* spelling variants and common typos (``aliases``: 拉圾 → 垃圾, 路等 → 路灯) are rewritten by one
  more alternation before matching.

The format is documented in docs/enrichment.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import ahocorasick_rs
import yaml

from normalizer.textnorm import has_traditional, normalize

DEFAULT_TAXONOMY = Path(__file__).resolve().parent / "data" / "taxonomy.yaml"

WEIGHT_KEYWORD = 2.0
WEIGHT_WEAK = 1.0
WEIGHT_REGEX = 3.0
#: Texts whose preparation and cue scan are kept: more than a process batch (the stage
#: classifies a whole batch before giving it deadlines, which reads the same cues again).
_TEXT_CACHE = 4096
KINDS_OF_MATTER = ("praise", "report", "suggestion", "inquiry", "help", "complaint")


class TaxonomyError(ValueError):
    """The taxonomy file is invalid (the message names the entry and the fix)."""


@dataclass
class Category:
    """One category of the taxonomy."""

    code: str
    label: str
    label_en: str
    department: str
    co_departments: list[str]
    keywords: list[str]
    weak: list[str]
    regexes: list[re.Pattern[str]]
    negative: list[str]
    iot_faults: list[str]
    major: bool = False


@dataclass
class Taxonomy:
    """A compiled taxonomy."""

    version: str
    categories: dict[str, Category]
    default_category: str
    #: term → [(category code, weight, rule)]; rule is keyword, weak or negative
    term_index: dict[str, list[tuple[str, float, str]]]
    terms: TermMatcher
    kinds: dict[str, list[str]]
    #: cue → [(group, name)]: kind cues (kind, praise), urgency cues (urgency, emergency),
    #: major-matter terms (major, term) and second-issue markers (secondary, marker)
    cue_index: dict[str, list[tuple[str, str]]]
    cue_terms: TermMatcher
    urgency: dict[str, Any]
    major: dict[str, Any]
    iot_index: dict[str, str] = field(default_factory=dict)
    source: str = ""
    #: every category regex: (category code, compiled regex, characters a match starts with)
    regexes: list[tuple[str, re.Pattern[str], frozenset[str] | None]] = field(
        default_factory=list)
    regex_groups: dict[str, tuple[str, str]] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    alias_pattern: re.Pattern[str] | None = None
    _cue_cache: dict[str, list[tuple[str, int, int]]] = field(default_factory=dict, repr=False)
    _prep_cache: dict[str, str] = field(default_factory=dict, repr=False)

    def cues(self, prepared: str) -> list[tuple[str, int, int]]:
        """Cue terms (kind, urgency, major, second issue) in a prepared text, cached.

        Several enrichers read the same message; the scan runs once per text.
        """
        hit = self._cue_cache.get(prepared)
        if hit is None:
            if len(self._cue_cache) > _TEXT_CACHE:
                self._cue_cache.clear()
            hit = self._cue_cache[prepared] = self.cue_terms.find(prepared)
        return hit

    def cue_groups(self, prepared: str, group: str) -> list[tuple[str, str, int]]:
        """(name, term, start) of the cues of one group (kind, urgency, major, secondary)."""
        return [(name, term, start) for term, start, _ in self.cues(prepared)
                for g, name in self.cue_index[term] if g == group]

    def prepare(self, text: str) -> str:
        """Normalize text for matching: simplified, half-width, lower case, typos fixed.

        Cached: the enrichers of one case all prepare the same message text.
        """
        hit = self._prep_cache.get(text)
        if hit is not None:
            return hit
        out = normalize(text)
        if self.alias_pattern is not None and out:
            out = self.alias_pattern.sub(lambda m: self.aliases[m.group(0)], out)
        if len(self._prep_cache) > _TEXT_CACHE:
            self._prep_cache.clear()
        self._prep_cache[text] = out
        return out


def _simplified(pattern: str) -> str:
    # regexes are matched against simplified text; lower-casing them would break \D, \S...
    if has_traditional(pattern):
        import zhconv

        return str(zhconv.convert(pattern, "zh-hans"))
    return pattern


def _lower_literals(pattern: str) -> str:
    # text is lower-cased before matching; lower-case the pattern's letters but not escapes
    return re.sub(r"(?<!\\)[A-Z]", lambda m: m.group(0).lower(), pattern)


def canon(term: str) -> str:
    """A term as matched: normalized; English words joined by single spaces."""
    t = normalize(str(term).strip())
    if t.isascii():
        return " ".join(_ASCII_WORD.findall(t))
    return t


def _terms(entry: dict[str, Any], key: str, where: str) -> list[str]:
    value = entry.get(key) or []
    if not isinstance(value, list) or not all(isinstance(t, str) and t.strip() for t in value):
        raise TaxonomyError(f"{where}.{key}: expected a list of non-empty strings")
    return [c for t in value if (c := canon(t))]


def alternation(terms: list[str]) -> re.Pattern[str] | None:
    """One regular expression matching any of ``terms`` (literals), longest first.

    A plain alternation of literals: the regex engine scans for the terms' first characters
    and only tries branches there (a trie-shaped pattern measured 2.4x slower; lookarounds for
    word boundaries defeat the scan, so English terms go through :class:`TermMatcher`'s word
    lookup instead).
    """
    if not terms:
        return None
    ordered = sorted({t for t in terms if t}, key=lambda t: (-len(t), t))
    return re.compile("|".join(re.escape(t) for t in ordered))


_ASCII_WORD = re.compile(r"[a-z0-9]+")


class TermMatcher:
    """Finds a fixed set of terms in normalized text in one pass, longest match first.

    Terms with any non-ASCII character (all Chinese terms) go into one Aho-Corasick automaton
    (leftmost-longest: the matches of the regex alternation kept in ``pattern``); pure
    ASCII terms (English words and phrases) are looked up as word n-grams in a dict, which
    respects word boundaries by construction and, unlike a long alternation of English words,
    does not slow down on Latin text. Hits never overlap.
    """

    def __init__(self, terms: list[str]) -> None:
        cjk = [t for t in terms if t and not t.isascii()]
        self.pattern = alternation(cjk)
        # the same leftmost-longest, non-overlapping matches as the alternation, from an
        # Aho-Corasick automaton: one pass whatever the number of terms (about 5x faster on
        # the taxonomy's terms; docs/benchmarks.md, P3)
        self._cjk = sorted(set(cjk))
        self._automaton = ahocorasick_rs.AhoCorasick(
            self._cjk, matchkind=ahocorasick_rs.MatchKind.LeftmostLongest) if cjk else None
        self.words: dict[str, str] = {}
        #: first words of multi-word terms, so longer n-grams are tried only after them
        self.leads: dict[str, int] = {}
        for t in terms:
            if t and t.isascii():
                parts = _ASCII_WORD.findall(t)
                if parts:
                    self.words.setdefault(" ".join(parts), t)
                    if len(parts) > 1:
                        self.leads[parts[0]] = max(self.leads.get(parts[0], 1), len(parts))

    def __bool__(self) -> bool:
        return self.pattern is not None or bool(self.words)

    def find(self, text: str) -> list[tuple[str, int, int]]:
        """Every term occurrence in ``text`` (normalized) as (term, start, end), in order,
        without overlaps."""
        hits: list[tuple[str, int, int]] = []
        if self._automaton is not None:
            cjk = self._cjk
            hits = [(cjk[i], start, end)
                    for i, start, end in self._automaton.find_matches_as_indexes(text)]
        if self.words and _HAS_LATIN.search(text):
            words = _ASCII_WORD.findall(text)
            starts = []
            pos = 0
            for w in words:
                pos = text.find(w, pos)
                starts.append(pos)
                pos += len(w)
            i, n_tok = 0, len(words)
            found = False
            while i < n_tok:
                step = 1
                longest = self.leads.get(words[i], 1)
                for n in range(min(longest, n_tok - i), 0, -1):
                    term = self.words.get(words[i] if n == 1 else " ".join(words[i:i + n]))
                    if term is not None:
                        last = i + n - 1
                        hits.append((term, starts[i], starts[last] + len(words[last])))
                        found = True
                        step = n
                        break
                i += step
            if found:
                hits.sort(key=lambda h: h[1])
        return hits


_HAS_LATIN = re.compile(r"[a-z]")


def first_chars(pattern: str) -> frozenset[str] | None:
    """The characters any match of ``pattern`` must start with, or None if unknown.

    Used to skip a category regex cheaply when none of them occurs in the text.
    """
    from re import _constants as c  # type: ignore[attr-defined]
    from re import _parser  # type: ignore[attr-defined]

    def first(items: Any) -> set[str] | None:
        if not items:
            return None
        op, av = items[0]
        if op is c.LITERAL:
            return {chr(av)}
        if op is c.IN:
            out = set()
            for iop, iav in av:
                if iop is not c.LITERAL:
                    return None
                out.add(chr(iav))
            return out
        if op is c.SUBPATTERN:
            return first(list(av[-1]))
        if op is c.BRANCH:
            out = set()
            for branch in av[1]:
                got = first(list(branch))
                if got is None:
                    return None
                out |= got
            return out
        if op in (c.MAX_REPEAT, c.MIN_REPEAT) and av[0] >= 1:
            return first(list(av[2]))
        return None

    try:
        got = first(list(_parser.parse(pattern)))
    except Exception:  # an exotic pattern: always run it
        return None
    if got is None:
        return None
    # matching is case-insensitive for ASCII letters
    return frozenset(got | {ch.lower() for ch in got} | {ch.upper() for ch in got})


def load_taxonomy(path: str | Path | None = None) -> Taxonomy:
    """Load and compile a taxonomy YAML file (default: the shipped one).

    Raises:
        TaxonomyError: naming the bad entry.
    """
    p = Path(path) if path else DEFAULT_TAXONOMY
    try:
        mtime = p.stat().st_mtime
    except OSError as exc:
        raise TaxonomyError(f"cannot read taxonomy {p}: {exc}") from exc
    return _load_cached(str(p.resolve()), mtime)


@lru_cache(maxsize=8)
def _load_cached(path: str, _mtime: float) -> Taxonomy:
    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise TaxonomyError(f"cannot read taxonomy {path}: {exc}") from exc
    return compile_taxonomy(doc, source=path)


def compile_taxonomy(doc: Any, source: str = "<memory>") -> Taxonomy:
    """Compile a parsed taxonomy document (see docs/enrichment.md for the format).

    Raises:
        TaxonomyError: naming the bad entry.
    """
    if not isinstance(doc, dict) or not isinstance(doc.get("categories"), list):
        raise TaxonomyError(f"{source}: expected a mapping with a 'categories' list")
    cats: dict[str, Category] = {}
    index: dict[str, list[tuple[str, float, str]]] = {}
    iot_index: dict[str, str] = {}
    regex_list: list[tuple[str, re.Pattern[str], frozenset[str] | None]] = []
    regex_groups: dict[str, tuple[str, str]] = {}
    for i, entry in enumerate(doc["categories"]):
        where = f"categories[{i}]"
        if not isinstance(entry, dict) or not entry.get("code"):
            raise TaxonomyError(f"{where}: expected a mapping with a code")
        code = str(entry["code"])
        where = f"categories[{i}] ({code})"
        if code in cats:
            raise TaxonomyError(f"{where}.code: duplicate code {code!r}")
        for key in ("label", "department"):
            if not entry.get(key):
                raise TaxonomyError(f"{where}.{key}: required")
        unknown = set(entry) - {"code", "label", "label_en", "department", "co_departments",
                                "keywords", "weak", "regex", "negative", "iot_faults", "major"}
        if unknown:
            raise TaxonomyError(f"{where}: unknown keys {sorted(unknown)}")
        regexes = []
        for j, r in enumerate(entry.get("regex") or []):
            try:
                rx = re.compile(_lower_literals(_simplified(str(r))))
            except re.error as exc:
                raise TaxonomyError(f"{where}.regex[{j}]: invalid regular expression: "
                                    f"{exc}") from exc
            regexes.append(rx)
            name = f"r{len(regex_groups)}"
            regex_groups[name] = (code, rx.pattern)
            regex_list.append((code, rx, first_chars(rx.pattern)))
        cat = Category(code=code, label=str(entry["label"]),
                       label_en=str(entry.get("label_en") or entry["label"]),
                       department=str(entry["department"]),
                       co_departments=[str(d) for d in entry.get("co_departments") or []],
                       keywords=_terms(entry, "keywords", where), weak=_terms(entry, "weak", where),
                       regexes=regexes, negative=_terms(entry, "negative", where),
                       iot_faults=[str(f) for f in entry.get("iot_faults") or []],
                       major=bool(entry.get("major", False)))
        cats[code] = cat
        for t in cat.keywords:
            index.setdefault(t, []).append((code, WEIGHT_KEYWORD, "keyword"))
        for t in cat.weak:
            index.setdefault(t, []).append((code, WEIGHT_WEAK, "weak"))
        for t in cat.negative:
            index.setdefault(t, []).append((code, 0.0, "negative"))
        for f in cat.iot_faults:
            iot_index.setdefault(f, code)
    default = str(doc.get("default_category") or "other")
    if default not in cats:
        raise TaxonomyError(f"default_category: no category {default!r}")
    kinds_doc = doc.get("kinds") or {}
    if not isinstance(kinds_doc, dict):
        raise TaxonomyError("kinds: expected a mapping of kind → list of cue words")
    bad = set(kinds_doc) - set(KINDS_OF_MATTER)
    if bad:
        raise TaxonomyError(f"kinds: unknown kinds {sorted(bad)}; use {list(KINDS_OF_MATTER)}")
    kinds = {k: [c for t in v or [] if (c := canon(t))] for k, v in kinds_doc.items()}
    urgency = doc.get("urgency") or {}
    major = doc.get("major") or {}
    if not isinstance(urgency, dict) or not isinstance(major, dict):
        raise TaxonomyError("urgency, major: expected mappings")
    # kind, urgency, major-matter and second-issue cues: one matcher, one scan per message
    cue_index: dict[str, list[tuple[str, str]]] = {}
    for k, cues in kinds.items():
        for t in cues:
            cue_index.setdefault(t, []).append(("kind", k))
    for group in ("emergency", "urgent", "vulnerable"):
        for t in urgency.get(group) or []:
            if c := canon(t):
                cue_index.setdefault(c, []).append(("urgency", group))
    for t in major.get("terms") or []:
        if c := canon(t):
            cue_index.setdefault(c, []).append(("major", "term"))
    aliases_doc = doc.get("aliases") or {}
    if not isinstance(aliases_doc, dict):
        raise TaxonomyError("aliases: expected a mapping of variant → canonical term")
    aliases = {normalize(str(k)): normalize(str(v)) for k, v in aliases_doc.items()}
    for t in doc.get("secondary_markers") or []:
        if c := canon(t):
            cue_index.setdefault(c, []).append(("secondary", "marker"))
    return Taxonomy(version=str(doc.get("version", "")), categories=cats,
                    default_category=default, term_index=index,
                    terms=TermMatcher(list(index)), kinds=kinds, cue_index=cue_index,
                    cue_terms=TermMatcher(list(cue_index)), urgency=urgency,
                    major=major, iot_index=iot_index, source=source,
                    regexes=regex_list, regex_groups=regex_groups, aliases=aliases,
                    alias_pattern=alternation(list(aliases)))
