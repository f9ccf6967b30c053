"""`faithforge gpu` (tested on its own Typer app); the calibration itself is tested in tests/gpu_calibration/."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from faithforge.gpu_calibration.calibrate import NO_CUDA_MESSAGE
from faithforge.app.cli_gpu import app
from faithforge.gpu.model_shape import load_model_shape

runner = CliRunner()
PLAN_KEYS = {"placement", "model", "batch_size", "grad_accum", "ref_strategy", "estimated_peak_bytes",
             "usable_bytes", "reason"}


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("FAITHFORGE_GPU_PROFILE", "FAITHFORGE_CONFIG"):
        monkeypatch.delenv(name, raising=False)


def test_json_prints_one_object_with_snapshot_and_every_stage_plan():
    result = runner.invoke(app, ["--profile", "rtx5070-12gb", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert set(data) == {"snapshot", "plans", "not_planned"} and data["not_planned"] == {}
    assert data["snapshot"]["devices"][0]["free_bytes"] == 10_480_000_000  # "10.48" read as GB, the stricter
    assert set(data["plans"]) == {"generate", "reference", "train", "evaluate", "warm_start"}
    for plan in data["plans"].values():
        assert PLAN_KEYS <= set(plan)
    assert data["plans"]["train"]["ref_strategy"] in ("cached", "live")
    assert data["plans"]["train"]["placement"] == "gpu"


def test_config_file_model_and_no_gpu_without_pool_still_prints_plans(tmp_path):
    model_dir = tmp_path / "qwen"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(
        (load_model_shape.__globals__["SHIPPED_CONFIGS_DIR"] / "qwen3-8b.json").read_text(), encoding="utf-8")
    config = tmp_path / "run.yaml"
    config.write_text(f"model:\n  path: {model_dir}\ngpu:\n  offload_pool: a100\n", encoding="utf-8")
    result = runner.invoke(app, ["--profile", "none", "--json", "--config", str(config)])
    assert result.exit_code == 0, result.output
    plans = json.loads(result.output)["plans"]
    assert {plans[s]["placement"] for s in ("reference", "train", "evaluate")} == {"offload"}
    assert plans["train"]["offload_target"] == "a100" and plans["train"]["model"] == "qwen"


def test_the_generate_plan_is_for_the_model_generate_runs_not_the_template(tmp_path):
    """With `generate.backend: ollama` and `model: qwen3:30b-a3b` (and no `gpu.generation_models`) the plan said the
    template teacher writes the data on the CPU; `demo` then used Ollama (an attack, 2026-12-07). A model the
    gate cannot size has no plan, and the reason is the generation gate's own (`model_tiers.sized_tiers`)."""
    ollama = tmp_path / "ollama.yaml"
    ollama.write_text("generate: {backend: ollama, model: 'qwen3:30b-a3b', fallback_models: ['qwen3:8b'], "
                      "spec: configs/specs/grounded-summaries.yaml}\n")
    plan = json.loads(runner.invoke(app, ["--profile", "rtx5070-12gb", "--json", "--config", str(ollama)]).output)
    generate = plan["plans"]["generate"]
    assert generate["model"] == "qwen3:8b" and generate["placement"] == "gpu", generate  # 30B does not fit 12 GB
    assert plan["not_planned"] == {}
    for backend, url, why in (("openai", "https://api.example.com", "the model runs on another machine"),
                              ("openai", "http://127.0.0.1:8000", "the gate cannot size a model the openai server "
                                                                  "serves")):
        served = tmp_path / "served.yaml"
        served.write_text(f"generate: {{backend: {backend}, model: Qwen/Qwen3-8B, base_url: '{url}', "
                          "spec: configs/specs/grounded-summaries.yaml}\n")
        plan = json.loads(runner.invoke(app, ["--profile", "rtx5070-12gb", "--json", "--config", str(served)]).output)
        assert "generate" not in plan["plans"] and plan["not_planned"] == {
            "generate": f"generate runs Qwen/Qwen3-8B on the openai backend, not planned here: {why}: configured "
                        "values"}
        table = runner.invoke(app, ["--profile", "rtx5070-12gb", "--config", str(served)]).output
        assert "not planned here" in table and "template" not in table


def test_rich_tables_by_default_whole_when_piped(monkeypatch):
    """Written to a pipe (as here), rich's 80 columns cut every cell to five characters ("gene…", "refe…"): a
    report pasted into an issue was unreadable (an attack, 2026-12-07)."""
    monkeypatch.delenv("COLUMNS", raising=False)
    result = runner.invoke(app, ["--profile", "a100-80gb"])
    assert result.exit_code == 0, result.output
    assert "Plans" in result.output and "NVIDIA A100-SXM4-80GB" in result.output and "train" in result.output
    for whole in ("generate", "reference", "warm_start", "placement", "strategy × processes", "headroom GiB"):
        assert whole in result.output, whole


def test_unknown_profile_exits_2_listing_known_profiles():
    result = runner.invoke(app, ["--profile", "gtx-potato"])
    assert result.exit_code == 2
    assert "rtx5070-12gb" in result.output and "a100-80gb" in result.output


def test_calibrate_without_cuda_says_it_needs_a_gpu():
    result = runner.invoke(app, ["calibrate", "--model", "qwen2.5-7b"])
    assert result.exit_code == 2 and NO_CUDA_MESSAGE in result.output


def test_rtx5070_plans_qlora_dpo_of_a_7b_model_locally_within_10_48e9_bytes(tmp_path):
    """Issue 13: qwen2.5-7b at 1,024 tokens on the 12 GB RTX 5070 with 10.48e9 bytes free."""
    config = tmp_path / "ff.yaml"
    config.write_text("gpu:\n  sizing_model: qwen2.5-7b\nreference:\n  max_length: 1024\n", encoding="utf-8")
    result = runner.invoke(app, ["--profile", "rtx5070-12gb", "--json", "--config", str(config)])
    assert result.exit_code == 0, result.output
    plans = json.loads(result.output)["plans"]
    train = plans["train"]
    assert (train["placement"], train["ref_strategy"], train["precision"]) == ("gpu", "cached", "nf4")
    assert train["batch_size"] >= 1 and train["max_tokens"] == 1024
    assert train["breakdown"]["cuda_context_bytes"] > 0
    assert train["estimated_peak_bytes"] <= 10_480_000_000
    assert train["estimated_peak_bytes"] <= train["usable_bytes"]
    for stage in ("reference", "evaluate"):
        assert plans[stage]["precision"] == "nf4"
    assert plans["warm_start"]["precision"] == "bf16"  # a full fine-tune: never 4-bit
    assert plans["warm_start"]["settings"]["optimizer"] == "adamw-torch"
