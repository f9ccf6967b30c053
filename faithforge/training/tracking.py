"""Training curves and results in the tracker the user already reads: TensorBoard, MLflow or W&B
(`train.report_to`, default none).

One FaithForge run is one tracker run: TensorBoard event files under `<workspace>/tracking/tensorboard/<run id>`,
one MLflow run tagged `faithforge.run_id` (and `prefect.flow_run_id` when a Prefect flow run started it) in the
MLflow store `MLFLOW_TRACKING_URI` names, else `sqlite:///<workspace>/tracking/mlflow.db`, and one W&B run with
the FaithForge run id as its id (offline unless `WANDB_MODE` says otherwise). Every stage process opens the same
run again, so a stage on another process or machine adds to it instead of starting its own.

DPO's curves come from TRL itself: the Trainer gets transformers' own `TensorBoardCallback`, `MLflowCallback` and
`WandbCallback` — what `report_to` would create — pointed at this run. The warm start and the SFT control are
FaithForge's own loops and log their loss per step here; the evaluation logs the rates with their intervals, the
judge and its measured accuracy, and each stage's GPU plan and measured peak.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterable

from faithforge.core.errors import UserError

TRACKERS = ("tensorboard", "mlflow", "wandb")
EXPERIMENT = "faithforge"
_PACKAGES = {"tensorboard": ("tensorboard", "pip install tensorboard"),
             "mlflow": ("mlflow", "pip install mlflow-skinny (or mlflow)"),
             "wandb": ("wandb", "pip install wandb")}


def check_trackers(report_to: Iterable[str]) -> None:
    """Every chosen tracker is importable (one line saying what to install otherwise), before any work starts."""
    import importlib.util

    for name in report_to:
        if name not in TRACKERS:
            raise UserError(f"train.report_to: {name!r} is not one of {', '.join(TRACKERS)}")
        module, install = _PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise UserError(f"train.report_to includes {name}, which is not installed: {install} "
                            "(or pip install 'faithforge[track]')")


def tracking_dir(workspace_root: str | Path) -> Path:
    return Path(workspace_root) / "tracking"


def mlflow_uri(workspace_root: str | Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{tracking_dir(workspace_root) / 'mlflow.db'}"


def _clean(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_\-\.\ :/]", "_", name)


class Tracker:
    """The trackers of one FaithForge run, opened by one stage; `close()` (or `with`) flushes and detaches."""

    def __init__(self, report_to: Iterable[str], workspace_root: str | Path, run_name: str,
                 tags: dict[str, str | None] | None = None):
        self.report_to = tuple(dict.fromkeys(report_to))
        check_trackers(self.report_to)
        self.run_name = run_name
        self.root = tracking_dir(workspace_root)
        self.tags = {k: v for k, v in (tags or {}).items() if v}
        self.writer = None
        self.mlflow_run_id: str | None = None
        self.mlflow_uri = mlflow_uri(workspace_root)
        self.wandb_run = None
        if "tensorboard" in self.report_to:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.tensorboard_dir))
        if "mlflow" in self.report_to:
            self._open_mlflow()
        if "wandb" in self.report_to:
            self._open_wandb()

    # where things go ------------------------------------------------------------------------------
    @property
    def tensorboard_dir(self) -> Path:
        return self.root / "tensorboard" / self.run_name

    def locations(self) -> dict[str, str]:
        """Where this run can be read (for the report)."""
        where: dict[str, str] = {}
        if self.writer is not None:
            where["tensorboard"] = f"tensorboard --logdir {self.tensorboard_dir}"
        if self.mlflow_run_id:
            where["mlflow"] = f"run {self.mlflow_run_id} in {self.mlflow_uri} (mlflow ui --backend-store-uri " \
                              f"{self.mlflow_uri})"
        if self.wandb_run is not None:
            where["wandb"] = f"run {self.run_name} in {self.root / 'wandb'} (wandb sync to upload)"
        return where

    def _open_mlflow(self) -> None:
        import mlflow
        from mlflow.tracking import MlflowClient

        self.root.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(self.mlflow_uri)
        client = MlflowClient(self.mlflow_uri)
        experiment = client.get_experiment_by_name(EXPERIMENT)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(EXPERIMENT)
        found = client.search_runs([experiment_id], f"tags.`faithforge.run_id` = '{self.run_name}'", max_results=1)
        if found:
            self.mlflow_run_id = found[0].info.run_id
        else:
            run = client.create_run(experiment_id, run_name=self.run_name,
                                    tags={"faithforge.run_id": self.run_name, **self.tags})
            self.mlflow_run_id = run.info.run_id
        for key, value in self.tags.items():
            client.set_tag(self.mlflow_run_id, key, value)
        if mlflow.active_run() is not None:
            mlflow.end_run()
        mlflow.start_run(run_id=self.mlflow_run_id)  # active: transformers' MLflowCallback logs into it

    def _open_wandb(self) -> None:
        import wandb

        os.environ.setdefault("WANDB_MODE", "offline")
        self.root.mkdir(parents=True, exist_ok=True)
        self.wandb_run = wandb.init(project=EXPERIMENT, id=self.run_name, name=self.run_name, resume="allow",
                                    dir=str(self.root), tags=[f"{k}={v}" for k, v in self.tags.items()])

    # logging --------------------------------------------------------------------------------------
    def log_metrics(self, metrics: dict[str, float | int | None], step: int | None = None) -> None:
        values = {_clean(k): float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None}
        if not values:
            return
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, global_step=step)
        if self.mlflow_run_id:
            from mlflow.tracking import MlflowClient

            client = MlflowClient(self.mlflow_uri)
            for key, value in values.items():
                client.log_metric(self.mlflow_run_id, key, value, step=step or 0)
        if self.wandb_run is not None:
            self.wandb_run.log(values, step=step)

    def log_text(self, values: dict[str, Any]) -> None:
        """Non-numeric facts (judge, its accuracy line, plans): tags in MLflow, text in TensorBoard, config in W&B."""
        values = {_clean(k): str(v)[:5000] for k, v in values.items() if v is not None}
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_text(key, value)
        if self.mlflow_run_id:
            from mlflow.tracking import MlflowClient

            client = MlflowClient(self.mlflow_uri)
            for key, value in values.items():
                client.set_tag(self.mlflow_run_id, key, value)
        if self.wandb_run is not None:
            self.wandb_run.config.update(values, allow_val_change=True)

    def trainer_callbacks(self) -> list:
        """transformers' own reporting callbacks (what `report_to` creates), pointed at this run."""
        from transformers.integrations import MLflowCallback, TensorBoardCallback, WandbCallback

        callbacks = []
        if self.writer is not None:
            callbacks.append(TensorBoardCallback(tb_writer=self.writer))
        if self.mlflow_run_id:
            callbacks.append(MLflowCallback())
        if self.wandb_run is not None:
            callbacks.append(WandbCallback())
        return callbacks

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None
        if self.mlflow_run_id:
            import mlflow

            mlflow.flush_async_logging()
            if mlflow.active_run() is not None:
                mlflow.end_run()
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def rate_metrics(evaluation: dict[str, Any]) -> dict[str, float | None]:
    """An evaluation output's headline numbers as flat metric names (`eval/after/rate`, `…/rate_ci_low`)."""
    metrics: dict[str, float | None] = {"eval/items": evaluation.get("items")}
    for label, rates in (evaluation.get("models") or {}).items():
        prefix = f"eval/{label}"
        metrics[f"{prefix}/rate"] = rates.get("rate")
        ci = rates.get("rate_ci") or [None, None]
        metrics[f"{prefix}/rate_ci_low"], metrics[f"{prefix}/rate_ci_high"] = ci[0], ci[1]
        metrics[f"{prefix}/recall"] = rates.get("recall")
    rate_diff = (evaluation.get("difference") or {}).get("rate") or {}
    for key in ("difference", "ci_low", "ci_high"):
        if isinstance(rate_diff.get(key), (int, float)):
            metrics[f"eval/difference/{key}"] = rate_diff[key]
    return metrics


def stage_metrics(stages: Iterable[Any]) -> tuple[dict[str, float | None], dict[str, str]]:
    """Each stage's GPU plan (estimate, micro-batch, precision, placement) and measured peak, from the run store
    rows (`StageOutput`); (numbers, text)."""
    numbers: dict[str, float | None] = {}
    text: dict[str, str] = {}
    for row in stages:
        if row.stage.startswith("gate:") and row.plan:
            stage = row.stage.split(":", 1)[1]
            plan = row.plan
            numbers[f"gpu/{stage}/estimated_peak_bytes"] = plan.get("estimated_peak_bytes")
            numbers[f"gpu/{stage}/batch_size"] = plan.get("batch_size")
            text[f"gpu/{stage}/plan"] = ", ".join(f"{k}={plan.get(k)}" for k in
                                                  ("placement", "precision", "batch_size", "grad_accum", "reason")
                                                  if plan.get(k) is not None)
        elif row.status == "completed" and row.outputs:
            for key in ("measured_peak_allocated_bytes", "measured_peak_reserved_bytes", "wall_seconds"):
                if isinstance(row.outputs.get(key), (int, float)):
                    numbers[f"stage/{row.stage}/{key}"] = row.outputs[key]
    return numbers, text
