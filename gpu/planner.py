"""Choose where and how each stage runs, from a snapshot and the estimator. Pure: no I/O, no Prefect.

Rules:
- Safety margin per GPU: max(1 GiB, 10 % of its total). usable = free − margin. A plan is `gpu` (this
  machine's GPU) only if its (calibrated) estimate is ≤ usable; the GPU with the most usable memory is tried.
- Search order. generate: candidates in order (stay-local) or the preferred one only (keep-model); per
  model, max tokens from the requested value down to `min_max_tokens` (halving), and at each, parallel
  requests from the requested batch down to 1 (1 = single-example mode). reference/evaluate/warm_start: batch
  halving.
  train: micro-batch over the divisors of the effective batch, largest first (grad_accum = effective ÷
  micro-batch, so the effective batch never changes); at each micro-batch a live reference pass is tried
  before cached reference log-probs when `ref_strategy="auto"`.
- Several GPUs (train, reference): the node is planned. DDP over the n GPUs with the most usable memory when
  each of them holds the one-GPU plan (train: micro-batch over the divisors of effective ÷ n, accumulation
  = effective ÷ (micro-batch × n), so micro × accumulation × n is the user's effective batch; DDP's gradient
  buckets are charged); FSDP (train only, QLoRA with `bnb_4bit_quant_storage` = the compute dtype) when no one
  GPU holds the model but n together do. n runs from all visible GPUs down to 2; the weakest GPU of the n
  sizes the plan. `max_processes` caps n (1: never more than one process).
- On the CPU, `cpu_processes` > 1 asks for that many gloo DDP processes (train, reference).
- Nothing fits locally (or no GPU): `cpu` when the model has at most `cpu_max_params` parameters, else
  `offload` of the preferred model to `offload_target`, sized on `offload_snapshot` (an A100 by default).
  `offload_target=None` yields an offload plan that `require_runnable` refuses with the two ways out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Iterator, Literal, Sequence, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from faithforge.gpu.corrections import STAGES, Corrections
from faithforge.gpu.errors import PlanNotRunnableError
from faithforge.gpu.estimate import (Estimate, Optimizer, Quantization, ReferenceModel, data_parallel_bytes,
                          estimate_full_finetune, estimate_hf_generate, estimate_ollama, estimate_reference,
                          estimate_train, estimate_train_fsdp)
from faithforge.gpu.model_shape import ModelShape
from faithforge.gpu.ollama_sizes import OllamaModel
from faithforge.gpu.profiles import profile_snapshot
from faithforge.gpu.snapshot import GpuDevice, GpuSnapshot
from faithforge.gpu.units import GiB_bytes, format_gib

Stage = Literal[STAGES]  # type: ignore[valid-type]
#: Where a stage runs: this machine's GPU, this machine's CPU, or the offload pool. (Named `local` before
#: 2026-12-07, which was also a backend's and a work pool's name; a stored plan saying `local` still reads back.)
Placement = Literal["gpu", "cpu", "offload"]
Strategy = Literal["single", "ddp", "fsdp"]
NODE_STAGES = ("train", "reference")
Policy = Literal["stay-local", "keep-model"]
Candidate = Union[ModelShape, OllamaModel]

MIN_MARGIN_BYTES = 1 * GiB_bytes
MARGIN_FRACTION = 0.10
DEFAULT_CPU_MAX_PARAMS = 1_000_000_000
DEFAULT_OFFLOAD_PROFILE = "a100-40gb"
TEMPLATE_MODEL = "template"


@dataclass(frozen=True)
class StageRequest:
    """What a stage asks for before the gate shrinks it. Token counts are tokens, not bytes."""

    batch_size: int
    """Effective batch: train = pairs per optimizer step; reference = pairs per forward; generate = parallel
    requests; evaluate = summaries generated together."""
    seq_len: int = 512
    """train/reference: prompt + completion tokens per sequence."""
    max_tokens: int = 4096
    """generate/evaluate: most new tokens per request."""
    prompt_tokens: int = 1024
    """generate/evaluate: prompt tokens per request."""
    min_max_tokens: int | None = None
    """generate: the gate may lower max_tokens down to this (default min(max_tokens, 4096))."""
    quantization: Quantization = "nf4"
    """Weights on a GPU (CPU plans use fp32). warm_start (a full fine-tune) needs bf16 or fp32."""
    lora_r: int = 16
    optimizer: Optimizer = "paged-adamw-8bit"
    """train on a GPU (the train stage uses bitsandbytes paged_adamw_8bit there); CPU plans use torch AdamW."""
    gradient_checkpointing: bool = True
    ref_strategy: Literal["auto", "live", "cached"] = "auto"
    reference_model: ReferenceModel = "adapters-disabled"
    kv_bytes_per_value: float = 2.0

    def __post_init__(self) -> None:
        for name in ("batch_size", "seq_len", "max_tokens", "prompt_tokens", "lora_r"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.min_max_tokens is not None and not 1 <= self.min_max_tokens:
            raise ValueError(f"min_max_tokens must be a positive integer, got {self.min_max_tokens!r}")
        if self.ref_strategy not in ("auto", "live", "cached"):
            raise ValueError(f"ref_strategy must be auto, live or cached, got {self.ref_strategy!r}")


class Plan(BaseModel):
    """The gate's decision for one stage. All memory numbers in bytes.

    Frozen: a changed plan is a copy (`model_copy(update=...)`, `with_micro_batch`). Keys it does not know (the
    gate record's `snapshot`, `skipped`, ...) are ignored by `Plan.model_validate`, so the full record the gate
    writes reads back as the plan the stage starts with.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    stage: str
    placement: Placement
    model: str
    batch_size: int
    """Micro-batch (train), pairs per forward (reference), parallel requests (generate), batch (evaluate)."""
    grad_accum: int
    max_tokens: int
    """generate/evaluate: max new tokens; train/reference: tokens per sequence."""
    ref_strategy: Literal["cached", "live"] | None
    estimated_peak_bytes: int
    usable_bytes: int | None
    headroom_bytes: int | None
    margin_bytes: int
    breakdown: dict[str, int]
    reason: str
    fits: bool
    policy: Policy
    requested_batch_size: int
    requested_max_tokens: int
    gpu_index: int | None = None
    gpu_name: str | None = None
    offload_target: str | None = None
    correction_factor: float = 1.0
    settings: dict[str, Any] = Field(default_factory=dict)
    precision: str = "fp32"
    """How the stage loads the model's weights: `nf4` (4-bit NF4, bf16 compute), `bf16`, or `fp32` (CPU)."""
    gpu_uuid: str | None = None
    """The planned GPU's UUID (`gpu` plans): the stage restricts CUDA visibility to it."""
    num_ctx: int | None = None
    """generate/evaluate with an Ollama model: the context per request (prompt + max tokens) the estimate
    assumes; the request must send exactly this `num_ctx` (a different one makes Ollama reload the model)."""
    strategy: Strategy = "single"
    """`single`: one process on one device. `ddp`: `num_processes` data-parallel replicas (each GPU holds the whole
    model; train: each rank trains `batch_size` × `grad_accum` pairs per step; reference: each rank scores its
    own shards). `fsdp`: the model sharded over `num_processes` GPUs (QLoRA with the 4-bit weights stored in the
    compute dtype). `estimated_peak_bytes` is always per GPU (per process)."""
    num_processes: int = 1
    """Processes the stage is launched with (torchrun `--nproc_per_node`): one per GPU, or gloo ranks on the CPU."""
    gpu_uuids: list[str] = Field(default_factory=list)
    """The GPUs of a multi-process `gpu` plan, rank order (rank r uses `gpu_uuids[r]`)."""

    @field_validator("placement", mode="before")
    @classmethod
    def _older_name(cls, value: Any) -> Any:
        """A gate record written before the placement `local` was renamed `gpu` reads back (a resumed run)."""
        return "gpu" if value == "local" else value

    def to_dict(self) -> dict[str, Any]:
        """The plan as JSON-able data (what the run store and the Prefect artifacts hold)."""
        return self.model_dump(mode="json")

    @property
    def effective_batch(self) -> int:
        """Micro-batch × gradient accumulation: what one optimizer step of one process sees (train)."""
        return self.batch_size * self.grad_accum

    @property
    def global_batch(self) -> int:
        """Micro-batch × accumulation × processes: pairs per optimizer step over all ranks (train)."""
        return self.batch_size * self.grad_accum * self.num_processes

    def with_micro_batch(self, batch_size: int, grad_accum: int) -> "Plan":
        """A copy with a new micro-batch / accumulation: the batch a stage starts with, or the OOM back-off's."""
        return self.model_copy(update={"batch_size": batch_size, "grad_accum": grad_accum})

    @classmethod
    def manual(cls, stage: str, placement: Placement = "cpu", *, precision: str = "fp32", batch_size: int = 1,
               grad_accum: int = 1, reason: str = "", **fields: Any) -> "Plan":
        """A hand-written plan (tests, benchmarks, calibration, a stage run without the gate): what it names,
        neutral values for the rest (no estimate, nothing refused)."""
        return cls(stage=stage, placement=placement, model=fields.pop("model", ""), batch_size=batch_size,
                   grad_accum=grad_accum, max_tokens=fields.pop("max_tokens", 0),
                   ref_strategy=fields.pop("ref_strategy", None), estimated_peak_bytes=0, usable_bytes=None,
                   headroom_bytes=None, margin_bytes=0, breakdown={}, reason=reason, fits=True,
                   policy=fields.pop("policy", "stay-local"), requested_batch_size=batch_size * grad_accum,
                   requested_max_tokens=0, precision=precision, **fields)


def margin_bytes(device: GpuDevice) -> int:
    return max(MIN_MARGIN_BYTES, int(MARGIN_FRACTION * device.total_bytes))


def usable_bytes(device: GpuDevice) -> int:
    return max(0, device.free_bytes - margin_bytes(device))


def _halving(start: int, floor: int = 1) -> list[int]:
    values, value = [], start
    while value > floor:
        values.append(value)
        value //= 2
    if not values or values[-1] != floor:
        values.append(min(floor, start))
    return list(dict.fromkeys(values))


def _divisors_desc(n: int) -> list[int]:
    return [d for d in range(n, 0, -1) if n % d == 0]


@dataclass(frozen=True)
class _Option:
    batch_size: int
    grad_accum: int
    max_tokens: int
    ref_strategy: Literal["cached", "live"] | None
    estimate: Estimate


def _estimate(stage: str, model: Candidate, req: StageRequest, batch: int, tokens: int,
              ref: Literal["cached", "live"] | None, device: Literal["cuda", "cpu"]) -> Estimate:
    quant: Quantization = req.quantization if device == "cuda" else "fp32"
    if stage == "warm_start":
        if isinstance(model, OllamaModel):
            raise ValueError(f"stage warm_start needs a Hugging Face model (config.json), not {model.name}")
        return estimate_full_finetune(model, batch_size=batch, seq_len=tokens,
                                      quantization="bf16" if quant in ("nf4", "int8") else quant, device=device)
    if isinstance(model, OllamaModel):
        if stage in ("reference", "train"):
            raise ValueError(f"stage {stage} needs a Hugging Face model (config.json), not the Ollama model {model.name}")
        return estimate_ollama(model, parallel=batch, context_tokens=req.prompt_tokens + tokens,
                               kv_bytes_per_value=req.kv_bytes_per_value, stage=stage)
    if stage in ("generate", "evaluate"):
        return estimate_hf_generate(model, batch_size=batch, prompt_tokens=req.prompt_tokens, max_new_tokens=tokens,
                                    quantization=quant, kv_bytes_per_value=req.kv_bytes_per_value, stage=stage,
                                    device=device, adapter_lora_r=req.lora_r if stage == "evaluate" else None)
    if stage == "reference":
        return estimate_reference(model, batch_size=batch, seq_len=tokens, quantization=quant, device=device)
    # The CPU train path uses torch AdamW and no gradient checkpointing (faithforge/stages/train.py).
    return estimate_train(model, micro_batch=batch, seq_len=tokens, quantization=quant, lora_r=req.lora_r,
                          optimizer=req.optimizer if device == "cuda" else "adamw-fp32",
                          gradient_checkpointing=req.gradient_checkpointing and device == "cuda",
                          ref_strategy=ref or "cached", reference_model=req.reference_model, device=device)


def _options(stage: str, model: Candidate, req: StageRequest, device: Literal["cuda", "cpu"]) -> Iterator[_Option]:
    """Every setting the gate may choose, best first."""
    if stage == "generate":
        floor = req.min_max_tokens or min(req.max_tokens, 4096)
        for tokens in _halving(req.max_tokens, min(floor, req.max_tokens)):
            for batch in _halving(req.batch_size):
                yield _Option(batch, 1, tokens, None, _estimate(stage, model, req, batch, tokens, None, device))
    elif stage == "evaluate":
        for batch in _halving(req.batch_size):
            yield _Option(batch, 1, req.max_tokens, None, _estimate(stage, model, req, batch, req.max_tokens, None, device))
    elif stage in ("reference", "warm_start"):
        for batch in _halving(req.batch_size):
            yield _Option(batch, 1, req.seq_len, None, _estimate(stage, model, req, batch, req.seq_len, None, device))
    else:
        refs: tuple[Literal["cached", "live"], ...] = (
            ("live", "cached") if req.ref_strategy == "auto" else (req.ref_strategy,))  # type: ignore[assignment]
        for micro in _divisors_desc(req.batch_size):
            for ref in refs:
                yield _Option(micro, req.batch_size // micro, req.seq_len, ref,
                              _estimate(stage, model, req, micro, req.seq_len, ref, device))


def _peak(option: _Option, factor: float) -> int:
    return int(math.ceil(option.estimate.total_bytes * factor))


def _search(stage: str, model: Candidate, req: StageRequest, usable: int, factor: float,
            device: Literal["cuda", "cpu"] = "cuda") -> tuple[_Option | None, _Option]:
    """(first option that fits, the smallest option tried)."""
    last: _Option | None = None
    for option in _options(stage, model, req, device):
        if _peak(option, factor) <= usable:
            return option, option
        last = option
    assert last is not None
    return None, last


def _breakdown(option: _Option, factor: float) -> dict[str, int]:
    terms = dict(option.estimate.terms)
    correction = _peak(option, factor) - option.estimate.total_bytes
    if correction:
        terms["calibration_correction_bytes"] = correction
    return terms


def _changes(stage: str, option: _Option, req: StageRequest) -> str:
    parts = []
    if option.batch_size != req.batch_size:
        what = "micro-batch" if stage == "train" else "batch"
        parts.append(f"{what} {req.batch_size} → {option.batch_size}"
                     + (f" with gradient accumulation {option.grad_accum} (effective batch kept at "
                        f"{req.batch_size})" if stage == "train" else ""))
    if stage == "generate" and option.max_tokens != req.max_tokens:
        parts.append(f"max tokens {req.max_tokens} → {option.max_tokens}")
    if option.batch_size == 1 and stage == "generate" and req.batch_size > 1:
        parts.append("single-example mode")
    return "; ".join(parts)


def _make_plan(stage: str, placement: Placement, option: _Option, req: StageRequest, policy: Policy, *,
               usable: int | None, margin: int, factor: float, fits: bool, reason: str,
               device: GpuDevice | None = None, offload_target: str | None = None) -> Plan:
    peak = _peak(option, factor)
    quant = option.estimate.settings.get("quantization")
    num_ctx = option.estimate.settings.get("context_tokens")
    return Plan(
        stage=stage, placement=placement, model=option.estimate.model, batch_size=option.batch_size,
        grad_accum=option.grad_accum, max_tokens=option.max_tokens, ref_strategy=option.ref_strategy,
        estimated_peak_bytes=peak, usable_bytes=usable, headroom_bytes=None if usable is None else usable - peak,
        margin_bytes=margin, breakdown=_breakdown(option, factor), reason=reason, fits=fits, policy=policy,
        requested_batch_size=req.batch_size,
        requested_max_tokens=req.max_tokens if stage in ("generate", "evaluate") else req.seq_len,
        gpu_index=None if device is None or placement != "gpu" else device.index,
        gpu_name=None if device is None else device.name, offload_target=offload_target,
        correction_factor=factor, settings=dict(option.estimate.settings),
        precision=quant if quant in ("nf4", "bf16", "fp32") else ("gguf" if num_ctx else "fp32"),
        gpu_uuid=None if device is None or placement != "gpu" else device.uuid,
        num_ctx=num_ctx,
    )


def _best_device(snapshot: GpuSnapshot) -> GpuDevice | None:
    return max(snapshot.devices, key=usable_bytes, default=None)


def _template_plan(stage: str, req: StageRequest, policy: Policy) -> Plan:
    return Plan(stage=stage, placement="cpu", model=TEMPLATE_MODEL, batch_size=req.batch_size, grad_accum=1,
                max_tokens=req.max_tokens, ref_strategy=None, estimated_peak_bytes=0, usable_bytes=None,
                headroom_bytes=None, margin_bytes=0, breakdown={}, policy=policy, fits=True,
                requested_batch_size=req.batch_size, requested_max_tokens=req.max_tokens,
                reason="No generation model is configured, so the built-in template backend writes the data on "
                       "the CPU; it needs no GPU memory.")


def plan_stage(snapshot: GpuSnapshot, stage: Stage, candidates: Sequence[Candidate], request: StageRequest, *,
               policy: Policy = "stay-local", offload_target: str | None = None,
               corrections: Corrections | None = None, offload_snapshot: GpuSnapshot | None = None,
               cpu_max_params: int = DEFAULT_CPU_MAX_PARAMS, cpu_memory_bytes: int | None = None,
               max_processes: int = 0, cpu_processes: int = 1) -> Plan:
    """Plan one stage. `candidates`: models, preferred first (generate may list several tiers; the other
    stages pass the one model they run). An empty list is allowed for generate only (template backend).

    Tried in order: the node (train/reference on several GPUs: DDP, else FSDP), the local GPU with the most usable
    memory, then the CPU (small models; `cpu_processes` gloo ranks), then offload. `max_processes` caps the GPUs
    a node plan uses (0: all visible)."""
    _check_stage_and_policy(stage, policy)
    if not candidates:
        if stage == "generate":
            return _template_plan(stage, request, policy)
        raise ValueError(f"stage {stage} needs a model to plan for")
    corrections = corrections or Corrections()
    pool = list(candidates) if policy == "stay-local" else [candidates[0]]
    device = _best_device(snapshot)
    if device is not None:
        plan, local_note = _plan_local(stage, device, pool, candidates[0], request, policy, corrections)
        if stage in NODE_STAGES and len(snapshot.devices) > 1 and max_processes != 1:
            node = _plan_node(stage, snapshot, candidates[0], request, policy, corrections, plan, local_note,
                              max_processes)
            if node is not None:
                return node
        if plan is not None:
            return plan
    else:
        local_note = f"No GPU is visible ({snapshot.note or snapshot.source})."
    small = next((m for m in pool if m.total_params <= cpu_max_params), None)
    if small is not None:
        plan = _plan_cpu(stage, small, request, policy, local_note, cpu_max_params, cpu_memory_bytes)
        return _cpu_ranks(plan, small, request, cpu_processes, cpu_memory_bytes) if cpu_processes > 1 else plan
    return _plan_offload(stage, candidates[0], request, policy, local_note, corrections,
                         offload_snapshot or profile_snapshot(DEFAULT_OFFLOAD_PROFILE), offload_target, cpu_max_params)


def _check_stage_and_policy(stage: str, policy: str) -> None:
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
    if policy not in ("stay-local", "keep-model"):
        raise ValueError(f"policy must be stay-local or keep-model, got {policy!r}")


def _plan_local(stage: str, device: GpuDevice, pool: list[Candidate], preferred: Candidate, request: StageRequest,
                policy: Policy, corrections: Corrections) -> tuple[Plan | None, str]:
    """(the `gpu` plan of the first model in `pool` that fits on `device`, or None; what was tried there)."""
    usable, margin = usable_bytes(device), margin_bytes(device)
    where = (f"GPU {device.index} ({device.name}: {format_gib(device.free_bytes)} free of "
             f"{format_gib(device.total_bytes)}, {format_gib(usable)} usable after a {format_gib(margin)} safety margin)")
    tried: list[str] = []
    for model in pool:
        factor = corrections.factor(device.name, model.name, stage)
        found, smallest = _search(stage, model, request, usable, factor)
        if found is not None:
            reason = _local_reason(stage, where, model, preferred, found, factor, request, tried)
            return _make_plan(stage, "gpu", found, request, policy, usable=usable, margin=margin, factor=factor,
                              fits=True, reason=reason, device=device), ""
        tried.append(f"{model.name} needs at least {format_gib(_peak(smallest, factor))} even at its smallest "
                     f"setting (batch {smallest.batch_size}, {smallest.max_tokens} tokens)")
    return None, f"Nothing fits on {where}: {'; '.join(tried)}."


def _local_reason(stage: str, where: str, model: Candidate, preferred: Candidate, found: _Option, factor: float,
                  request: StageRequest, tried: list[str]) -> str:
    changes = _changes(stage, found, request)
    reason = (f"{stage} runs locally on {where} with {model.name}"
              + (f" instead of {preferred.name} (policy stay-local: the largest candidate that fits)"
                 if model is not preferred else "")
              + f": estimated peak {format_gib(_peak(found, factor))}"
              + (f" (× calibration {factor:.2f})" if factor != 1.0 else "")
              + (f", after {changes}" if changes else ", as requested")
              + (f"; {'; '.join(tried)}" if tried else "") + ".")
    if stage == "train":
        reason += (f" Reference log-probs: {found.ref_strategy}"
                   + (" (a live reference pass does not fit)" if found.ref_strategy == "cached"
                      and request.ref_strategy == "auto" else "") + ".")
    return reason


def _plan_cpu(stage: str, small: Candidate, request: StageRequest, policy: Policy, local_note: str,
              cpu_max_params: int, cpu_memory_bytes: int | None) -> Plan:
    """`small` (at most `cpu_max_params` parameters) on the CPU in fp32, within 80 % of the RAM when it is known."""
    cpu_usable = None if cpu_memory_bytes is None else max(0, int(cpu_memory_bytes * 0.8))
    found, smallest = _search(stage, small, request, cpu_usable if cpu_usable is not None else 1 << 62, 1.0, "cpu")
    option = found or smallest
    reason = (f"{local_note} {small.name} has {small.total_params / 1e6:.0f}M parameters (at most "
              f"{cpu_max_params / 1e6:.0f}M run on CPU), so {stage} runs on the CPU in fp32: estimated "
              f"{format_gib(_peak(option, 1.0))}"
              + (f" of {format_gib(cpu_usable)} usable RAM" if cpu_usable is not None else " (RAM not checked)") + ".")
    return _make_plan(stage, "cpu", option, request, policy, usable=cpu_usable, margin=0, factor=1.0,
                      fits=found is not None, reason=reason)


def _per_rank(stage: str, request: StageRequest, processes: int) -> StageRequest | None:
    """What one of `processes` ranks is asked for: train splits the effective batch (None when it does not divide);
    reference keeps its per-forward batch (the ranks split the shards)."""
    if stage != "train":
        return request
    if request.batch_size % processes:
        return None
    return replace(request, batch_size=request.batch_size // processes)


def _node_options(stage: str, model: ModelShape, request: StageRequest, processes: int,
                  strategy: Strategy) -> Iterator[_Option]:
    """Per-rank settings of a `processes`-rank plan, best first; DDP charges its gradient buckets."""
    per_rank = _per_rank(stage, request, processes)
    if per_rank is None:
        return
    if strategy == "ddp":
        for option in _options(stage, model, per_rank, "cuda"):
            est = option.estimate
            terms = {**est.terms, "ddp_gradient_buckets_bytes": data_parallel_bytes(est)}
            yield replace(option, estimate=Estimate(est.stage, est.model, terms, {**est.settings, "processes": processes}))
        return
    for micro in _divisors_desc(per_rank.batch_size):
        yield _Option(micro, per_rank.batch_size // micro, request.seq_len, "cached", estimate_train_fsdp(
            model, processes=processes, micro_batch=micro, seq_len=request.seq_len, quantization=request.quantization,
            lora_r=request.lora_r, optimizer=request.optimizer, gradient_checkpointing=request.gradient_checkpointing))


def _plan_node(stage: str, snapshot: GpuSnapshot, model: Candidate, request: StageRequest, policy: Policy,
               corrections: Corrections, single: Plan | None, local_note: str, max_processes: int) -> Plan | None:
    """DDP over as many GPUs as hold the one-GPU plan, else (train) FSDP over as many as it takes; None when
    neither applies (one usable GPU, an Ollama model, an effective batch no process count divides)."""
    if not isinstance(model, ModelShape):
        return None
    strategy: Strategy = "ddp" if single is not None else "fsdp"
    if strategy == "fsdp" and (stage != "train" or request.quantization not in ("nf4", "bf16", "fp16")):
        return None
    devices = sorted(snapshot.devices, key=usable_bytes, reverse=True)
    devices = devices[:max_processes] if max_processes > 1 else devices
    for n in range(len(devices), 1, -1):
        group, weakest = devices[:n], devices[n - 1]
        usable, margin = usable_bytes(weakest), margin_bytes(weakest)
        factor = corrections.factor(weakest.name, model.name, stage)
        found = next((o for o in _node_options(stage, model, request, n, strategy) if _peak(o, factor) <= usable), None)
        if found is None:
            continue
        if strategy == "ddp":
            why = (f"each of the {n} GPUs holds the one-GPU plan, so {stage} runs as DDP over {n} processes"
                   + (f": micro-batch {found.batch_size} × accumulation {found.grad_accum} × {n} ranks = effective "
                      f"batch {request.batch_size} (kept)" if stage == "train" else
                      f": each rank scores every {n}th shard of the cache, batch {found.batch_size}"))
        else:
            why = (f"no single GPU holds {model.name} ({local_note.rstrip('.')}), but {n} together do: {stage} runs "
                   f"as FSDP over {n} processes, QLoRA with the 4-bit weights stored in bf16 "
                   f"(bnb_4bit_quant_storage) so FSDP can shard them; micro-batch {found.batch_size} × accumulation "
                   f"{found.grad_accum} × {n} ranks = effective batch {request.batch_size}")
        reason = (f"{stage} on a node of {len(snapshot.devices)} GPUs ({weakest.name}, the weakest of the {n} used: "
                  f"{format_gib(usable)} usable): {why}; estimated peak per GPU {format_gib(_peak(found, factor))}.")
        plan = _make_plan(stage, "gpu", found, request, policy, usable=usable, margin=margin, factor=factor,
                          fits=True, reason=reason, device=group[0])
        return plan.model_copy(update={"strategy": strategy, "num_processes": n,
                                       "gpu_uuids": [d.uuid for d in group]})
    return None


def _cpu_ranks(plan: Plan, model: Candidate, request: StageRequest, processes: int,
               cpu_memory_bytes: int | None) -> Plan:
    """A CPU plan as `processes` gloo DDP ranks (train, reference): each rank holds its own fp32 copy."""
    if plan.stage not in NODE_STAGES:
        return plan
    per_rank = _per_rank(plan.stage, request, processes)
    if per_rank is None:
        raise ValueError(f"{plan.stage}: the effective batch {request.batch_size} does not split over "
                         f"{processes} CPU processes; choose a batch divisible by {processes}")
    usable = None if cpu_memory_bytes is None else max(0, int(cpu_memory_bytes * 0.8)) // processes
    found, smallest = _search(plan.stage, model, per_rank, usable if usable is not None else 1 << 62, 1.0, "cpu")
    option = found or smallest
    ranked = _make_plan(plan.stage, "cpu", option, request, plan.policy, usable=usable, margin=0, factor=1.0,
                        fits=found is not None, reason=plan.reason + (
                            f" Asked for {processes} CPU processes: DDP over {processes} gloo ranks"
                            + (f", micro-batch {option.batch_size} × accumulation {option.grad_accum} × {processes} "
                               f"= effective batch {request.batch_size}" if plan.stage == "train" else
                               ", each rank scoring every {processes}th shard".format(processes=processes))
                            + f"; estimated {format_gib(_peak(option, 1.0))} per process."))
    return ranked.model_copy(update={"strategy": "ddp", "num_processes": processes})


def _plan_offload(stage: str, preferred: Candidate, request: StageRequest, policy: Policy, local_note: str,
                  corrections: Corrections, target_snapshot: GpuSnapshot, offload_target: str | None,
                  cpu_max_params: int) -> Plan:
    """The preferred model offloaded to `offload_target`, sized for the best GPU of `target_snapshot`."""
    remote = _best_device(target_snapshot)
    if remote is None:
        raise ValueError("offload_snapshot must describe at least one GPU")
    factor = corrections.factor(remote.name, preferred.name, stage)
    r_usable, r_margin = usable_bytes(remote), margin_bytes(remote)
    found, smallest = _search(stage, preferred, request, r_usable, factor)
    option = found or smallest
    target = (f"is offloaded to the pool {offload_target!r}" if offload_target
              else "would have to be offloaded, but no offload pool is configured;")
    reason = (f"{local_note} {preferred.name} is too large for the CPU (over {cpu_max_params / 1e6:.0f}M "
              f"parameters), so {stage} {target} sized for {remote.name} "
              f"({format_gib(r_usable)} usable): estimated peak {format_gib(_peak(option, factor))}"
              + (f" after {_changes(stage, option, request)}" if found and _changes(stage, option, request) else "")
              + ("" if found else "; it does not fit there either") + ".")
    if offload_target is None:
        reason += " Configure gpu.offload_pool or choose a smaller model."
    return _make_plan(stage, "offload", option, request, policy, usable=r_usable, margin=r_margin, factor=factor,
                      fits=found is not None, reason=reason, device=remote, offload_target=offload_target)


def require_runnable(plan: Plan) -> Plan:
    """Return `plan` if it can run; else raise `PlanNotRunnableError` with the ways out."""
    if plan.placement == "offload" and plan.offload_target is None:
        raise PlanNotRunnableError(
            f"{plan.stage}: {plan.model} needs ~{format_gib(plan.estimated_peak_bytes)} of GPU memory and does not fit on "
            f"this machine; choose a smaller model, or configure the A100 pool: gpu.offload_pool "
            f"(e.g. FAITHFORGE_GPU__OFFLOAD_POOL=a100)"
        )
    if not plan.fits:
        where = {"gpu": "this GPU", "cpu": "this machine's RAM", "offload": f"the offload pool {plan.offload_target}"}
        raise PlanNotRunnableError(
            f"{plan.stage}: {plan.model} needs ~{format_gib(plan.estimated_peak_bytes)} even at batch {plan.batch_size}, "
            f"more than {where[plan.placement]} offers ({format_gib(plan.usable_bytes, unknown='n/a')}); choose a smaller model, shorter "
            f"sequences, or a larger GPU"
        )
    return plan
