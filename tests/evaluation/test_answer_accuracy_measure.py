"""The benchmark's two answer-accuracy measures (bench/answer_accuracy.py): recall 1 and checked accuracy."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from answer_accuracy import LABELS, agreement, asked_value, checked_correct, states_the_answer  # noqa: E402

SOURCE = ("Document: Kofi bought 4 maps in Turin. Nia delivered 6 rugs in Malmo. It was a busy week. "
          "Hana repaired 5 boots in Riga.\nQuestion: In which city did Kofi buy the maps?")


def test_the_asked_value_comes_from_the_asked_persons_sentence():
    assert asked_value(SOURCE, "answerable-place") == "Turin"
    assert asked_value(SOURCE.replace("In which city did Kofi buy", "How many maps did Kofi buy"),
                       "answerable-count") == "4"
    with pytest.raises(ValueError, match="does not state it"):
        asked_value(SOURCE, "answerable-day")


@pytest.mark.parametrize("answer, by_recall, checked", [
    ("Kofi bought the maps in Turin.", True, True),
    ("Kofi bought the maps in Malmo, not in Turin.", True, False),  # a hedge: the wrong city asserted
    ("Kofi bought the maps in Turin on Friday.", True, False),       # an invented day
    ("Kofi bought the maps.", False, False),                          # a non-answer
    ("Kofi bought the maps in Malmo.", False, False),                 # another person's city
])
def test_checked_accuracy_needs_the_answer_and_nothing_wrong(answer, by_recall, checked):
    assert states_the_answer(["Turin"], answer) is by_recall
    assert checked_correct(SOURCE, answer, ["Turin"]) is checked


def test_on_the_labeled_sets_checked_agrees_with_reading_at_least_as_often_as_recall():
    import json

    for path in LABELS.values():
        a = agreement([json.loads(line) for line in path.read_text().splitlines() if line.strip()])
        assert a["answerable"] >= 20
        assert a["checked_agrees"] >= a["recall_agrees"]
        assert a["checked"] <= a["recall"]  # checked only ever removes answers recall counted


def test_pooling_earlier_out_files_counts_every_seeds_answerable_items(tmp_path):
    """`bench/real_model.py --pool`: two --out files, 2 + 1 answerable items; counts and difference by hand."""
    import json

    from tests.fixtures.bench_scripts import load_bench

    bench_real_model = load_bench("real_model")  # by path: tests/fixtures/smollm2.py shadowed it by name
    pooled_accuracy, read_out = bench_real_model.pooled_accuracy, bench_real_model.read_out

    def out_file(name: str, rows: list[dict]) -> Path:
        path = tmp_path / name
        path.write_text("| table |\n\n```json\n" + json.dumps(rows) + "\n```\n")
        return path

    def row(seed: int, before: dict, dpo: dict) -> dict:
        return {"seed": seed, "accuracy": {m: {"before": before, "dpo": dpo} for m in ("recall", "checked")}}

    first = out_file("a.md", [row(3, {"x": 1.0, "y": 0.0}, {"x": 1.0, "y": 1.0})])
    second = out_file("b.md", [row(6, {"z": 1.0}, {"z": 0.0})])
    rows = read_out(first) + read_out(second)
    assert [r["seed"] for r in rows] == [3, 6]
    table = pooled_accuracy(rows)
    assert "| recall 1 (the pipeline's) | 2/3 (66.7%) | 2/3 (66.7%) | – | 0.0% [" in table
    plain = tmp_path / "c.md"
    plain.write_text("| a table without its JSON |\n")
    with pytest.raises(SystemExit, match="no ```json block"):
        read_out(plain)


def test_the_real_model_bench_rejudges_with_the_judge_that_did_not_measure():
    """`demo --real` measures with `grounded-qa`: the benchmark's second table must then be `grounding` (the judge
    that chose the pairs), not `grounded-qa` again; a run measured by `grounding` gets `grounded-qa`."""
    from tests.fixtures.bench_scripts import load_bench

    bench = load_bench("real_model")
    source = ("Document: Goran sold 9 pens on Tuesday. Tomas painted 5 vases in Porto.\n"
              "Question: In which city did Goran sell the pens?")
    # a wrong person's city: `grounding` sees nothing invented (Porto is in the document), `grounded-qa` does
    answer = {"id": "q1", "summary": "Goran sold the pens in Porto.", "truncated": False}

    def report(judge: str) -> dict:
        return {"comparison": {"judge": judge, "before": {"items": [answer]}, "after": {"items": [answer]}},
                "control": None}

    by_grounding = bench.rejudge(report("grounded-qa"), {"q1": source}, seed=0)
    by_grounded_qa = bench.rejudge(report("grounding"), {"q1": source}, seed=0)
    assert by_grounding["judge"] == "grounding" and by_grounding["rates"] == {"before": 0.0, "dpo": 0.0}
    assert by_grounded_qa["judge"] == "grounded-qa" and by_grounded_qa["rates"] == {"before": 1.0, "dpo": 1.0}
