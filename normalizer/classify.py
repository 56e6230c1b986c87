"""Keyword classification and dispatch: category, departments, confidence and evidence.

Scoring (docs/enrichment.md): each distinct keyword found adds 2 to its categories, each weak
keyword 1, each matching regex 3. Matches in the title count 1.5 times; matches after a marker
of a second issue (另外, 顺便, also...) count half, so the first-raised matter leads a
multi-issue message. A negative keyword present anywhere cancels its category.

Single-character terms (气, 吵, 坑, 树...) are where plain substring matching misfires (天气,
吵架, 坑人, 树立), so they count only when jieba segments them as a word of their own. jieba runs
on a few characters around the hit, not the whole message, which keeps it cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from normalizer.case import Candidate, Case, CaseKind, Classification, Evidence
from normalizer.taxonomy import WEIGHT_REGEX, Taxonomy
from normalizer.textnorm import message_text

TITLE_FACTOR = 1.5
SECONDARY_FACTOR = 0.5
#: Full confidence is reached at this score.
SATURATION = 6.0
#: Characters of context either side of a single-character hit given to jieba.
WINDOW = 4
#: Longest dictionary word looked up around a single-character hit before calling jieba.
MAX_COVER = 6


@dataclass
class ClassifyResult:
    """Scores and evidence for one message."""

    scores: dict[str, float] = field(default_factory=dict)
    #: category → (rule, field) → matched terms; turned into Evidence only where needed
    matches: dict[str, dict[tuple[str, str], list[str]]] = field(default_factory=dict)
    vetoed: dict[str, str] = field(default_factory=dict)

    def evidence(self, code: str) -> list[Evidence]:
        """The evidence for one category (matched terms by rule and field)."""
        return [Evidence(rule=rule, terms=sorted(set(terms)), field=where)
                for (rule, where), terms in self.matches.get(code, {}).items()]


@lru_cache(maxsize=1)
def _jieba() -> Any:
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    return jieba


@lru_cache(maxsize=8192)
def _segment(window: str) -> tuple[str, ...]:
    return tuple(_jieba().lcut(window, HMM=False))


def is_word_at(text: str, start: int) -> bool:
    """Tell whether the single character at ``text[start]`` is a word of its own (jieba).

    When no word of jieba's dictionary (2 to :data:`MAX_COVER` characters) covers the
    character, every segmentation cuts it alone, so the answer is yes without segmenting. Only
    otherwise jieba segments a window of a few characters around it (cached): a word boundary
    further away does not change how the character itself is cut.
    """
    freq = _jieba().dt.FREQ
    n = len(text)
    covered = False
    for length in range(2, MAX_COVER + 1):
        for a in range(max(0, start - length + 1), min(start, n - length) + 1):
            if freq.get(text[a:a + length]):
                covered = True
                break
        if covered:
            break
    if not covered:
        return True
    lo = max(0, start - WINDOW)
    window = text[lo:start + WINDOW + 1]
    pos = 0
    target = start - lo
    for tok in _segment(window):
        if pos == target:
            return len(tok) == 1
        if pos > target:
            return False
        pos += len(tok)
    return False


def score_text(tax: Taxonomy, text: str, title_len: int = 0) -> ClassifyResult:
    """Score every category for one prepared (normalized) text.

    Args:
        tax: the compiled taxonomy.
        text: prepared text (:meth:`Taxonomy.prepare`), the title first if there is one.
        title_len: how many leading characters of ``text`` are the title.
    """
    res = ClassifyResult()
    if not text:
        return res
    second = len(text)
    lead = max(title_len, 4)
    for _, _, start in tax.cue_groups(text, "secondary"):
        if start >= lead:
            second = start
            break
    # term → (best factor, field)
    hits: dict[str, tuple[float, str]] = {}
    if tax.terms:
        for term, start, _ in tax.terms.find(text):
            if len(term) == 1 and term >= "\u3400" and not is_word_at(text, start):
                continue
            factor = TITLE_FACTOR if start < title_len else 1.0
            if start >= second:
                factor *= SECONDARY_FACTOR
            prev = hits.get(term)
            if prev is None or factor > prev[0]:
                hits[term] = (factor, "title" if start < title_len else "description")
    per_cat: dict[str, dict[tuple[str, str], list[str]]] = {}
    for term, (factor, where) in hits.items():
        for code, weight, rule in tax.term_index[term]:
            if rule == "negative":
                res.vetoed.setdefault(code, term)
                continue
            res.scores[code] = res.scores.get(code, 0.0) + weight * factor
            per_cat.setdefault(code, {}).setdefault((rule, where), []).append(term)
    chars = set(text)
    for code, rx, starts in tax.regexes:
        if starts is not None and chars.isdisjoint(starts):
            continue
        m = rx.search(text)
        if m is None:
            continue
        start = m.start()
        factor = TITLE_FACTOR if start < title_len else 1.0
        if start >= second:
            factor *= SECONDARY_FACTOR
        res.scores[code] = res.scores.get(code, 0.0) + WEIGHT_REGEX * factor
        where = "title" if start < title_len else "description"
        per_cat.setdefault(code, {}).setdefault(("regex", where), []).append(m.group(0))
    for code in res.vetoed:
        res.scores.pop(code, None)
        per_cat.pop(code, None)
    res.matches = per_cat
    return res


def classify_text(tax: Taxonomy, title: str, description: str,
                  extra_texts: list[tuple[str, str]] | None = None) -> ClassifyResult:
    """Score every category for a message (title, description, attachment texts).

    The title is dropped when the description already starts with it (mappers often derive
    the title from the first line), so its words are not counted twice
    (:func:`~normalizer.textnorm.message_text`).
    """
    message = message_text(title, description)
    text = tax.prepare(message)
    title_len = 0 if message is description or message == description else len(title) + 1
    res = score_text(tax, text, title_len)
    for where, extra in extra_texts or []:
        more = score_text(tax, tax.prepare(extra))
        for code, s in more.scores.items():
            if code in res.vetoed:
                continue
            res.scores[code] = res.scores.get(code, 0.0) + s
            mine = res.matches.setdefault(code, {})
            for (rule, _), terms in more.matches.get(code, {}).items():
                mine.setdefault((rule, where), []).extend(terms)
    return res


class Classifier:
    """Enricher: sets ``case.classification`` (and flags weak or ambiguous results)."""

    name = "classify"
    #: works on the case alone (nothing read from the store)
    reads_store = False

    def __init__(self, tax: Taxonomy, min_confidence: float = 0.45, top_n: int = 3) -> None:
        self.tax = tax
        self.min_confidence = min_confidence
        self.top_n = top_n
        if any(len(t) == 1 and t >= "\u3400" for t in tax.term_index):
            # load the segmentation dictionary now (about a second, once per process), not
            # inside the first batch a worker processes
            _jieba()

    def classification(self, code: str, confidence: float, evidence: list[Evidence],
                       candidates: list[Candidate]) -> Classification:
        """Build the classification of a category code."""
        cat = self.tax.categories[code]
        return Classification(
            category_code=code, category_label=cat.label, category_label_en=cat.label_en,
            department=cat.department, co_departments=list(cat.co_departments),
            confidence=round(min(1.0, max(0.0, confidence)), 3), evidence=evidence,
            candidates=candidates, major=cat.major)

    def _iot(self, case: Case) -> str | None:
        if case.kind is not CaseKind.device_fault:
            return None
        for key in ("fault", "fault_type"):
            fault = case.extra.get(key)
            if isinstance(fault, str) and fault in self.tax.iot_index:
                return fault
        return None

    def enrich(self, case: Case, ctx: object) -> None:
        """Classify a case in place (a category set by the channel mapper is kept)."""
        if case.classification.category_code:
            return
        fault = self._iot(case)
        if fault is not None:
            code = self.tax.iot_index[fault]
            case.classification = self.classification(
                code, 1.0, [Evidence(rule="iot_fault", terms=[fault], field="extra.fault")], [])
            return
        extra = [(f"attachment:{a.filename or a.sha256[:8]}", a.derived_text)
                 for a in case.attachments if a.derived_text]
        res = classify_text(self.tax, case.title, case.description, extra)
        ranked = sorted(res.scores.items(), key=lambda kv: (-kv[1], kv[0]))
        if not ranked:
            code = self.tax.default_category
            case.classification = self.classification(code, 0.0, [], [])
            case.flag("unclassified", "no category keyword matched; dispatch by hand")
            return
        (top, s1), rest = ranked[0], ranked[1:]
        s2 = rest[0][1] if rest else 0.0
        confidence = min(1.0, s1 / SATURATION) * (1.0 - 0.5 * s2 / s1)
        candidates = [Candidate(code=c, label=self.tax.categories[c].label, score=round(s, 2))
                      for c, s in ranked[1:self.top_n + 1]]
        case.classification = self.classification(top, confidence, res.evidence(top),
                                                  candidates)
        if confidence < self.min_confidence:
            names = ", ".join(f"{c.code} ({c.score})" for c in candidates) or "none"
            case.flag("ambiguous_category",
                      f"low confidence {confidence:.2f} for {top} ({s1:.1f}); "
                      f"other candidates: {names}")


def __getattr__(name: str) -> Any:
    # KindDetector moved to normalizer.kind; keep the old import path working
    if name == "KindDetector":
        from normalizer.kind import KindDetector

        return KindDetector
    raise AttributeError(name)
