"""PrefixCachedEngine: encode a prefix once, then generate many continuations that reuse its KV cache.

State: one working `DynamicCache` (`kv.WorkingCache`) that holds the prefix states once. Between
independent requests it is cropped back to the prefix; a conversation leaves its own tokens in it
until another request needs the cache, and then they are parked in the conversation (a copy of its own
tokens' states only), so memory is prefix + the conversations' own tokens, never one prefix per request.

Every request is encoded in full (prefix + request, as a re-encode would see it) and only the longest
common prefix with what is cached is reused: a BPE merge across the prefix boundary, or a chat template
that renders an earlier turn differently, costs recomputation, never wrong logits.

Not thread-safe: one request at a time per engine.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch

import faithforge.engine.llama_step as llama_step
from faithforge.engine.batch import BatchRunner
from faithforge.engine.errors import CacheMismatchError, EngineError
from faithforge.engine.fingerprint import fingerprint, weights_version
from faithforge.engine.forward import forward_token, prefill_in_chunks
from faithforge.engine.kv import WorkingCache, cache_storage_nbytes, new_cache
from faithforge.engine.one_row import applies_to, one_row_linears
from faithforge.engine.prefix_attention import engine_attention
from faithforge.engine.prefix_cache import PrefixCache
from faithforge.engine.prompts import Prompt, PromptRenderer, Turn, common_prefix_length
from faithforge.engine.result import GenerationResult
from faithforge.engine.sampling import SamplingConfig, choose_tokens
from faithforge.engine.finish import StopTracker, TokenCallback, eos_ids, normalize_stop

DEFAULT_PREFILL_CHUNK = 2048
"""Tokens per forward call when encoding long inputs (bounds attention scores to chunk x context per head)."""


class PrefixCachedEngine:
    """Generate continuations of `prefix` with a KV cache of the prefix computed once.

    model: a loaded causal LM (transformers 5.x, full attention, in eval mode); tokenizer: its tokenizer.
    prefix: messages (`list[dict]`, rendered through the chat template, e.g. a system prompt), raw text
        (`str`), or token ids (`list[int]`); see `prompts.py` for how requests are appended to each kind.
    device: where inputs go; defaults to the model's device (a different one is an error).
    prefix_cache: a `PrefixCache` exported earlier (`export_prefix_cache`) to skip encoding the prefix;
        rejected with CacheMismatchError if it belongs to another model, tokenizer or prefix.
    prefill_chunk: most tokens per forward call when encoding the prefix or a long request.
    one_row_kernels: decode `generate`'s tokens with the one-row CPU kernels of `one_row.py` (float32 models on
        the CPU; equal to stock PyTorch up to float rounding), and a plain Llama model's decode steps through
        `llama_step.py` (bit-identical to its forward with those kernels); False keeps stock PyTorch's and the
        model's own forward (for side-by-side benchmarks).
    """

    def __init__(self, model, tokenizer, prefix: Prompt, *, device: str | torch.device | None = None,
                 prefix_cache: PrefixCache | None = None, prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
                 one_row_kernels: bool = True):
        model_device = next(model.parameters()).device
        if device is not None and torch.device(device) != model_device:
            raise EngineError(f"device={device} but the model is on {model_device}; move it with model.to({str(device)!r})")
        if prefill_chunk < 1:
            raise EngineError(f"prefill_chunk must be >= 1 token, got {prefill_chunk}")
        self.model = model
        self.tokenizer = tokenizer
        self.device = model_device
        self.prefill_chunk = prefill_chunk
        self.one_row_kernels = one_row_kernels
        self.renderer = PromptRenderer(tokenizer, prefix)
        self.fingerprint = fingerprint(model, tokenizer)
        self._eos = eos_ids(tokenizer, model)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self._pad_id = int(pad) if pad is not None else 0
        self._owner = None  # the Conversation whose tokens follow the prefix in the working cache
        self._epoch = 0  # bumped by refresh(): parked conversation states from older weights are dropped
        self._encode_prefix(prefix_cache)

    # ----- public API -----------------------------------------------------------------------------

    @property
    def prefix_ids(self) -> list[int]:
        """The prefix's token ids (what the cache holds between requests)."""
        return list(self.renderer.prefix_ids)

    @property
    def cache_nbytes(self) -> int:
        """Bytes of key/value states the working cache currently exposes (prefix, plus a conversation's tokens)."""
        return self._wc.nbytes()

    @property
    def cache_storage_nbytes(self) -> int:
        """Bytes the working cache keeps alive: its buffers' capacity (cache_nbytes plus room for a request)."""
        return cache_storage_nbytes(self._wc.cache)

    def generate(self, prompt: Prompt, sampling: SamplingConfig = SamplingConfig(), *,
                 stop: str | list[str] | None = None, callback: TokenCallback | None = None,
                 return_logits: bool = False) -> GenerationResult:
        """One independent continuation of prefix + `prompt`; the cache is back at the prefix afterwards.

        prompt: str (chat prefix: one user message; text prefix: appended text), list[dict] messages
            (chat prefix only), or token ids (text/ids prefix). Empty input is valid: an empty user message
            (chat) or a direct continuation of the prefix (text/ids).
        stop: stop strings; generation ends once the decoded text contains one (text cut before it).
        callback: called with a `TokenEvent` after every token; returning True stops (finish "callback").
        """
        self._check_ready()
        full_ids = self.renderer.render(self.renderer.request_turns(prompt))
        self._detach_owner(park=True)
        try:
            return self._run(full_ids, sampling, normalize_stop(stop), callback, return_logits)
        finally:
            self._wc.restore_prefix()

    def next_token_logits(self, prompt: Prompt) -> torch.Tensor:
        """float32 [vocab] logits for the token after prefix + `prompt` (no generation; cache restored)."""
        self._check_ready()
        full_ids = self.renderer.render(self.renderer.request_turns(prompt))
        self._detach_owner(park=True)
        try:
            with torch.inference_mode():
                return self._sync(full_ids)[0].clone()
        finally:
            self._wc.restore_prefix()

    def generate_batch(self, prompts: list[Prompt], sampling: SamplingConfig = SamplingConfig(),
                       max_new_tokens: int | None = None, *, stop: str | list[str] | None = None,
                       batch_size: int = 32, return_logits: bool = False,
                       progress: Callable[[int, int], None] | None = None) -> list[GenerationResult]:
        """Continuations of prefix + each prompt, `batch_size` prompts per forward (results in input order).

        The prefix states are expanded to the batch once per chunk, or, from `MIN_SHARED_TOKENS` shared tokens
        on, read once per step for all rows without a copy (`prefix_attention`); per-request suffixes are
        left-padded with explicit position ids; rows that finish leave the batch. max_new_tokens overrides
        sampling's.
        Stop strings apply per row; there is no per-token callback in batched mode.
        Seeded sampling is reproducible for the same prompts and batch_size, but draws differ from `generate`.
        `progress(done, total)` is called after each batch (requests answered so far, all requests).
        """
        self._check_ready()
        if max_new_tokens is not None:
            sampling = SamplingConfig(sampling.temperature, sampling.top_k, sampling.top_p, sampling.seed, max_new_tokens)
        if batch_size < 1:
            raise EngineError(f"batch_size must be >= 1, got {batch_size}")
        rows = [self.renderer.render(self.renderer.request_turns(p)) for p in prompts]
        for i, ids in enumerate(rows):
            if not ids:
                raise EngineError(f"prompt {i} and the prefix are both empty: there is nothing to continue")
        self._detach_owner(park=True)
        runner = BatchRunner(self.model, self.tokenizer, self._wc, self.device, self._eos, self._pad_id,
                             normalize_stop(stop), self.prefill_chunk)
        # Similar lengths together: less left padding per chunk.
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        results: list[GenerationResult | None] = [None] * len(rows)
        generator = sampling.make_generator(self.device)
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                chunk = order[start:start + batch_size]
                for i, res in zip(chunk, runner.run([rows[i] for i in chunk], sampling, generator, return_logits)):
                    results[i] = res
                if progress is not None:
                    progress(start + len(chunk), len(rows))
        return results

    def conversation(self) -> "Conversation":  # noqa: F821 - defined in conversation.py, imported when called
        """A new multi-turn conversation after the prefix (see `Conversation`)."""
        from faithforge.engine.conversation import Conversation

        return Conversation(self)

    def reset(self) -> None:
        """Drop conversation states from the cache and return it to the prefix (conversations keep their
        transcripts and re-encode their own turns, not the prefix, on their next turn)."""
        self._detach_owner(park=False)

    def refresh(self) -> None:
        """Re-encode the prefix with the model's current weights (call after a training step)."""
        self._owner = None
        self._epoch += 1
        self._encode_prefix(None)

    def export_prefix_cache(self) -> PrefixCache:
        """A copy of the prefix states, on the CPU, with this model's fingerprint (see `PrefixCache`)."""
        self._detach_owner(park=True)
        n = len(self.renderer.prefix_ids)
        layers = [(k.to("cpu", copy=True), v.to("cpu", copy=True)) for k, v in self._wc.prefix_views(n)]
        return PrefixCache(self.prefix_ids, layers, self.fingerprint)

    # ----- internals shared with Conversation ----------------------------------------------------------

    def _encode_prefix(self, prefix_cache: PrefixCache | None) -> None:
        prefix_ids = self.renderer.prefix_ids
        self._wc = WorkingCache(new_cache(self.model), [])
        with torch.inference_mode():
            if prefix_cache is not None:
                prefix_cache.check_compatible(self.fingerprint, prefix_ids)
                self._wc.append(prefix_cache.segment(self.device))
            elif prefix_ids:
                self._check_mode()
                prefill_in_chunks(self.model, self._wc.cache, prefix_ids, self.device, self.prefill_chunk)
                self._wc.record_forward(prefix_ids)
        self._wc.prefix_ids = list(prefix_ids)
        self._weights_version = weights_version(self.model)

    def _check_mode(self) -> None:
        if self.model.training:
            raise EngineError("the model is in training mode (dropout makes cached and re-encoded logits differ); "
                              "call model.eval() before generating")

    def _check_ready(self) -> None:
        self._check_mode()
        if weights_version(self.model) != self._weights_version:
            raise CacheMismatchError("the model's weights changed since the prefix was encoded (an optimizer step?); "
                                     "call engine.refresh() to re-encode the prefix")

    def _detach_owner(self, park: bool) -> None:
        """Return the working cache to the prefix; with park=True the owning conversation keeps a copy of its
        own tokens' states for its next turn."""
        owner, self._owner = self._owner, None
        prefix_len = len(self._wc.prefix_ids)
        if owner is not None and park and self._wc.ids[:prefix_len] == self._wc.prefix_ids:
            owner._park(self._wc.snapshot(prefix_len), self._epoch)
        self._wc.restore_prefix()

    def _attach(self, conversation) -> None:
        """Make the working cache hold prefix + this conversation's parked states."""
        if conversation._engine is not self:
            raise CacheMismatchError("this conversation belongs to another engine; start one with engine.conversation()")
        if self._owner is conversation:
            return
        self._detach_owner(park=True)
        parked = conversation._unpark(self._epoch)
        if parked is not None:
            with torch.inference_mode():
                self._wc.append(parked)
        self._owner = conversation

    def _run_turns(self, turns: list[Turn], sampling: SamplingConfig, stop, callback, return_logits) -> GenerationResult:
        return self._run(self.renderer.render(turns), sampling, normalize_stop(stop), callback, return_logits)

    def _sync(self, full_ids: list[int], **attention_kwargs) -> tuple[torch.Tensor, int]:
        """Make the cache hold full_ids: keep the longest common prefix with what is cached, compute the
        rest; returns (next-token logits [vocab] after full_ids, tokens reused). `attention_kwargs` reach the
        attention function (`one_row`, while `_run` has switched the model to the engine's attention)."""
        if not full_ids:
            raise EngineError("the prefix and the prompt are both empty: there is nothing to continue; "
                              "give a non-empty prompt or prefix")
        reused = common_prefix_length(self._wc.ids, full_ids)
        reused = min(reused, len(full_ids) - 1)  # at least one token must go through the model for logits
        self._wc.truncate(reused)
        new = full_ids[reused:]
        logits = prefill_in_chunks(self.model, self._wc.cache, new, self.device, self.prefill_chunk,
                                   **attention_kwargs)
        self._wc.record_forward(new)
        return logits, reused

    def _run(self, full_ids: list[int], sampling: SamplingConfig, stop: tuple[str, ...],
             callback: TokenCallback | None, return_logits: bool) -> GenerationResult:
        """Encode full_ids against the cache, then sample token by token, feeding each back through the cache."""
        tracker = StopTracker(self.tokenizer, self._eos, stop, callback, sampling.max_new_tokens)
        generator = sampling.make_generator(self.device)
        kept: list[torch.Tensor] = []
        one_row = self.one_row_kernels and applies_to(self.model)
        attention = {"one_row": True} if one_row else {}
        written_out = one_row and llama_step.applies_to(self.model)
        with torch.inference_mode(), contextlib.ExitStack() as kernels:
            if one_row:
                kernels.enter_context(engine_attention(self.model))
                kernels.enter_context(one_row_linears(self.model))
            logits, reused = self._sync(full_ids, **attention)
            while True:
                if return_logits:
                    kept.append(logits.clone())
                token = int(choose_tokens(logits.unsqueeze(0), sampling, generator)[0])
                if tracker.push(token) is not None:
                    break
                past = self._wc.length
                if written_out:
                    logits = llama_step.decode_step(self.model, self._wc.cache, token, past)
                else:
                    logits = forward_token(self.model, self._wc.cache, token, past, **attention)
                self._wc.record_forward([token])
        return GenerationResult(
            text=tracker.final_text(), token_ids=tracker.token_ids, finish_reason=tracker.finish_reason,
            prompt_tokens=len(full_ids), cached_tokens=reused,
            logits=torch.stack(kept) if return_logits else None,
        )
