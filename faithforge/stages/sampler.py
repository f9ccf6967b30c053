"""Which engine samples a stage's answers: llama.cpp when every model the stage samples from can be given to it as a
GGUF file and the stage runs on the CPU, the prefix-cached engine otherwise; the choice and its reason are part of
the stage's output.

`gguf_of(model_path, adapter, cache_dir)` is the one place that knows which models exist as GGUF:
- with a cache folder (what the stages pass): base + adapter written as f16 from the folder's float32 weights by
  `faithforge.training.sampling_gguf`, once per content (2-4 s for SmolLM2-135M). On 2 cores llama.cpp samples
  that file at 1.49x the tokens/s of SmolLM2's own Q4_1; it wrote 200 greedy answers of up to 64 tokens 1.53x
  faster than the float32 engine (at the demo's 40 tokens, with the files written, no faster end to end), 196 of
  them token-identical to the engine's against Q4_1's 137 (`bench/sampler_gguf.py`, BENCHMARKS.md). An adapter's
  file goes to the calling stage's own folder (`adapter_dir`), removed after it;
- without one, or for an architecture the writer does not know: the file a float32 `faithforge model import`
  dequantized (its values exactly), and nothing for an adapter.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from faithforge.core.errors import UserError
from faithforge.engine import SamplingConfig
from faithforge.gpu.planner import Plan

@dataclass(frozen=True)
class SamplerChoice:
    name: str  # "llama.cpp", "engine", "engine-bf16" (the engine with bfloat16 weights on the CPU) or "served"
    ggufs: tuple[Path, ...]
    """llama.cpp only: one file per model the stage samples from, in the order they were given."""
    reason: str
    server: str = ""
    """served only: `backend model at url`."""

    @property
    def gguf(self) -> Path | None:
        """The first model's file (a stage that samples one model)."""
        return self.ggufs[0] if self.ggufs else None

    def key(self) -> str | list:
        """What a stage's output depends on: the engine, and for llama.cpp the files' names (the cache names them by
        content; Q4_1 and f16 draw different samples)."""
        if self.server:
            return [self.name, self.server]
        return [self.name, [g.name for g in self.ggufs]] if self.ggufs else self.name

    def describe(self) -> str:
        where = f" on {self.gguf.name}" if self.gguf else ""
        return f"{self.name}{where}: {self.reason}"


def gguf_cache(workspace) -> Path:
    """Where the stages keep the GGUF files llama.cpp samples from: the workspace's `cache/gguf`."""
    return workspace.dir("cache") / "gguf"


def imported_gguf(model_path: str | Path) -> Path | None:
    """The GGUF file a float32 `faithforge model import` read `model_path` from (its weights exactly), or None."""
    from faithforge.training.model_import import read_import_record

    record = read_import_record(model_path) or {}
    if record.get("kind") != "gguf" or record.get("dtype") != "float32":
        return None  # a bf16/fp16 import holds rounded values: not the file's weights
    source = Path(record.get("source", ""))
    return source if source.is_file() else None


def gguf_of(model_path: str | Path, adapter: str | None = None, cache_dir: str | Path | None = None) -> Path | None:
    """A GGUF file holding the weights of `model_path` (+ `adapter`) for llama.cpp, or None (see the module's
    docstring). With `cache_dir` the file is written there when missing."""
    return _gguf_or_reason(model_path, adapter, cache_dir, cache_dir)[0]


def _gguf_or_reason(model_path: str | Path, adapter: str | None, cache_dir: str | Path | None,
                    adapter_dir: str | Path | None, write: bool = True) -> tuple[Path | None, str]:
    """(the file, "") or (None, why). An adapter's file goes to `adapter_dir`, the base model's to `cache_dir`;
    with `write=False` the path the file would have is returned without writing it (a content key)."""
    from faithforge.training.sampling_gguf import sampling_gguf_key, unwritable_reason, write_sampling_gguf

    folder = adapter_dir if adapter else cache_dir
    reason = "no cache folder to write an f16 GGUF into" if folder is None else unwritable_reason(model_path)
    if reason is None:
        path = Path(folder) / f"{sampling_gguf_key(model_path, adapter)}.f16.gguf"  # named by content alone
        if path.is_file() or not write:
            return path, ""
        try:
            return write_sampling_gguf(model_path, adapter, path), ""
        except UserError as exc:  # e.g. a weight beyond float16's range: sample another way
            reason = str(exc)
    imported = None if adapter else imported_gguf(model_path)
    return (imported, "") if imported is not None else (None, reason)


def choose_sampler(setting: str, plan: Plan, sampling: SamplingConfig, models: list[tuple[str | Path, str | None]],
                   cache_dir: str | Path | None = None, *, adapter_dir: str | Path | None = None,
                   write: bool = True) -> SamplerChoice:
    """llama.cpp for all `models` ((model folder, adapter or None), one per model the stage samples from) or the
    engine for all: one stage never mixes engines, so models compared in it differ only by their weights. A GGUF
    is looked up (and written: a base model's into `cache_dir`, an adapter's into `adapter_dir`, default
    `cache_dir`) only once everything else allows llama.cpp; `write=False` names the files without writing them
    (for a content key)."""
    from faithforge.engine.gguf_sampler import llama_cpp_available, unsupported_sampling

    if setting == "engine":
        return SamplerChoice("engine", (), "the config asks for the prefix-cached engine")
    if setting == "served":
        raise ValueError("a served sampler is chosen by `served_choice` (it needs the server's settings)")
    if plan.placement != "cpu":
        keeps = "; the weights keep the plan's precision" if setting == "engine-bf16" else ""
        return SamplerChoice("engine", (), f"the plan places the stage on {plan.placement} (llama.cpp here is "
                                           f"CPU-only{keeps})")
    if setting == "engine-bf16":
        return SamplerChoice("engine-bf16", (), "the config asks for the prefix-cached engine with bfloat16 weights")
    if not llama_cpp_available():
        return SamplerChoice("engine", (), "llama-cpp-python is not installed")
    why = unsupported_sampling(sampling)
    if why:
        return SamplerChoice("engine", (), why)
    adapter_dir = cache_dir if adapter_dir is None else adapter_dir
    found = [_gguf_or_reason(path, adapter, cache_dir, adapter_dir, write) for path, adapter in models]
    ggufs = [gguf for gguf, _ in found]
    missing = [why for gguf, why in found if gguf is None]
    if missing:
        return SamplerChoice("engine", (), f"{len(missing)} of {len(ggufs)} model(s) have no GGUF for llama.cpp "
                                           f"({missing[0]})")
    written = ("written as f16 from these weights" if ggufs[0].name.endswith(".f16.gguf")
               else "the file these weights were imported from")
    return SamplerChoice("llama.cpp", tuple(ggufs), f"the stage runs on the CPU; GGUF {written}")


def served_choice(server: str, model: str, base_url: str) -> SamplerChoice:
    return SamplerChoice("served", (), "the config names a server that serves the policy",
                         server=f"{server} {model} at {base_url}")




#: Greedy probes that decide whether a served model is the policy: sources, and new tokens per answer (long enough
#: that a checkpoint a few steps away, sharing its first words, parts somewhere).
PROBES, PROBE_TOKENS = 8, 32
#: Share of the probes whose greedy answers must be word for word the local policy's. An f16 copy of the weights
#: agreed with float32 on 196 of 200 whole answers (bench/sampler_gguf.py); a quantized server flips a near-tie
#: more often (Q4_1: 137 of 200), so 6 of 8 and not 8.
MIN_PROBE_AGREEMENT = 0.75


def check_served_policy(served, local, prompts: list[str]) -> str:
    """Ask `served` and `local` (anything with `generate_batch`) for greedy answers to the first `PROBES` prompts;
    a UserError unless at least `MIN_PROBE_AGREEMENT` of them agree word for word; else the note for the report."""
    probes = prompts[:PROBES]
    if not probes:
        return "no sources to probe the server with"
    greedy = SamplingConfig(max_new_tokens=PROBE_TOKENS)
    theirs = served.generate_batch(probes, greedy, batch_size=len(probes))
    ours = local.generate_batch(probes, greedy, batch_size=len(probes))
    agree = sum(a.text.split() == b.text.split() for a, b in zip(theirs, ours))
    if agree < MIN_PROBE_AGREEMENT * len(probes):
        differs = next(i for i, (a, b) in enumerate(zip(theirs, ours)) if a.text.split() != b.text.split())
        said, expected = theirs[differs].text.strip()[:60], ours[differs].text.strip()[:60]
        raise UserError(f"the served model answers as the policy on {agree} of {len(probes)} greedy probes (e.g. "
                        f"{said!r} where the policy says {expected!r}): on-policy pairs need the policy's own "
                        "weights served (pairs.served_model), or another pairs.sampler")
    return f"{agree} of {len(probes)} greedy probes answered as the local policy"


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
