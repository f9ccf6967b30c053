"""`train.report_to`: a 4-step DPO run (with its warm start, control and evaluation) on the tiny model, its curves
and results read back from the real TensorBoard event files and the real MLflow store (SQLite) it wrote."""

from __future__ import annotations

import importlib.util
import os
import uuid

import pytest

_MISSING = [name for name in ("tensorboard", "mlflow") if importlib.util.find_spec(name) is None]
if _MISSING:
    if os.environ.get("CI", "").lower() == "true":  # the test extra installs both: CI must run this, never skip it
        raise RuntimeError(f"CI must run the tracking tests, but {', '.join(_MISSING)} is not installed")
    pytest.skip(f"{', '.join(_MISSING)} not installed (pip install -e '.[track]')", allow_module_level=True)

SIZES = {
    "generate": {"train_sources": 60, "val_sources": 10, "test_sources": 12},
    "warm_start": {"steps": 10, "batch_size": 8, "checkpoint_every": 5},
    "reference": {"shard_size": 64},
    "train": {"steps": 4, "batch_size": 4, "checkpoint_every": 2, "report_to": ["tensorboard", "mlflow"]},
    "evaluate": {"bootstrap_samples": 100, "max_new_tokens": 16},
}


@pytest.mark.timeout(600)
def test_curves_and_results_reach_tensorboard_and_mlflow_and_the_export_card(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from faithforge.core.config import load_config
    from faithforge.stages.context import StageContext
    from faithforge.stages.evaluate import evaluate_models
    from faithforge.stages.gate import gate
    from faithforge.stages.generate import generate_examples
    from faithforge.stages.model import base_model, warm_start
    from faithforge.stages.pairs import build_pairs
    from faithforge.stages.reference import reference_logps
    from faithforge.stages.train import train_dpo, train_sft_control
    from faithforge.training.tracking import EXPERIMENT, mlflow_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = load_config(None, overrides={**SIZES, "workspace": str(tmp_path / "ws")}, environ={})
    ctx = StageContext.open(cfg)
    flow_run_id = str(uuid.uuid4())  # what a Prefect flow run records in the run store
    ctx.run_id = ctx.store.start_run("pipeline", cfg.model_dump(mode="json"), prefect_flow_run_id=flow_run_id)
    dataset = generate_examples(ctx)
    model = warm_start(ctx, base_model(ctx), dataset, gate(ctx, "warm_start"))
    pairs = build_pairs(ctx, dataset, model, None)
    train_plan = gate(ctx, "train")
    reference = reference_logps(ctx, model, pairs, gate(ctx, "reference"))
    dpo = train_dpo(ctx, model, pairs, reference, train_plan)
    control = train_sft_control(ctx, model, pairs, train_plan)
    evaluation = evaluate_models(ctx, model, dataset, pairs, dpo, control, gate(ctx, "evaluate"))
    assert set(evaluation.tracking) == {"tensorboard", "mlflow"}

    # TensorBoard: TRL's DPO curves (through transformers' TensorBoardCallback), FaithForge's own loops and results.
    events = EventAccumulator(str(ctx.workspace.root / "tracking" / "tensorboard" / ctx.run_id)).Reload()
    scalars = set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
    assert "train/rewards/margins" in scalars
    assert len(events.Scalars("warm_start/loss")) == 10 and len(events.Scalars("control/loss")) == 4
    assert events.Scalars("eval/after/rate")[0].value == pytest.approx(evaluation.models["after"].rate, abs=1e-6)
    assert events.Scalars("eval/before/rate_ci_high")[0].value == pytest.approx(
        evaluation.models["before"].rate_ci[1], abs=1e-6)

    # MLflow: one run for the FaithForge run, tagged with the flow run, holding the same numbers.
    client = MlflowClient(mlflow_uri(ctx.workspace.root))
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], f"tags.`faithforge.run_id` = '{ctx.run_id}'")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags["prefect.flow_run_id"] == flow_run_id and run.data.tags["judge"] == "grounding"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3, 4]
    dpo_losses = [m.value for m in client.get_metric_history(run.info.run_id, "loss")]
    assert dpo_losses[-1] == pytest.approx(dpo.final_loss, rel=1e-4)
    assert len(client.get_metric_history(run.info.run_id, "warm_start/loss")) == 10
    assert run.data.metrics["eval/after/rate"] == pytest.approx(evaluation.models["after"].rate, abs=1e-9)
    assert run.data.metrics["eval/items"] == evaluation.items
    assert "gpu/train/plan" in run.data.tags and run.data.metrics["gpu/train/batch_size"] >= 1

    from faithforge.stages.ui_report import pipeline_report_markdown

    report = pipeline_report_markdown(ctx.run_id, {"evaluate": evaluation.model_dump(mode="json")})
    assert f"tensorboard --logdir {ctx.workspace.root / 'tracking' / 'tensorboard' / ctx.run_id}" in report
    assert run.info.run_id in report

    # The export stage on the same run (recorded in the run store as the pipeline's tasks record each stage): its
    # model card carries the run's lineage and measured rates.
    from faithforge.stages.export_stage import export_trained_model

    for name, out in (("generate", dataset), ("warm_start", model), ("pairs", pairs), ("train", dpo),
                      ("evaluate", evaluation)):
        ctx.store.record_stage(ctx.run_id, name, status="completed", outputs=out.model_dump(mode="json"))
    ctx.config = ctx.config.model_copy(update={"export": ctx.config.export.model_copy(update={"format": "hf"})})
    exported = export_trained_model(ctx, dpo)
    card = (ctx.workspace.root / "exports" / ctx.run_id / "README.md").read_text()
    assert exported.path == str(ctx.workspace.root / "exports" / ctx.run_id)
    assert f"Pipeline run `{ctx.run_id}`" in card and "DPO: 4 steps" in card
    after = evaluation.models["after"]
    assert f"| after | {100 * after.rate:.1f}% [{100 * after.rate_ci[0]:.1f}%, {100 * after.rate_ci[1]:.1f}%]" in card
    assert evaluation.judge_accuracy in card and exported.merge_max_abs_logit_diff < 1e-3
    rate = evaluation.difference["rate"]
    assert (f"After − before: {100 * rate['difference']:+.1f} points [{100 * rate['ci_low']:+.1f}, "
            f"{100 * rate['ci_high']:+.1f}]" in card) and "{'before'" not in card
    rerun = load_config(ctx.workspace.root / "exports" / ctx.run_id / "faithforge-run-config.yaml", environ={})
    assert rerun.model_dump(mode="json") == cfg.model_dump(mode="json") and "faithforge demo --config" in card


def test_a_tracker_that_is_not_installed_is_refused_in_one_line(monkeypatch):
    import importlib.util

    from faithforge.core.errors import UserError
    from faithforge.training.tracking import check_trackers

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(UserError, match="pip install wandb"):
        check_trackers(["tensorboard", "wandb"])
