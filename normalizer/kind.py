"""The nature of the matter (12345 types: 投诉/举报/求助/咨询/建议/表扬) from its wording.

Cue words per kind come from the taxonomy file (``kinds:``). Each cue found counts one; a
message that opens by asking (请问, how do I...) or ends with a question mark counts one more for
``inquiry``. The kind with most hits wins; ties go to the more specific kind
(:data:`KIND_PRIORITY`). With no cue, a message in the praise category is praise and anything else
a complaint, the 12345 default. A kind given by the channel (``extra["kind_explicit"]``) and
device faults are never changed.
"""

from __future__ import annotations

import re

from normalizer.case import Case, CaseKind
from normalizer.taxonomy import Taxonomy
from normalizer.textnorm import message_text

KIND_PRIORITY = ["praise", "report", "help", "suggestion", "inquiry", "complaint"]
_QUESTION_END = re.compile(r"[?？]\s*$")
_ASKING = re.compile(r"^(?:你好[,，]?\s*)?(?:请问|咨询|想问|问一下|how |what |where |when |can i |"
                     r"is there |is it |are there |do i |who )")


class KindDetector:
    """Enricher: sets ``case.kind`` from the wording when the channel did not say."""

    name = "kind"
    #: works on the case alone (nothing read from the store)
    reads_store = False

    def __init__(self, tax: Taxonomy) -> None:
        self.tax = tax

    def scores(self, text: str) -> dict[str, int]:
        """Cue counts per kind for a prepared (normalized) text."""
        hits: dict[str, int] = {}
        for k, _, _ in self.tax.cue_groups(text, "kind"):
            hits[k] = hits.get(k, 0) + 1
        stripped = text.strip()
        if _QUESTION_END.search(stripped) or _ASKING.search(stripped):
            hits["inquiry"] = hits.get("inquiry", 0) + 1
        return {k: n for k, n in hits.items() if n}

    def detect(self, text: str, category: str | None = None) -> CaseKind:
        """The kind the wording suggests.

        Args:
            text: the message (title and description).
            category: the category already found, if any (praise messages default to praise).
        """
        hits = self.scores(self.tax.prepare(text))
        if category == "praise":
            hits["praise"] = hits.get("praise", 0) + 2
        if not hits:
            return CaseKind.complaint
        top = max(hits.values())
        # the strongest signal wins; ties go to the more specific kind (priority order)
        return CaseKind(next(k for k in KIND_PRIORITY if hits.get(k) == top))

    def enrich(self, case: Case, ctx: object) -> None:
        """Set ``case.kind`` unless the channel gave it or the case is a device fault."""
        if case.extra.get("kind_explicit") or case.kind is CaseKind.device_fault:
            return
        case.kind = self.detect(message_text(case.title, case.description),
                                case.classification.category_code)
