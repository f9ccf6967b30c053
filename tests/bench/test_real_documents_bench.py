"""bench/real_documents.py: the split by the fixed rule, the blind export that hides the model, and the scoring of
hand labels against the key (hand-computed figures)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from faithforge.data.labeled_split import label_split

from tests.fixtures.bench_scripts import load_bench


@pytest.fixture(scope="module")
def bench():
    return load_bench("real_documents")


def test_train_articles_come_from_the_development_half_and_test_articles_from_the_held_out_half(bench, tmp_path):
    dev, heldout = bench.build_files(tmp_path, datasets=["qags-c"], max_words=60, train_articles=30, test_articles=20)
    dev_rows = [json.loads(line) for line in dev.read_text().splitlines()]
    held_rows = [json.loads(line) for line in heldout.read_text().splitlines()]
    assert len(dev_rows) == 30 and len(held_rows) == 20
    assert {label_split(r["id"]) for r in dev_rows} == {"dev"} and {label_split(r["id"]) for r in held_rows} == {"heldout"}
    assert not {r["document"] for r in dev_rows} & {r["document"] for r in held_rows}
    assert all(0 < len(r["document"].split()) <= 60 for r in dev_rows + held_rows)
    assert all(r["id"].startswith("qags-cnndm") for r in dev_rows + held_rows)


def test_cut_keeps_whole_sentences_up_to_the_limit(bench):
    assert bench.cut("One two three. Four five six. Seven eight.", 7) == "One two three. Four five six."
    assert bench.cut("A very long first sentence without end", 3) == "A very long"


def _evaluation(folder: Path) -> Path:
    folder.mkdir()
    rows = []
    # article a: hallucinated before (judge saw it), fixed after; b: faithful both; c: hallucinated both, judge
    # misses it after
    for article, before, after, judge_before, judge_after in (("a", True, False, True, False),
                                                              ("b", False, False, False, False),
                                                              ("c", True, True, True, False)):
        for model, judged in (("before", judge_before), ("after", judge_after)):
            rows.append({"id": f"{model}:{article}", "item": article, "model": model, "source": f"Article {article}.",
                         "summary": f"{model} summary of {article}", "judge": "grounding",
                         "judge_hallucinated": judged, "spans": [], "_truth": before if model == "before" else after})
        rows.append({"id": f"control:{article}", "item": article, "model": "control", "source": f"Article {article}.",
                     "summary": "control", "judge": "grounding", "judge_hallucinated": False, "spans": []})
    (folder / "outputs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_the_blind_file_hides_the_model_and_the_key_scores_the_labels(bench, tmp_path):
    evaluation = _evaluation(tmp_path / "eval")
    labeling, key = bench.export_blind(evaluation, tmp_path / "blind", seed=0)
    rows = [json.loads(line) for line in labeling.read_text().splitlines()]
    assert len(rows) == 6 and all(set(r) == {"token", "source", "output", "label", "span"} for r in rows)
    keys = {r["token"]: r for r in map(json.loads, key.read_text().splitlines())}
    assert sorted(k["model"] for k in keys.values()) == ["after"] * 3 + ["before"] * 3  # no control outputs
    order = [keys[r["token"]]["model"] for r in rows]
    assert order != sorted(order) or order != sorted(order, reverse=True)  # shuffled, not grouped by model
    # a labeler fills in the truth (here read from the test's own record of it)
    truth = {r["id"]: r["_truth"] for r in map(json.loads, (evaluation / "outputs.jsonl").read_text().splitlines())
             if "_truth" in r}
    for row in rows:
        k = keys[row["token"]]
        row["label"] = "unsupported" if truth[f"{k['model']}:{k['article']}"] else "supported"
    labeling.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = bench.score(labeling, key)
    assert lines[0] == "6 hand labels (3 before, 3 after)"
    # before: hand 2/3, judge 2/3, precision 2/2, recall 2/2; after: hand 1/3, judge 0/3, recall 0/1
    assert lines[1].startswith("before: hand-label rate 66.7%, judge rate 66.7%, judge precision 100.0% recall 100.0%")
    assert lines[2].startswith("after: hand-label rate 33.3%, judge rate 0.0%, judge precision — recall 0.0%")
    assert "paired over 3 articles: 66.7% → 33.3%, after − before -33.3%" in lines[3]
