"""The label stage's bookkeeping, without Prefect: labels are saved and the run's judge is re-calibrated on them,
built as the evaluate stage builds it (the Prefect side, the pause form in the UI, is tests/flows/test_label_ui.py)."""

from __future__ import annotations

import json
from pathlib import Path

from faithforge.stages.outputs import EvaluationOutput
from tests.fixtures.throwaway_kinds import throwaway_model_folder_judge  # noqa: F401 - a fixture


def _evaluation(folder: Path, judge: str) -> EvaluationOutput:
    """An evaluation folder with 24 outputs, half of them long (over 3 words), as the evaluate stage leaves it."""
    folder.mkdir(parents=True)
    summaries = [("Ivo came.", False), ("Ivo delivered the old books to Goran in Paris.", True)] * 12
    rows = [{"id": f"before:{i}", "item": str(i), "model": "before", "source": f"Ivo came on day {i}.",
             "summary": s, "judge": judge, "judge_hallucinated": long, "spans": []}
            for i, (s, long) in enumerate(summaries)]
    (folder / "outputs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "report.md").write_text("# Hallucination evaluation\n")
    return EvaluationOutput(path=str(folder), markdown_path=str(folder / "report.md"), chart="", judge_accuracy="",
                            judge=judge, split="test", items=len(rows), seconds=0.0, items_per_second=0.0,
                            models={}, difference={})


def test_the_judge_is_recalibrated_on_the_labels_with_the_runs_model_folder(throwaway_model_folder_judge,
                                                                            tiny_model_dir, tmp_path):
    """A judge that reads the run's model folder (`run_inputs`) gets it here too: before, the label stage built
    the judge without it, so such a judge (and the likelihood judge on the run's model) was never re-calibrated."""
    from faithforge.core.config import load_config
    from faithforge.evaluation.labeling import read_label_items
    from faithforge.stages.context import StageContext
    from faithforge.stages.label import record_labels

    name = throwaway_model_folder_judge
    cfg = load_config(None, overrides={"workspace": str(tmp_path / "ws"), "evaluate": {"judge": name,
                      "judge_options": {name: {"max_words": 3}}}}, environ={})
    evaluation = _evaluation(tmp_path / "eval", name)
    items = read_label_items(evaluation.path)
    answers = [(item, "unsupported" if len(item.summary.split()) > 3 else "supported") for item in items]
    out = record_labels(StageContext.open(cfg), evaluation, answers, asked=len(items), timed_out=0,
                        base_model=str(tiny_model_dir))
    assert out.labeled == 24 and out.calibration and not out.calibration.startswith("not re-calibrated"), out
    assert "balanced accuracy 1.00" in out.calibration
    handed = json.loads((tmp_path / "ws" / "cache" / name / "handed.json").read_text())
    assert handed["base_model"] == str(tiny_model_dir)
