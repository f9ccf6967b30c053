"""`faithforge eval calibrate` and `faithforge eval compare` through typer's test runner."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from faithforge.app.cli_eval import app
from faithforge.core.errors import UserError
from faithforge.evaluation import EvalItem, evaluate_pair
from faithforge.evaluation.calibration import make_calibration_set
from faithforge.evaluation.persist import save_evaluation
from faithforge.core.store import Store

runner = CliRunner()


def test_calibrate_grounding(tmp_path):
    labels = make_calibration_set(tmp_path / "cal.jsonl", n=20, seed=1)
    workspace = ["--workspace", str(tmp_path / "ws")]
    result = runner.invoke(app, ["calibrate", "--labels", str(labels), *workspace])
    assert result.exit_code == 0, result.output
    assert "judge grounding (grounding-rules-v2): thresholds chosen on" in result.output
    assert "balanced accuracy" in result.output and "stored in" in result.output
    data = json.loads(runner.invoke(app, ["calibrate", "--labels", str(labels), "--json", *workspace]).stdout)
    assert data["validation"] + data["test"]["n"] == 20 and data["test"]["precision"] == 1.0


def test_calibrate_errors_are_user_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"source": "s", "summary": "t", "label": "yes"}\n')
    result = runner.invoke(app, ["calibrate", "--labels", str(bad), "--workspace", str(tmp_path / "ws")])
    assert isinstance(result.exception, UserError) and "line 1: unknown label 'yes'" in str(result.exception)
    result = runner.invoke(app, ["calibrate", "--labels", str(bad), "--judge", "nli", "--workspace", str(tmp_path)])
    assert isinstance(result.exception, UserError) and "needs a checkpoint" in str(result.exception)


def test_compare(tmp_path):
    items = [EvalItem(id="a", source="Alice bought 3 lamps .", key_facts=["Alice"])]
    report = evaluate_pair(items, ["Bob bought 3 lamps ."], ["Alice bought 3 lamps ."], bootstrap_samples=50)
    store = Store(f"sqlite:///{tmp_path / 'faithforge.db'}")
    first = save_evaluation(store, report, uri="a.json")
    second = save_evaluation(store, report, uri="b.json")
    result = runner.invoke(app, ["compare", first, second, "--workspace", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "after rate" in result.output and "0.0000" in result.output
    missing = runner.invoke(app, ["compare", first, second, "--workspace", str(tmp_path / "empty")])
    assert isinstance(missing.exception, UserError) and "no run store" in str(missing.exception)


def test_compare_warns_when_one_judge_name_ran_with_another_checkpoint(tmp_path):
    """Two evaluations by `nli` with different checkpoints, or by a judge with different settings of its own, are
    not comparable: the name alone said they were (an attack, 2026-12-07)."""
    from faithforge.evaluation import evaluate_single
    from faithforge.evaluation.compare import compare_reports
    from faithforge.evaluation.persist import compare_runs
    from faithforge.evaluation.verdict import Verdict

    class Strict:
        name = "nli"

        def __init__(self, checkpoint: str):
            self.checkpoint = checkpoint

        def judge(self, source, summary, *, truncated=False):
            return Verdict(judge=self.name, hallucinated="Bob" in summary, truncated=truncated)

    items = [EvalItem(id="a", source="Alice bought 3 lamps .", key_facts=["Alice"])]
    store = Store(f"sqlite:///{tmp_path / 'faithforge.db'}")
    saved = []
    for checkpoint in ("model-a", "model-b", "model-b"):
        judge = Strict(checkpoint)
        before = evaluate_single(items, ["Bob bought 3 lamps ."], judge, label="before")
        after = evaluate_single(items, ["Alice bought 3 lamps ."], judge, label="after")
        assert after.judge_checkpoint == checkpoint
        saved.append(save_evaluation(store, compare_reports(before, after, bootstrap_samples=50), uri=f"{len(saved)}"))
    warnings = compare_runs(store, saved[0], saved[1])["warnings"]
    assert any("the judge nli differs (model-a vs model-b)" in w for w in warnings), warnings
    assert compare_runs(store, saved[1], saved[2])["warnings"] == []
