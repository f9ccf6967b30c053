"""The GPU gate: probe the GPUs, estimate each stage's memory, plan placement and batch, back off on OOM.

No Prefect and no I/O here except NVML in `faithforge.gpu.probe` and the config.json loader in `faithforge.gpu.model_shape`.
"""

from faithforge.gpu.backoff import BackoffEvent, OomAttempt, is_cuda_oom, oom_backoff, run_with_oom_backoff
from faithforge.gpu.corrections import Corrections, correction_key
from faithforge.gpu.errors import (GpuGateError, ModelConfigError, OomBackoffExhausted, PlanNotRunnableError,
                        UnknownProfileError)
from faithforge.gpu.estimate import Estimate, estimate_hf_generate, estimate_ollama, estimate_reference, estimate_train
from faithforge.gpu.model_shape import ModelShape, load_model_config, load_model_shape, model_shape_from_config
from faithforge.gpu.ollama_sizes import OllamaModel, ollama_model, ollama_model_from_api
from faithforge.gpu.planner import Plan, StageRequest, plan_stage, require_runnable
from faithforge.gpu.probe import read_snapshot
from faithforge.gpu.profiles import known_profiles, profile_snapshot
from faithforge.gpu.snapshot import GpuDevice, GpuProcess, GpuSnapshot

__all__ = [
    "BackoffEvent", "Corrections", "Estimate", "GpuDevice", "GpuGateError", "GpuProcess", "GpuSnapshot",
    "ModelConfigError", "ModelShape", "OllamaModel", "OomBackoffExhausted", "Plan", "PlanNotRunnableError",
    "StageRequest", "UnknownProfileError", "correction_key", "estimate_hf_generate", "estimate_ollama",
    "estimate_reference", "estimate_train", "is_cuda_oom", "known_profiles", "load_model_config",
    "load_model_shape", "model_shape_from_config", "ollama_model", "ollama_model_from_api", "plan_stage",
    "profile_snapshot", "read_snapshot", "require_runnable", "run_with_oom_backoff", "oom_backoff", "OomAttempt",
]
