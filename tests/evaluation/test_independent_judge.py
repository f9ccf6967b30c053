"""The judge that measures is not the judge that chose (the judge issue, item 5): `demo --real` chooses its pairs
with `grounding` and measures with `grounded-qa`, both calibrated on the hand labels, and the report and the
terminal name both; a run whose chooser is its measurer says so beside the rate."""

from __future__ import annotations

from faithforge.app.real_demo import REAL_SETTINGS, calibrate_judge_on_labels
from faithforge.core.config import PipelineConfig
from faithforge.core.workspace import Workspace
from faithforge.stages.evaluate import chooser_line, pairs_chooser


def test_the_real_demo_chooses_and_measures_with_different_judges():
    cfg = PipelineConfig.model_validate(REAL_SETTINGS)
    assert pairs_chooser(cfg) == "grounding" and cfg.evaluate.judge == "grounded-qa"


def test_the_line_names_the_chooser_with_its_held_out_accuracy_and_the_measurer(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    assert calibrate_judge_on_labels(ws.root) is not None  # both judges, from the hand labels in tests/data
    line = chooser_line(PipelineConfig.model_validate(REAL_SETTINGS), ws.root / "calibrations")
    assert line.startswith("Pairs chosen by `grounding` (held out: precision 1.00, recall 0.50 on 60 labels)"), line
    assert line.endswith("measured by `grounded-qa`, another judge.")


def test_a_chooser_that_also_measures_is_called_out_and_no_chooser_no_line(tmp_path):
    same = PipelineConfig.model_validate({"pairs": {"builder": "on-policy"}, "evaluate": {"judge": "grounding"}})
    assert "the judge that measures: this rate measures what DPO was trained to please" in chooser_line(same, tmp_path)
    assert chooser_line(PipelineConfig(), tmp_path) is None  # the toy demo's synthetic pairs: no judge chose


def test_your_documents_are_judged_by_the_best_judge_measured_on_real_news_and_the_report_says_it_also_chose():
    """The judge issue, item 6: with `--documents` the default is the judge measured best offline on the QAGS
    held-out half (`likelihood`, 0.621 in bfloat16 against `grounding`'s 0.473, BENCHMARKS.md). It is the only offline judge
    above chance there, so it chooses too, and the chooser line says what that means."""
    from faithforge.app.real_demo import REAL_DOCUMENTS_SETTINGS

    data = {**REAL_DOCUMENTS_SETTINGS, "data": {**REAL_DOCUMENTS_SETTINGS["data"], "documents_path": "docs.jsonl"}}
    cfg = PipelineConfig.model_validate(data)
    assert cfg.evaluate.judge == "likelihood" and pairs_chooser(cfg) == "likelihood"
    assert "what DPO was trained to please" in chooser_line(cfg, __import__("pathlib").Path("/nonexistent"))
