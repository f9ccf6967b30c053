"""With the warm start off, the demo's summary calls the baseline "your model", not "warm-start SFT", and does
not list the warm start among the stages reused from an earlier run."""

from __future__ import annotations

from faithforge.app.demo_report import print_summary


def _summary(warm_start: dict) -> dict:
    model = {"rate": 0.3, "rate_ci": [0.2, 0.4], "recall": 0.5, "n": 10}
    diff = {"difference": -0.1, "ci_low": -0.2, "ci_high": -0.01}
    return {"run_id": "r1", "wall_seconds": 12.0, "stages": {
        "warm_start": warm_start,
        "pairs": {"path": "/ws/pairs", "reused": True},
        "evaluate": {"items": 10, "judge": "grounding", "models": {"before": model, "after": model},
                     "difference": {"rate": diff, "mcnemar_p": 0.5, "fixed": 2, "broken": 1},
                     "markdown_path": "/ws/report.md", "chart": "/ws/rates.png"}}}


def test_skipped_warm_start_is_neither_the_baseline_nor_reused(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps table cells at the terminal width
    print_summary(_summary({"path": "/models/mine", "skipped": True, "reused": True}))
    out = capsys.readouterr().out
    assert "your model; no warm start" in out and "warm-start SFT" not in out
    assert "turned off" in out
    reused_line = next(line for line in out.splitlines() if line.startswith("reused from an earlier run"))
    assert "pairs" in reused_line and "warm_start" not in reused_line
    assert "/models/mine" not in out  # the skipped stage wrote nothing


def test_a_warm_start_that_ran_is_the_baseline(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    print_summary(_summary({"path": "/ws/models/sft-1", "reused": False}))
    out = capsys.readouterr().out
    assert "before DPO (warm-start SFT)" in out and "no warm start" not in out
