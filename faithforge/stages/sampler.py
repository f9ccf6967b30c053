"""Which engine samples a stage's answers: llama.cpp when the model exists as a GGUF file with exactly these
weights and the stage runs on the CPU, the prefix-cached engine otherwise; the choice and its reason are part of
the stage's output.

`gguf_of(model_path, adapter)` is the one place that knows which models exist as GGUF: an imported GGUF
(`faithforge model import`, float32, so the folder holds that file's values dequantized) and, for an adapter,
nothing yet — an adapter exported to GGUF (the export issue) returns its file here, and every stage that
samples through `choose_sampler` picks it up.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from faithforge.engine import SamplingConfig
from faithforge.gpu.planner import Plan


@dataclass(frozen=True)
class SamplerChoice:
    name: str  # "llama.cpp", "engine" or "engine-bf16" (the engine with bfloat16 weights on the CPU)
    gguf: Path | None
    reason: str

    def describe(self) -> str:
        where = f" on {self.gguf.name}" if self.gguf else ""
        return f"{self.name}{where}: {self.reason}"


def gguf_of(model_path: str | Path, adapter: str | None = None) -> Path | None:
    """The GGUF file holding exactly the weights of `model_path` (+ `adapter`), or None."""
    if adapter:
        return None  # an adapter exported to GGUF plugs in here
    from faithforge.training.model_import import read_import_record

    record = read_import_record(model_path) or {}
    if record.get("kind") != "gguf" or record.get("dtype") != "float32":
        return None  # a bf16/fp16 import holds rounded values: not the file's weights
    source = Path(record.get("source", ""))
    return source if source.is_file() else None


def choose_sampler(setting: str, plan: Plan, sampling: SamplingConfig, ggufs: list[Path | None]) -> SamplerChoice:
    """llama.cpp for all `ggufs` (one per model the stage samples from) or the engine for all: one stage never
    mixes engines, so models compared in it differ only by their weights."""
    from faithforge.engine.gguf_sampler import llama_cpp_available, unsupported_sampling

    if setting == "engine":
        return SamplerChoice("engine", None, "the config asks for the prefix-cached engine")
    if plan.placement != "cpu":
        keeps = "; the weights keep the plan's precision" if setting == "engine-bf16" else ""
        return SamplerChoice("engine", None, f"the plan places the stage on {plan.placement} (llama.cpp here is "
                                             f"CPU-only{keeps})")
    if setting == "engine-bf16":
        return SamplerChoice("engine-bf16", None, "the config asks for the prefix-cached engine with bfloat16 weights")
    missing = sum(g is None for g in ggufs)
    if missing:
        return SamplerChoice("engine", None, f"{missing} of {len(ggufs)} model(s) exist only as PyTorch weights")
    if not llama_cpp_available():
        return SamplerChoice("engine", None, "llama-cpp-python is not installed")
    why = unsupported_sampling(sampling)
    if why:
        return SamplerChoice("engine", None, why)
    return SamplerChoice("llama.cpp", ggufs[0], "the model exists as GGUF and the stage runs on the CPU")


def sampling_weights(model, bfloat16: bool):
    """The model as the chosen sampler reads it: cast to bfloat16 for `engine-bf16` (after any adapter is merged, so
    the update is rounded once), unchanged otherwise. On a CPU with native bfloat16 the engine writes 1.84–2.04× the
    tokens per second of float32, and 56 of 64 greedy answers of SmolLM2 stay token-identical, the others parting at
    near-ties (float32 logit gap ≤ 0.12; bench/engine_bf16.py, BENCHMARKS.md)."""
    if not bfloat16 or getattr(model, "hf_quantizer", None) is not None:
        return model  # 4-bit weights keep their own compute dtype
    import torch

    return model.to(torch.bfloat16)


def gguf_sampler(gguf: Path, model_path: str | Path, tokenizer, system_prompt: str, n_ctx: int,
                 threads: int | None = None):
    """A `GGUFSampler` for `gguf` with the engine's EOS set for `model_path` and a chat prefix of `system_prompt`."""
    from types import SimpleNamespace

    from transformers import GenerationConfig

    from faithforge.engine.gguf_sampler import GGUFSampler
    from faithforge.engine.finish import eos_ids

    try:
        generation_config = GenerationConfig.from_pretrained(str(model_path))
    except OSError:  # no generation_config.json: the tokenizer's EOS only
        generation_config = None
    eos = eos_ids(tokenizer, SimpleNamespace(generation_config=generation_config))
    return GGUFSampler(gguf, tokenizer, [{"role": "system", "content": system_prompt}], eos=eos, n_ctx=n_ctx,
                       threads=threads)
