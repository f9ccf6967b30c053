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
