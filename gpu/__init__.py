"""The GPU gate: probe the GPUs, estimate each stage's memory, plan placement and batch, back off on OOM.

No Prefect and no I/O here except NVML in `gpu.probe` and the config.json loader in `gpu.model_shape`.
"""

from gpu.backoff import BackoffEvent, is_cuda_oom, run_with_oom_backoff
from gpu.corrections import Corrections, correction_key
from gpu.errors import (GpuGateError, ModelConfigError, OomBackoffExhausted, PlanNotRunnableError,
                        UnknownProfileError)
from gpu.estimate import Estimate, estimate_hf_generate, estimate_ollama, estimate_reference, estimate_train
from gpu.model_shape import ModelShape, load_model_config, load_model_shape, model_shape_from_config
from gpu.ollama_sizes import OllamaModel, ollama_model, ollama_model_from_api
from gpu.planner import Plan, StageRequest, plan_stage, require_runnable
from gpu.probe import read_snapshot
from gpu.profiles import known_profiles, profile_snapshot
from gpu.snapshot import GpuDevice, GpuProcess, GpuSnapshot

__all__ = [
    "BackoffEvent", "Corrections", "Estimate", "GpuDevice", "GpuGateError", "GpuProcess", "GpuSnapshot",
    "ModelConfigError", "ModelShape", "OllamaModel", "OomBackoffExhausted", "Plan", "PlanNotRunnableError",
    "StageRequest", "UnknownProfileError", "correction_key", "estimate_hf_generate", "estimate_ollama",
    "estimate_reference", "estimate_train", "is_cuda_oom", "known_profiles", "load_model_config",
    "load_model_shape", "model_shape_from_config", "ollama_model", "ollama_model_from_api", "plan_stage",
    "profile_snapshot", "read_snapshot", "require_runnable", "run_with_oom_backoff",
]
