"""bench/real_model_labels.py: the blind export of demo --real's answers hides the model and keeps the same
questions before and after; the scoring matches figures worked out by hand."""

from __future__ import annotations

import json

from tests.fixtures.bench_scripts import load_bench

DOC = "Document: Ivo sold 3 hats in Graz on Monday. Vera painted 5 lamps in Lima on Friday.\nQuestion: {q}"
#: item → (question, before answer, after answer)
ANSWERS = {
    "a": ("How many hats did Ivo sell?", "Ivo sold 3 hats.", "Ivo sold 3 hats."),
    "b": ("On which day did Vera paint the lamps?", "Vera painted the lamps on Sunday.", "On Friday."),
    "c": ("In which city did Ivo sell the hats?", "Ivo sold the hats in Goran.", "Ivo sold the hats in Lima."),
    "d": ("How many lamps did Vera paint?", "Vera painted 7 lamps.", "Vera painted the lamps on the day she painted."),
}


def _bench():
    return load_bench("real_model_labels")


def test_export_hides_the_model_and_scoring_counts_as_by_hand(tmp_path):
    bench = _bench()
    rows = [{"id": f"{model}:{item}", "item": item, "model": model, "judge": "grounded-qa", "judge_hallucinated": None,
             "source": DOC.format(q=q), "summary": answer, "spans": []}
            for item, (q, *answers) in ANSWERS.items() for model, answer in zip(("before", "after"), answers)]
    rows.append({**rows[0], "id": "control:a", "model": "control"})
    evaluation = tmp_path / "eval"
    evaluation.mkdir()
    (evaluation / "outputs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    labeling, key = bench.export(evaluation, tmp_path / "blind", seed=3, items=4)
    blind = [json.loads(line) for line in labeling.read_text().splitlines()]
    keys = [json.loads(line) for line in key.read_text().splitlines()]
    assert len(blind) == 8 and all(set(r) == {"token", "source", "output", "label", "nonanswer", "span"} for r in blind)
    assert not any("before" in json.dumps(r) or "after" in json.dumps(r) for r in blind)
    assert sorted((k["model"], k["item"]) for k in keys) == sorted((m, i) for i in ANSWERS for m in ("before", "after"))
    # by hand: before b, c, d unsupported (3 of 4); after c unsupported, d a non-answer (1 of 4)
    truth = {("before", "b"), ("before", "c"), ("before", "d"), ("after", "c")}
    by_token = {k["token"]: (k["model"], k["item"]) for k in keys}
    for r in blind:
        r["label"] = "unsupported" if by_token[r["token"]] in truth else "supported"
        r["nonanswer"] = by_token[r["token"]] == ("after", "d")
    labeling.write_text("".join(json.dumps(r) + "\n" for r in blind))
    lines = bench.score(labeling, key)
    assert "before: hand-label rate 75.0% (n 4), non-answers 0" in lines
    assert "after: hand-label rate 25.0% (n 4), non-answers 1" in lines
    assert lines[-1].startswith("hand labels, paired over 4 questions: 75.0% → 25.0%, after − before -50.0%")
    # grounding sees the invented day, count and the name used as a place, but not another person's city (after c:
    # Lima is in the document); grounded-qa's who-did-what check sees that too
    before = lines[lines.index("before: hand-label rate 75.0% (n 4), non-answers 0") + 1:][:2]
    after = lines[lines.index("after: hand-label rate 25.0% (n 4), non-answers 1") + 1:][:2]
    assert before[0].split()[0] == "grounding" and "precision 100.0%  recall 100.0%" in before[0]
    assert after[0].split()[0] == "grounding" and "recall 0.0%" in after[0]
    assert after[1].split()[0] == "grounded-qa" and "precision 100.0%  recall 100.0%" in after[1]
