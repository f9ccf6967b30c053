"""What each stage returns: one pydantic model per stage output, handed from task to task.

Every output is small JSON (paths, keys, metrics; never a model or a tensor): Prefect keeps each task result for
the whole flow run, the run store records it (`model_dump(mode="json")`) and an offloaded stage's outputs travel
as JSON (`faithforge.offload.dispatch`). A stage's manifest holds the same fields, so a reused output reads back
with `model_validate` of the manifest.

Fields every output has sit on `StageOutput`. Outputs allow extra keys (`extra="allow"`): a manifest written by an
earlier FaithForge, or a key a later version adds, survives a round trip instead of failing a reuse.

Flow of outputs: `DatasetOutput` (generate) and `BaseModelOutput` (base model) → `WarmStartOutput` (the model the
later stages load; any `ModelOutput` will do) → `PairsOutput` → `ReferenceOutput` → `AdapterOutput` (DPO) and
`ControlOutput` (the SFT control; both in `TrainOutputs`) → `EvaluationOutput`.
"""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field


class StageOutput(BaseModel):
    """Fields every stage output has: where it was written, its store artifact, and how it came about."""

    model_config = ConfigDict(frozen=True, extra="allow")

    path: str
    """The stage's output folder (or file)."""
    artifact_id: Optional[str] = None
    """The run store's artifact for `path` (lineage parents point at it); None when not recorded."""
    reused: bool = False
    """A finished output from an earlier run, verified against its manifest's checksums."""
    recomputed_because: Optional[str] = None
    """Why an earlier output was not reused (one line), when there was one."""
    wall_seconds: Optional[float] = None
    """Seconds the task spent on the stage (set by `faithforge.tasks.stage_runner.run_stage`)."""
    measured_peak_reserved_bytes: Optional[int] = None
    """CUDA peak reserved bytes while the stage ran (stages that used CUDA), beside the gate's estimate."""
    measured_peak_allocated_bytes: Optional[int] = None
    offloaded_to: Optional[str] = None
    """The work pool the stage ran on when it was offloaded (set by `faithforge.tasks.offload.offload_task`)."""
    offload_flow_run: Optional[str] = None
    offload_flow_run_id: Optional[str] = None


class DatasetOutput(StageOutput):
    """generate (or import of the generation flow's export): the train/val/test example files."""

    files: dict[str, str]
    """split → JSONL file of examples."""
    counts: dict[str, int]
    """split → examples."""
    key: str
    """The dataset folder's content key (later stages' keys depend on it)."""


class ModelOutput(StageOutput):
    """A model folder a later stage loads (`save_pretrained` layout)."""


class BaseModelOutput(ModelOutput):
    """The starting model: the user's `model.path`, or the tiny model built for the demo."""

    built: bool = False
    """The tiny model was built by this run."""


class WarmStartOutput(ModelOutput):
    """The warm-start SFT's model, or the base model itself when the warm start is turned off (`skipped`)."""

    skipped: bool = False
    first_loss: Optional[float] = None
    final_loss: Optional[float] = None
    steps: Optional[int] = None
    resumed_from_step: Optional[int] = None
    train_seconds: Optional[float] = None


class PairsOutput(StageOutput):
    """Preference pairs in TRL's format, split train/validation by source."""

    train: str
    """JSONL file of the training pairs."""
    val: str
    """JSONL file of the validation pairs."""
    counts: dict[str, int]
    report: dict[str, Any] = Field(default_factory=dict)
    """How the pairs were built (`faithforge.data.pairs.PairBuildReport.to_dict`)."""


class ReferenceOutput(StageOutput):
    """The reference log-prob cache for the training pairs (`faithforge.training.reference_cache.ReferenceCache`)."""

    key: str
    """The cache key (SHA-256 over everything the numbers depend on)."""
    pairs: int
    """Training pairs scored."""
    device: str
    """`cuda` or `cpu`: where the reference pass ran."""
    quantization: Optional[dict[str, Any]] = None
    """The bitsandbytes settings the reference model was loaded with (NF4), None for 16/32-bit weights."""
    precision: Optional[str] = None
    """`nf4`, `bf16` or `fp32`: the train plan must load the policy the same way."""
    computed_pairs: Optional[int] = None
    shards: Optional[int] = None
    resumed_from_shard: Optional[int] = None
    processes: int = 1
    """Ranks that computed the shards (torchrun; the merged cache is the same bytes whatever the count)."""


class AdapterOutput(StageOutput):
    """The DPO LoRA adapter, its training history (`history.json`) and curves (`training.png`)."""

    steps: int
    micro_batch: int
    grad_accum: int
    first_loss: Optional[float] = None
    final_loss: Optional[float] = None
    final_margin: Optional[float] = None
    stuck_at_ln2: bool = False
    """The loss stayed at ln 2 after warm-up (nothing was learned)."""
    resumed_from: Optional[str] = None
    """The checkpoint training resumed from."""
    oom_backoffs: list[dict[str, Any]] = Field(default_factory=list)
    """One entry per CUDA OOM back-off: attempt, error, the micro-batch × accumulation tried next, measured peak."""
    train_seconds: Optional[float] = None
    merged_path: Optional[str] = None
    """The adapter merged into the base model (train.save_merged)."""
    plot: Optional[str] = None
    """The training curves (PNG)."""
    processes: int = 1
    """Processes that trained it (torchrun ranks; `micro_batch` × `grad_accum` × `processes` = the global batch)."""
    strategy: str = "single"
    """`single`, `ddp` or `fsdp` (the gate's plan)."""


class ControlOutput(StageOutput):
    """The LoRA SFT control adapter, trained on the chosen summaries with DPO's budget."""

    steps: int
    micro_batch: int
    first_loss: Optional[float] = None
    final_loss: Optional[float] = None
    resumed_from_step: Optional[int] = None
    train_seconds: Optional[float] = None


class TrainOutputs(BaseModel):
    """The train flow's result: the DPO adapter and, when configured, the SFT control."""

    model_config = ConfigDict(frozen=True)

    dpo: AdapterOutput
    control: Optional[ControlOutput] = None


class ModelRates(BaseModel):
    """One model's headline numbers in an evaluation."""

    model_config = ConfigDict(frozen=True)

    rate: Optional[float] = None
    """Hallucination rate (share of judged summaries with an unsupported claim)."""
    rate_ci: Optional[list[float]] = None
    """[low, high] confidence interval of `rate`."""
    recall: Optional[float] = None
    """Key-fact recall."""
    n: int = 0
    """Summaries judged."""
    length: Optional[float] = None
    """Mean summary length in words."""
    coverage: Optional[float] = None
    """Mean share of the key content covered (reference summary, else the article's lead)."""
    refusals: int = 0
    """Summaries that decline the task."""
    evasive: int = 0
    """Non-answers that are not refusals."""


class EvaluationOutput(StageOutput):
    """Rates before and after DPO (and for the control / a served model), compared with intervals."""

    markdown_path: str
    chart: str
    """The rates chart (PNG)."""
    judge_accuracy: str
    """The judge's stored held-out accuracy, or that it has none (one line)."""
    judge: str
    split: str
    unit: str = "summary"
    """What one judged output is, in the task's words (`faithforge.evaluation.wording`)."""
    recall_name: str = "key-fact recall"
    """What the recall column measures, in the task's words."""
    pairs_judge: Optional[str] = None
    """Which judge chose the pairs and whether it is the one that measures (one line), or None when no judge chose."""
    items: int
    seconds: float
    items_per_second: float
    models: dict[str, ModelRates]
    """label (`before`, `after`, `control`, `served`) → its headline numbers."""
    difference: dict[str, Any]
    """after − before: `rate` and `recall` intervals, `fixed`, `broken`, `mcnemar_p`."""
    control_difference: Optional[dict[str, Any]] = None
    served_difference: Optional[dict[str, Any]] = None
    table: list[dict[str, Any]] = Field(default_factory=list)
    """Rates, intervals and recall per model (the Prefect table artifact)."""
    markdown: Optional[str] = None
    """The full report; the evaluate task moves it into an artifact and drops it from the output."""
    sampler: str = ""
    """What wrote the answers and why (`faithforge.stages.sampler`)."""
