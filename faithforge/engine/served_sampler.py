"""The engine's `generate_batch` through a served model: vLLM on a GPU user's machine, llama.cpp's server, any
OpenAI-compatible server (issue 28, item 1: sampling on the fastest engine present).

A server batches concurrent requests itself (vLLM's continuous batching, llama.cpp's slots), so `generate_batch`
keeps up to `concurrency` requests in flight. Each request i is seeded with `request_seed(seed, i)`, as the local
samplers seed theirs, so a server that honours seeds draws the same samples again. The server returns text; the
token ids are the policy tokenizer's encoding of it (what DPO trains on), and `finish_reason` is "length" when the
server cut the answer at the token limit, "eos" otherwise.

Whether the served model is the policy cannot be read off a server; `faithforge.stages.sampler.check_served_policy`
compares its greedy answers with the local model's before any sample is drawn.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from faithforge.engine.errors import EngineError
from faithforge.engine.gguf_sampler import request_seed
from faithforge.engine.result import GenerationResult
from faithforge.engine.sampling import SamplingConfig

NAME = "served"


class ServedSampler:
    """Generate answers to `system_prompt` + each prompt (a user message) from `backend` (a `ChatBackend`:
    `chat(messages, *, max_tokens, temperature, seed)`); `tokenizer` is the policy's, for the token ids;
    `concurrency`: most requests in flight (vLLM batches them; llama-cpp-python's server interrupts a running
    request when another arrives, and the interrupted one comes back empty, unless it was started with
    `--interrupt_requests False`: 1 there)."""

    def __init__(self, backend, tokenizer, system_prompt: str, concurrency: int = 8):
        self.backend, self.tokenizer, self.system_prompt = backend, tokenizer, system_prompt
        self.concurrency = concurrency

    def describe(self) -> str:
        return f"{NAME} ({self.backend.name}: {self.backend.model})"

    def generate_batch(self, prompts: list[str], sampling: SamplingConfig = SamplingConfig(),
                       max_new_tokens: int | None = None, *, batch_size: int = 32,
                       progress: Callable[[int, int], None] | None = None) -> list[GenerationResult]:
        """One answer per prompt, in order, `concurrency` requests in flight (`batch_size` is the local engines'
        and is not used: the server batches); `progress(done, total)` after each answer. Sampling the server
        cannot be told (top-p, top-k) is refused before any request.

        An empty answer is asked again, alone, after the others: llama-cpp-python's server returns an empty answer
        with no error for a request another one interrupted. The same seed alone gives the model's own answer (an
        empty one stays empty)."""
        if sampling.top_p < 1.0 or sampling.top_k:
            raise EngineError("a served model is sampled with temperature only: top-p / top-k are not sent to the "
                              "server")
        budget = max_new_tokens or sampling.max_new_tokens

        def one(index: int) -> GenerationResult:
            messages = [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": prompts[index]}]
            answer = self.backend.chat(messages, max_tokens=budget, temperature=sampling.temperature,
                                       seed=request_seed(sampling.seed, index))
            ids = self.tokenizer.encode(answer.text, add_special_tokens=False)
            return GenerationResult(text=answer.text, token_ids=ids,
                                    finish_reason="length" if answer.truncated else "eos",
                                    prompt_tokens=answer.usage.prompt_tokens, cached_tokens=0)

        results: list[GenerationResult] = []
        pool = ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(prompts))))
        try:
            futures = [pool.submit(one, i) for i in range(len(prompts))]
            for future in futures:  # in order; a failed request raises here
                results.append(future.result())
                if progress is not None:
                    progress(len(results), len(prompts))
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)  # the error now, not after the requests in flight
            raise
        pool.shutdown(wait=True)
        for index, result in enumerate(results):
            if not result.text:  # asked again with nothing else in flight
                results[index] = one(index)
        return results


__all__ = ["NAME", "ServedSampler"]
