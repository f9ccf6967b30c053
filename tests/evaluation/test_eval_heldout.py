"""Held-out calibration round trip, the stored calibration in reports, judge lists, and labels validation."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from faithforge.app.cli_eval import app
from faithforge.core.errors import UserError
from faithforge.evaluation import EvalItem, evaluate_pair, markdown_report
from faithforge.evaluation.calibration import read_labels
from faithforge.evaluation.heldout import split_examples
from faithforge.evaluation.judges import build_judges, judge_names

runner = CliRunner()
SOURCE = "On Monday , Alice bought 3 lamps in Paris ."

# (summary, label, split, dataset, grounding verdict worked out by hand)
ROWS = [
    ("Alice bought 3 lamps .", "faithful", "validation", "xsum", False),
    ("Bob bought 3 lamps .", "hallucinated", "validation", "xsum", True),
    ("Alice bought 3 lamps in Paris .", "faithful", "test", "xsum", False),             # TN
    ("Alice bought three lamps .", "faithful", "test", "cnndm", False),                 # TN (3 == three)
    ("Bob bought 3 lamps in Paris .", "hallucinated", "test", "xsum", True),            # TP swapped entity
    ("Alice bought 5 lamps .", "hallucinated", "test", "cnndm", True),                  # TP changed number
    ("Alice sold 3 lamps in Paris .", "hallucinated", "test", "xsum", False),           # FN changed relation
    ("Alice did not buy lamps .", "hallucinated", "test", "cnndm", False),              # FN negation
    ("Alice bought 3 lamps in Lima on Friday .", "hallucinated", "test", "cnndm", True),  # TP place + day
    ("Alice bought 3 lamps in the French capital .", "faithful", "test", "xsum", True),   # FP "French"
]


def write_labels(path, rows=ROWS, with_split=True):
    lines = []
    for summary, label, split, dataset, _ in rows:
        row = {"source": SOURCE, "summary": summary, "label": label, "dataset": dataset}
        if with_split:
            row["split"] = split
        lines.append(json.dumps(row))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def hand_confusion(rows):
    counts = {"true_positives": 0, "false_positives": 0, "true_negatives": 0, "false_negatives": 0}
    for _, label, _, _, flagged in rows:
        truth = label == "hallucinated"
        key = {(True, True): "true_positives", (False, True): "false_positives",
               (False, False): "true_negatives", (True, False): "false_negatives"}[(truth, flagged)]
        counts[key] += 1
    return counts


def test_calibrate_reports_the_held_out_split_only_and_matches_a_hand_count(tmp_path):
    labels = write_labels(tmp_path / "labels.jsonl")
    result = runner.invoke(app, ["calibrate", "--labels", str(labels), "--workspace", str(tmp_path / "ws"), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    test_rows = [r for r in ROWS if r[2] == "test"]
    expected = hand_confusion(test_rows)
    assert expected == {"true_positives": 3, "false_positives": 1, "true_negatives": 2, "false_negatives": 2}
    report = data["test"]
    assert {k: report[k] for k in expected} == expected and report["n"] == 8 and data["validation"] == 2
    assert report["precision"] == pytest.approx(3 / 4) and report["recall"] == pytest.approx(3 / 5)
    assert report["balanced_accuracy"] == pytest.approx((3 / 5 + 2 / 3) / 2)
    for subset in ("xsum", "cnndm"):
        sub = data["per_subset"][subset]
        assert {k: sub[k] for k in expected} == hand_confusion([r for r in test_rows if r[3] == subset])
    assert data["per_subset"]["xsum"]["true_positives"] == 1 and data["per_subset"]["cnndm"]["true_positives"] == 2
    stored = json.loads(open(data["stored"], encoding="utf-8").read())
    assert stored["test"] == report and stored["labels"].endswith("labels.jsonl") and stored["judge"] == "grounding"
    text = runner.invoke(app, ["calibrate", "--labels", str(labels), "--no-save"])
    assert "accuracy on 8 held-out labels" in text.output and "TP 3 FP 1 TN 2 FN 2" in text.output


def test_without_split_fields_rows_are_split_by_source(tmp_path):
    rows = [(f"Alice bought {n} lamps .", "faithful" if n % 2 else "hallucinated", "", "", False) for n in range(40)]
    examples = read_labels(write_labels(tmp_path / "l.jsonl", rows, with_split=False))
    for e in examples:  # give each row its own source so the split by source has something to split
        object.__setattr__(e, "source", e.summary)
    validation, test = split_examples(examples, holdout=0.5, seed=3)
    assert len(validation) + len(test) == 40 and not {e.source for e in validation} & {e.source for e in test}
    assert split_examples(examples, holdout=0.5, seed=3) == (validation, test)  # deterministic


def test_nli_threshold_is_chosen_on_validation_and_reported_on_test(tmp_path):
    from safetensors.torch import save_file

    import torch
    from test_eval_nli_families import save_custom

    path = save_custom(tmp_path / "checker")
    save_file({"bias": torch.zeros(2)}, str(path / "model.safetensors"))
    labels = write_labels(tmp_path / "labels.jsonl")
    result = runner.invoke(app, ["calibrate", "--labels", str(labels), "--judge", "nli", "--checkpoint", str(path),
                                 "--trust-remote-code", "--workspace", str(tmp_path / "ws"), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    # validation: "Alice bought 3 lamps ." scores 1 (all words in the source), "Bob bought 3 lamps ." 0: the
    # best threshold separates them at the midpoint; on test the rule checker flags every summary with a
    # word the source lacks ("three", "Bob", "5", "sold", "did not buy", "Lima", "French") — all but one.
    assert data["thresholds"] == {"nli": 0.5}
    assert {k: data["test"][k] for k in ("true_positives", "false_positives", "true_negatives", "false_negatives")} \
        == {"true_positives": 5, "false_positives": 2, "true_negatives": 1, "false_negatives": 0}


def test_a_report_with_a_judge_list_shows_each_rate_and_calibration(tmp_path):
    labels = write_labels(tmp_path / "labels.jsonl")
    workspace = tmp_path / "ws"
    assert runner.invoke(app, ["calibrate", "--labels", str(labels), "--workspace", str(workspace)]).exit_code == 0
    from faithforge.evaluation.llm import LlmJudge
    from test_eval_llm import ScriptedBackend, check, claims

    backend = ScriptedBackend(claims("Alice bought 3 lamps"), check(True), claims("Alice sold lamps"),
                              check(False, "she bought them"))
    judge = build_judges(["grounding", "llm"], {"llm": {"backend": backend}})
    assert judge.name == "grounding+llm"
    items = [EvalItem(id="a", source=SOURCE)]
    report = evaluate_pair(items, ["Alice bought 3 lamps ."], ["Alice sold 3 lamps ."], judge, bootstrap_samples=50,
                           calibration_dir=workspace / "calibrations")
    after = report.after
    assert after.hallucinated == 1 and after.judge_rates["grounding"].rate == 0.0 and after.judge_rates["llm"].rate == 1.0
    assert after.items[0].judges == {"grounding": False, "llm": True}
    markdown = markdown_report(report)
    first = markdown.splitlines()[0]
    assert "Judge `grounding+llm` has no calibration on record" in first
    assert "| after | 100.0% | 0.0% [0.0%, 79.3%] | 100.0% [20.7%, 100.0%] |" in markdown
    assert "> - `grounding`: `grounding` (grounding-rules-v2) on 8 held-out labels from labels.jsonl: balanced accuracy " \
           "0.63, precision 0.75, recall 0.60" in markdown
    assert "> - `llm`: no calibration on record" in markdown
    assert "balanced accuracy 0.60 (no better than counting novel words)" in markdown  # the grounding limits

    single = evaluate_pair(items, ["Alice bought 3 lamps ."], ["Bob bought 3 lamps ."], "grounding",
                           bootstrap_samples=50, calibration_dir=workspace / "calibrations")
    assert markdown_report(single).splitlines()[0].startswith("> Judge accuracy: `grounding` (grounding-rules-v2) on 8")
    uncalibrated = evaluate_pair(items, ["a ."], ["b ."], "grounding", bootstrap_samples=50)
    assert "has no calibration on record" in markdown_report(uncalibrated).splitlines()[0]


def test_judge_names_accept_lists_and_strings():
    assert judge_names("grounding") == ["grounding"]
    assert judge_names(["grounding", "nli"]) == judge_names("grounding+nli") == ["grounding", "nli"]
    with pytest.raises(UserError, match="unknown judge 'bogus'"):
        judge_names(["grounding", "bogus"])
    with pytest.raises(UserError, match="twice"):
        judge_names("grounding,grounding")


@pytest.mark.parametrize("row, problem", [
    ({"source": "", "summary": "", "label": 0}, "line 1: source and summary are empty; fill in the text or delete"),
    ({"source": "s", "summary": "  ", "label": 0}, "line 1: summary is empty"),
    ({"source": "s", "summary": "t", "label": 0, "split": "train"}, "line 1: split 'train' is neither"),
    ({"source": "s", "summary": "t", "label": 0, "dataset": 3}, "line 1: dataset must be a string"),
])
def test_empty_or_malformed_label_rows_are_rejected_with_file_and_line(tmp_path, row, problem):
    path = tmp_path / "labels.jsonl"
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    with pytest.raises(UserError) as err:
        read_labels(path)
    assert f"labels file {path}, {problem}" in str(err.value)


def test_labels_with_a_split_on_some_rows_only_are_refused(tmp_path):
    rows = [dict(source=SOURCE, summary=s, label=l) for s, l, *_ in ROWS]
    rows[0]["split"] = "test"
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(UserError, match="1 of 10 label rows have a split field"):
        split_examples(read_labels(path))


def test_choosing_a_judge_ranks_on_validation_and_reports_each_held_out_as_calibrated_alone(tmp_path, tiny_model_dir):
    """`choose_judge`: the deterministic `grounding` judge beats a random-init likelihood judge on the synthetic
    labels' validation split, so it is chosen; each candidate's held-out figures are what calibrating it alone gives."""
    from faithforge.evaluation.calibration import make_calibration_set
    from faithforge.evaluation.heldout import calibrate_heldout, choose_judge
    from faithforge.evaluation.judge_options import judge_options
    from faithforge.core.config import EvaluateConfig
    from faithforge.evaluation.judges import get_judge

    labels = make_calibration_set(tmp_path / "cal.jsonl", n=40, seed=3)
    examples = read_labels(labels)

    def likelihood():
        options = judge_options(EvaluateConfig(judge="likelihood"), base_model=str(tiny_model_dir))
        return get_judge("likelihood", **options)

    choice = choose_judge([likelihood(), get_judge("grounding")], examples, labels_path=labels, seed=1)
    assert choice.chosen == "grounding"
    assert set(choice.validation_balanced_accuracy) == {"likelihood", "grounding"}
    assert choice.validation_balanced_accuracy["grounding"] > choice.validation_balanced_accuracy["likelihood"]
    for name, build in (("grounding", lambda: get_judge("grounding")), ("likelihood", likelihood)):
        alone = calibrate_heldout(build(), examples, labels_path=labels, seed=1)
        assert choice.calibrations[name].test == alone.test and choice.calibrations[name].thresholds == alone.thresholds
    with pytest.raises(UserError, match="two or more"):
        choose_judge([get_judge("grounding")], examples, labels_path=labels)


def test_eval_calibrate_choose_names_the_chosen_judge_and_stores_every_candidate(tmp_path):
    from faithforge.evaluation.calibration import make_calibration_set

    labels = make_calibration_set(tmp_path / "cal.jsonl", n=30, seed=2)
    ws = tmp_path / "ws"
    result = runner.invoke(app, ["calibrate", "--labels", str(labels), "--judge", "grounding", "--judge",
                                 "grounded-qa", "--choose", "--workspace", str(ws)])
    assert result.exit_code == 0, result.output
    assert "chosen on the validation split:" in result.output and "set evaluate.judge:" in result.output
    assert len(list((ws / "calibrations").glob("*.json"))) == 2
    data = json.loads(runner.invoke(app, ["calibrate", "--labels", str(labels), "--judge", "grounding", "--judge",
                                          "grounded-qa", "--choose", "--json", "--no-save"]).stdout)
    best = max(data["validation_balanced_accuracy"].values())
    assert data["validation_balanced_accuracy"][data["chosen"]] == best and data["stored"] == {}
    one = runner.invoke(app, ["calibrate", "--labels", str(labels), "--judge", "grounding", "--choose", "--no-save"])
    assert isinstance(one.exception, UserError) and "two or more" in str(one.exception)
