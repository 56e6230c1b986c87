"""Evaluate the classifier and kind detector on the labelled resident messages.

Run ``python -m normalizer.eval`` (``make eval``). The labelled set lives in
``tests/data/eval/{dev,test}.jsonl``: one message per line with its ``category`` (taxonomy code),
``kind`` (12345 type) and, for messages that raise several issues, ``also`` (secondary
categories, which are not counted as errors in the confusion list). Tune the taxonomy on the dev
split only; the test split is the figure we report and gate on.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from normalizer.case import Case, Channel, Origin
from normalizer.classify import Classifier
from normalizer.kind import KindDetector
from normalizer.taxonomy import Taxonomy, load_taxonomy

EVAL_DIR = Path(__file__).resolve().parent.parent / "tests" / "data" / "eval"


@dataclass
class Scores:
    """Per-category precision / recall / F1 and the overall figures."""

    per_category: dict[str, tuple[float, float, float, int]] = field(default_factory=dict)
    macro_f1: float = 0.0
    accuracy: float = 0.0
    kind_accuracy: float = 0.0
    confusions: list[tuple[str, str, int]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    n: int = 0


def load_split(split: str, eval_dir: Path = EVAL_DIR) -> list[dict[str, Any]]:
    """Read the labelled messages of a split (``dev``, ``test`` or ``all``)."""
    names = ["dev", "test"] if split == "all" else [split]
    rows: list[dict[str, Any]] = []
    for name in names:
        path = eval_dir / f"{name}.jsonl"
        with path.open(encoding="utf-8") as fh:
            rows.extend(json.loads(line) for line in fh if line.strip())
    return rows


def _case(text: str, i: int) -> Case:
    return Case(case_id=f"eval-{i}", title=text[:60], description=text,
                origin=Origin(channel=Channel.forward, source="eval", source_ref=str(i),
                              received_at=datetime(2026, 11, 24, 9, 0, tzinfo=timezone.utc)))


def evaluate(rows: list[dict[str, Any]], tax: Taxonomy | None = None) -> Scores:
    """Classify every message and score the predictions against the labels.

    Args:
        rows: labelled messages (``text``, ``category``, ``kind``, optional ``also``).
        tax: the taxonomy to evaluate (default: the shipped one).

    Returns:
        The scores, the most frequent confusion pairs and the misclassified messages.
    """
    tax = tax or load_taxonomy()
    classifier, kinds = Classifier(tax), KindDetector(tax)
    gold: list[str] = []
    pred: list[str] = []
    kind_ok = 0
    out = Scores(n=len(rows))
    for i, row in enumerate(rows):
        case = _case(row["text"], i)
        classifier.enrich(case, None)
        kinds.enrich(case, None)
        p = case.classification.category_code or tax.default_category
        gold.append(row["category"])
        pred.append(p)
        kind_ok += case.kind.value == row.get("kind")
        if p != row["category"]:
            out.errors.append({"id": row.get("id"), "text": row["text"], "gold": row["category"],
                               "pred": p, "also": row.get("also", []),
                               "confidence": case.classification.confidence})
    labels = sorted(set(gold))
    f1s = []
    for label in labels:
        tp = sum(1 for g, p in zip(gold, pred, strict=True) if g == label and p == label)
        fp = sum(1 for g, p in zip(gold, pred, strict=True) if g != label and p == label)
        fn = sum(1 for g, p in zip(gold, pred, strict=True) if g == label and p != label)
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        out.per_category[label] = (prec, rec, f1, tp + fn)
        f1s.append(f1)
    out.macro_f1 = sum(f1s) / len(f1s) if f1s else 0.0
    out.accuracy = sum(g == p for g, p in zip(gold, pred, strict=True)) / len(gold) if gold else 0
    out.kind_accuracy = kind_ok / len(rows) if rows else 0.0
    pairs = Counter((e["gold"], e["pred"]) for e in out.errors if e["pred"] not in e["also"])
    out.confusions = [(g, p, n) for (g, p), n in pairs.most_common()]
    return out


def _print(scores: Scores, split: str, show_errors: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"classification on the {split} split ({scores.n} messages)")
    for col in ("category", "support", "precision", "recall", "F1"):
        table.add_column(col, justify="left" if col == "category" else "right")
    for label, (p, r, f1, n) in scores.per_category.items():
        table.add_row(label, str(n), f"{p:.2f}", f"{r:.2f}", f"{f1:.2f}")
    console.print(table)
    console.print(f"macro-F1 {scores.macro_f1:.3f}   accuracy {scores.accuracy:.3f}   "
                  f"kind accuracy {scores.kind_accuracy:.3f}")
    if scores.confusions:
        console.print("confusion pairs (gold → predicted, count):")
        for g, p, n in scores.confusions[:15]:
            console.print(f"  {g} → {p}: {n}")
    if show_errors:
        for e in scores.errors:
            console.print(f"  [{e['id']}] {e['gold']} → {e['pred']} "
                          f"({e['confidence']:.2f}): {e['text']}", markup=False)


@click.command()
@click.option("--split", type=click.Choice(["dev", "test", "all"]), default="test",
              show_default=True, help="Which labelled split to score.")
@click.option("--taxonomy", "taxonomy_path", type=click.Path(exists=True, dir_okay=False),
              default=None, help="Taxonomy YAML to evaluate (default: the shipped one).")
@click.option("--errors", is_flag=True, help="List every misclassified message.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def main(split: str, taxonomy_path: str | None, errors: bool, as_json: bool) -> None:
    """Print per-category precision/recall, macro-F1 and the confusion pairs."""
    tax = load_taxonomy(taxonomy_path)
    scores = evaluate(load_split(split), tax)
    if as_json:
        json.dump({"split": split, "n": scores.n, "macro_f1": round(scores.macro_f1, 4),
                   "accuracy": round(scores.accuracy, 4),
                   "kind_accuracy": round(scores.kind_accuracy, 4),
                   "per_category": {k: {"precision": round(v[0], 4), "recall": round(v[1], 4),
                                        "f1": round(v[2], 4), "support": v[3]}
                                    for k, v in scores.per_category.items()},
                   "confusions": scores.confusions}, sys.stdout, ensure_ascii=False, indent=1)
        sys.stdout.write("\n")
        return
    _print(scores, split, errors)


if __name__ == "__main__":
    main()
