"""Answer accuracy on the real-model task, measured two ways, and how each agrees with answers read by hand.

`bench/real_model.py` reports answer accuracy on the answerable questions. The pipeline's measure is key-fact
recall 1: the asked value occurs in the answer. SmolLM2 often hedges or lists ("Kofi bought the maps in Malmo,
not in Turin."; "Hana repaired 5 boots, and Chen ordered 12 kettles."), and recall counts those as correct
whenever the asked value is among the values it states. The *checked* measure also asks the `grounded-qa` judge
(faithforge/evaluation/grounded_qa_judge.py) whether the answer asserts anything wrong about who did what.

This script scores both measures against the hand labels: an answerable answer is correct by reading when it
states the asked value and was labeled faithful. The 160 validation labels choose the measure; the 60 held-out
test labels confirm it.

    python bench/answer_accuracy.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from faithforge.evaluation.grounded_qa_judge import GroundedQaJudge, parse_source  # noqa: E402
from faithforge.evaluation.metrics import key_fact_recall  # noqa: E402

LABELS = {"validation (chooses)": ROOT / "tests/data/smollm2_grounded_qa_labels.jsonl",
          "held-out test (confirms)": ROOT / "tests/data/smollm2_grounded_qa_labels_test.jsonl"}
_JUDGE = GroundedQaJudge()


def asked_value(source: str, category: str) -> str:
    """The value an answerable grounded-qa question asks for (`answerable-day` → the asked person's day)."""
    document = parse_source(source)
    person = document.people[document.asked]
    value = {"day": person.day, "place": person.place, "count": person.count}[category.split("-", 1)[1]]
    if value is None:
        raise ValueError(f"{category} but the document does not state it: {source!r}")
    return value


def states_the_answer(key_facts: list[str], answer: str) -> bool:
    """The pipeline's measure: key-fact recall 1."""
    return (key_fact_recall(key_facts, answer) or 0.0) >= 1.0


def checked_correct(source: str, answer: str, key_facts: list[str], truncated: bool = False) -> bool:
    """States the asked value, and the grounded-qa judge finds nothing wrong in the answer."""
    return states_the_answer(key_facts, answer) and not _JUDGE.judge(source, answer, truncated=truncated).hallucinated


def agreement(rows: list[dict]) -> dict:
    """On the answerable labeled answers: how many are correct by reading, by each measure, and how often each
    measure agrees with reading."""
    out = {"answerable": 0, "correct_by_reading": 0, "recall": 0, "checked": 0, "recall_agrees": 0,
           "checked_agrees": 0}
    for row in rows:
        if not row["category"].startswith("answerable"):
            continue
        facts = [asked_value(row["source"], row["category"])]
        truth = states_the_answer(facts, row["summary"]) and row["label"] == "faithful"
        recall, checked = states_the_answer(facts, row["summary"]), checked_correct(row["source"], row["summary"], facts)
        out["answerable"] += 1
        out["correct_by_reading"] += truth
        out["recall"] += recall
        out["checked"] += checked
        out["recall_agrees"] += recall == truth
        out["checked_agrees"] += checked == truth
    return out


def main() -> None:
    print("| labeled set | answerable answers | correct by reading | counted correct by recall 1 | by checked "
          "| recall agrees with reading | checked agrees |")
    print("|---|---|---|---|---|---|---|")
    for name, path in LABELS.items():
        a = agreement([json.loads(line) for line in path.read_text().splitlines() if line.strip()])
        n = a["answerable"]
        print(f"| {name} | {n} | {a['correct_by_reading']} | {a['recall']} | {a['checked']} | "
              f"{a['recall_agrees']}/{n} | {a['checked_agrees']}/{n} |")


if __name__ == "__main__":
    main()
