"""LlamaBatchDecoder: many sequences decoded together in one llama.cpp context, prompts shared as a tree.

Why: one token a step leaves 2 CPU cores waiting on the weights, so a step that carries many sequences' next
tokens costs little more (a decode-only probe of SmolLM2-135M Q4_1: ~73 tokens/s one sequence at a time, ~219 with
16 a step). The pairs stage samples k answers for each of many sources, exactly that shape: 1.70x the tokens/s
at 64 a step, the same `grounding`-flagged rate (`bench/gguf_batched.py`, BENCHMARKS.md).

How, with llama.cpp's public C API (through llama-cpp-python's ctypes bindings):
- one context with a unified KV cache (`kv_unified`): a cell can belong to several sequences, so a prompt
  token shared by many requests is evaluated and stored once and tagged with all of them (`n_seq_id > 1`);
- a group of requests is prefilled as a tree: the tokens every row shares, once; then each distinct prompt's
  own tokens, once for all its repeats (the k samples of one source); each request then decodes its own
  tokens, all requests' next tokens in one `llama_decode` per step;
- the group's shared prefix stays in sequence 0 after the group ("resident"), so the next group evaluates only
  what differs: the system prompt once per call, the k samples of one source once, as llama.cpp's own
  longest-common-prefix reuse does for one sequence at a time (`reset` forgets it);
- each request samples through its own llama.cpp sampler chain seeded by the caller (`SamplerSpec`), so its
  random stream is its own (its logits still depend on the step's arithmetic, below).

The context is `llama_cpp.Llama`'s (a decode call of at most 512 tokens, the caller's context or the model's own)
with flash attention where the backend has it (a probe while building this: 1.16-1.34x the tokens/s of the unfused
attention at 1-64 sequences). A request alone in its group computes what `Llama(flash_attn=True).generate`
computes, token for token (tests/engine/test_gguf_sampler.py). Rows that share a step are not bit-identical to the
same rows one by one: the step's arithmetic depends on the rows in it, so near-ties can part (BENCHMARKS.md
measures how often), as in the engine's batches.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from faithforge.engine.errors import EngineError
from faithforge.engine.prompts import common_prefix_length

#: Tokens per `llama_decode` call (`llama_cpp.Llama`'s default `n_batch`).
DECODE_BATCH_TOKENS = 512


@dataclass(frozen=True)
class SamplerSpec:
    """How one request picks its tokens: greedy (temperature 0) or softmax(logits / T) with top-k/top-p, seeded.

    The chain is `llama_cpp.Llama`'s for these settings: top-k, typical 1, top-p, min-p 0, temperature, then a
    draw from a generator seeded by `seed` (greedy: argmax)."""

    temperature: float
    top_k: int
    top_p: float
    seed: int


@dataclass
class _Request:
    ids: list[int]
    spec: SamplerSpec
    seq: int
    on_token: Callable[[int], bool]
    """Called with each sampled token; returns True when the request is finished (that token is not decoded)."""
    position: int
    """Where its next token goes: the prompt's length, then one more per decoded token."""
    chain: object = None
    next_token: int = -1
    cached_tokens: int = 0
    done: bool = False


def _free(ctx, model, batch, chains_box) -> None:
    import llama_cpp

    for chain in chains_box:
        llama_cpp.llama_sampler_free(chain)
    llama_cpp.llama_batch_free(batch)
    if ctx:
        llama_cpp.llama_free(ctx)
    if model:
        llama_cpp.llama_model_free(model)


class LlamaBatchDecoder:
    """One llama.cpp model and context that decode groups of requests together.

    gguf: the model file. n_ctx: the context's KV cells for a whole group (0: the model's training context).
    threads: CPU threads for both prompt and decode steps.
    """

    def __init__(self, gguf: str | Path, *, n_ctx: int, threads: int):
        import llama_cpp

        # llama.cpp logs every load step through llama-cpp-python's logger: errors only, as Llama(verbose=False)
        # sets it too (the logger is process-wide in llama-cpp-python)
        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
        llama_cpp.llama_backend_init()
        model_params = llama_cpp.llama_model_default_params()
        model_params.n_gpu_layers = 0  # this decoder is the CPU path (the sampler choice sends GPUs elsewhere)
        model = llama_cpp.llama_model_load_from_file(str(gguf).encode(), model_params)
        if not model:
            raise EngineError(f"llama.cpp could not load {gguf}: is it a GGUF model file?")
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx or llama_cpp.llama_model_n_ctx_train(model)
        # llama.cpp caps a decode call at min(n_ctx, n_batch) tokens, and a step carries one token per sequence
        params.n_batch = params.n_ubatch = min(params.n_ctx, DECODE_BATCH_TOKENS)
        params.n_threads = params.n_threads_batch = threads
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO  # on where the backend has it (CPU: yes)
        params.n_seq_max = min(llama_cpp.llama_max_parallel_sequences(), params.n_batch)
        params.kv_unified = True  # cells shared between sequences (prompts stored once)
        ctx = llama_cpp.llama_init_from_model(model, params)
        if not ctx:
            llama_cpp.llama_model_free(model)
            raise EngineError(f"llama.cpp could not create a context of {params.n_ctx} tokens for {gguf}")
        self._llama = llama_cpp
        self._model, self._ctx = model, ctx
        self._memory = llama_cpp.llama_get_memory(ctx)
        self.n_batch = llama_cpp.llama_n_batch(ctx)  # what llama.cpp took: a decode call holds at most this many
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, params.n_seq_max)
        self._chains: list = []  # live sampler chains, freed with the context if a call is interrupted
        weakref.finalize(self, _free, ctx, model, self._batch, self._chains)
        self.n_ctx = llama_cpp.llama_n_ctx(ctx)
        self.max_sequences = min(params.n_seq_max, self.n_batch)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model))
        self._resident: list[int] = []  # prompt tokens sequence 0 holds from the last group

    def reset(self) -> None:
        """Forget every cell, the resident prefix included: what follows computes as in a fresh context."""
        self._llama.llama_memory_clear(self._memory, True)
        self._resident = []

    def run_group(self, requests: list[tuple[list[int], SamplerSpec, Callable[[int], bool]]]) -> list[int]:
        """Decode every request of the group to its end; returns each request's cached prompt tokens, those the
        model did not compute for it: the resident prefix the group reused, the shared prefix for all but the
        group's first request, the whole prompt for a repeat."""
        if len(requests) > self.max_sequences:
            raise EngineError(f"{len(requests)} requests in one group; llama.cpp holds at most {self.max_sequences}")
        rows = [ids for ids, _, _ in requests]
        group = [_Request(ids, spec, seq, on_token, position=len(ids))
                 for seq, (ids, spec, on_token) in enumerate(requests)]
        resident, self._resident = self._resident, []  # until this group ends well, nothing is known to be held
        try:
            for request in group:
                request.chain = self._chain(request.spec)
            self._prefill(group, resident)
            self._decode_to_end(group)
            self._keep_resident(rows)
        except BaseException:
            self.reset()  # an interrupted prefill may have left cells half written: keep none of them
            raise
        finally:
            for request in group:
                if request.chain is not None:
                    self._chains.remove(request.chain)
                    self._llama.llama_sampler_free(request.chain)
        return [r.cached_tokens for r in group]

    # -- the steps of a group ------------------------------------------------------------------------------

    def _prefill(self, group: list[_Request], resident: list[int]) -> None:
        llama, rows = self._llama, [r.ids for r in group]
        shared = _shared_length(rows)
        reuse = min(common_prefix_length(resident, rows[0]), shared)
        if not llama.llama_memory_seq_rm(self._memory, 0, reuse, -1):  # the resident's tail this group does not share
            self.reset()  # a cache that cannot drop a tail (recurrent models): evaluate the whole prompt instead
            reuse = 0
        for request in group[1:]:
            llama.llama_memory_seq_rm(self._memory, request.seq, -1, -1)
            if reuse:
                llama.llama_memory_seq_cp(self._memory, 0, request.seq, 0, reuse)
        by_prompt: dict[tuple[int, ...], list[_Request]] = {}  # a distinct prompt -> its requests, in order
        for request in group:
            by_prompt.setdefault(tuple(request.ids), []).append(request)
        every = tuple(r.seq for r in group)
        entries = [(rows[0][p], p, every, None) for p in range(reuse, shared)]
        for prompt, same in by_prompt.items():
            same[0].cached_tokens = reuse if same[0] is group[0] else shared
            for repeat in same[1:]:
                repeat.cached_tokens = len(prompt)
            seqs = tuple(r.seq for r in same)
            last = len(prompt) - 1
            entries += [(prompt[p], p, seqs, prompt if p == last else None) for p in range(shared, len(prompt))]
        self._decode(entries, lambda prompt, index: [self._sample(r, index) for r in by_prompt[prompt]])

    def _decode_to_end(self, group: list[_Request]) -> None:
        by_seq = {r.seq: r for r in group}
        while True:
            entries = []
            for request in group:
                if not request.done:
                    entries.append((request.next_token, request.position, (request.seq,), request.seq))
                    request.position += 1
            if not entries:
                return
            self._decode(entries, lambda seq, index: self._sample(by_seq[seq], index))

    def _sample(self, request: _Request, index: int) -> None:
        token = int(self._llama.llama_sampler_sample(request.chain, self._ctx, index))
        request.next_token = token
        if request.on_token(token):
            request.done = True
            if request.seq != 0:  # its own tokens leave the cache; sequence 0 keeps the prompt until the group ends
                self._llama.llama_memory_seq_rm(self._memory, request.seq, -1, -1)

    def _decode(self, entries: list, on_logits: Callable) -> None:
        """Evaluate `entries` (token, position, sequence ids, logits tag or None), `n_batch` tokens a call;
        after each call, `on_logits(tag, index in that call)` for the entries that asked for logits."""
        llama, batch = self._llama, self._batch
        for start in range(0, len(entries), self.n_batch):
            chunk = entries[start: start + self.n_batch]
            for i, (token, position, seqs, tag) in enumerate(chunk):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, position, len(seqs)
                for j, seq in enumerate(seqs):
                    batch.seq_id[i][j] = seq
                batch.logits[i] = tag is not None
            batch.n_tokens = len(chunk)
            status = llama.llama_decode(self._ctx, batch)
            if status == 1:
                raise EngineError(f"llama.cpp found no room for {len(chunk)} tokens in its {self.n_ctx}-token "
                                  "context: raise n_ctx or lower batch_size")
            if status != 0:
                raise EngineError(f"llama.cpp could not decode a batch of {len(chunk)} tokens (status {status})")
            for i, (_, _, _, tag) in enumerate(chunk):
                if tag is not None:
                    on_logits(tag, i)

    def _chain(self, spec: SamplerSpec):
        llama = self._llama
        chain = llama.llama_sampler_chain_init(llama.llama_sampler_chain_default_params())
        self._chains.append(chain)
        if spec.temperature == 0:
            links = [llama.llama_sampler_init_greedy()]
        else:
            links = [llama.llama_sampler_init_top_k(spec.top_k), llama.llama_sampler_init_typical(1.0, 1),
                     llama.llama_sampler_init_top_p(spec.top_p, 1), llama.llama_sampler_init_min_p(0.0, 1),
                     llama.llama_sampler_init_temp(spec.temperature), llama.llama_sampler_init_dist(spec.seed)]
        for link in links:
            llama.llama_sampler_chain_add(chain, link)  # the chain owns its links
        return chain

    def _keep_resident(self, rows: list[list[int]]) -> None:
        """Keep the group's shared prompt prefix in sequence 0 for the next group; drop everything else."""
        llama = self._llama
        shared = _shared_length(rows)
        for seq in range(1, len(rows)):
            llama.llama_memory_seq_rm(self._memory, seq, -1, -1)
        if llama.llama_memory_seq_rm(self._memory, 0, shared, -1):
            self._resident = list(rows[0][:shared])
        else:  # the cache cannot drop a tail: hold nothing
            self.reset()


def _shared_length(rows: list[list[int]]) -> int:
    """Leading tokens every row shares, at most the shortest row minus one (its last token gives its logits)."""
    shared = min(len(r) for r in rows) - 1
    for row in rows[1:]:
        shared = min(shared, common_prefix_length(rows[0], row))
    return shared


def cells_needed(rows: list[list[int]], max_new_tokens: int) -> int:
    """KV cells a group of `rows` takes at most: its prompt tree plus every request's new tokens."""
    shared = _shared_length(rows)
    distinct = {tuple(r) for r in rows}
    return shared + sum(len(r) - shared for r in distinct) + len(rows) * max_new_tokens


def fitting_groups(rows: list[list[int]], batch_size: int, max_new_tokens: int, n_ctx: int) -> list[range]:
    """Consecutive index ranges of at most `batch_size` rows whose cells fit `n_ctx` together (a row alone always
    forms a group: the caller checks that a single prompt and its budget fit)."""
    groups, start = [], 0
    while start < len(rows):
        end = min(start + batch_size, len(rows))
        while end - start > 1 and cells_needed(rows[start:end], max_new_tokens) > n_ctx:
            end -= 1
        groups.append(range(start, end))
        start = end
    return groups
