"""Shared-prefix attention (`faithforge.engine.prefix_attention`) gives what SDPA over copied prefixes gives.

The batch runner reads a long shared prefix once per step instead of copying it into every row; the join of the
prefix part and the rows' part by log-sum-exp must equal one softmax over both (fp32, within 1e-5 on attention
outputs and 1e-4 on logits), with padding, causal prefill, rows leaving the batch, sampling and a LoRA adapter.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests.fixtures.engine_models import (SYSTEM_PROMPT, chat_engine, make_llama, max_diff,  # noqa: F401
                                          word_model, word_tokenizer)

from faithforge.engine import PrefixCachedEngine, SamplingConfig
from faithforge.engine import batch as batch_module
from faithforge.engine import prefix_attention
from faithforge.engine.errors import EngineError

PROMPTS = ["the cat is red", "you walk to the river and see a big fish", "sun", "what day is it",
           "the old king and the queen walk to the city on monday"]


def _both_ways(engine, monkeypatch, **kwargs):
    """generate_batch with the prefix copied into every row (SDPA) and with it shared (this module)."""
    monkeypatch.setattr(batch_module, "MIN_SHARED_TOKENS", 10**9)
    copied = engine.generate_batch(PROMPTS, **kwargs)
    monkeypatch.setattr(batch_module, "MIN_SHARED_TOKENS", 1)
    calls = []
    real = prefix_attention.attention

    def counted(*args, **kw):
        calls.append(kw.get("shared_prefix") is not None)
        return real(*args, **kw)

    prefix_attention.AttentionInterface.register(prefix_attention.NAME, counted)  # transformers' public registry
    try:
        shared = engine.generate_batch(PROMPTS, **kwargs)
    finally:
        prefix_attention.AttentionInterface.register(prefix_attention.NAME, real)
    assert calls and all(calls)  # every attention call of the second pass went through the shared prefix
    return copied, shared


def test_greedy_batch_equals_the_copied_prefix_path(chat_engine, monkeypatch):
    copied, shared = _both_ways(chat_engine, monkeypatch, sampling=SamplingConfig(), max_new_tokens=8,
                                return_logits=True)
    assert all(r.cached_tokens >= 40 for r in shared)  # the rows really shared the system prompt
    for a, b in zip(copied, shared):
        assert a.token_ids == b.token_ids
        assert max_diff(a.logits, b.logits) < 1e-4
    assert chat_engine.model.config._attn_implementation == "sdpa"  # set back after the batch


def test_seeded_sampling_and_rows_that_finish_early_match(chat_engine, monkeypatch):
    hot = SamplingConfig(temperature=1.0, seed=7, max_new_tokens=12)
    copied, shared = _both_ways(chat_engine, monkeypatch, sampling=hot, stop=["river", "king"], batch_size=3)
    assert [r.token_ids for r in copied] == [r.token_ids for r in shared]
    assert len({len(r.token_ids) for r in shared}) > 1  # rows left the batch at different steps


def test_a_lora_adapter_on_top_matches_too(word_model, word_tokenizer, monkeypatch):
    from peft import LoraConfig, get_peft_model

    model = make_llama(len(word_tokenizer), seed=3, eos_token_id=word_tokenizer.eos_token_id)
    lora = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    engine = PrefixCachedEngine(lora.eval(), word_tokenizer, [{"role": "system", "content": SYSTEM_PROMPT}])
    copied, shared = _both_ways(engine, monkeypatch, sampling=SamplingConfig(), max_new_tokens=6,
                                return_logits=True)
    for a, b in zip(copied, shared):
        assert a.token_ids == b.token_ids and max_diff(a.logits, b.logits) < 1e-4


class _Attention(torch.nn.Module):
    layer_idx = 0
    num_key_value_groups = 3


def _reference(query, prefix_k, prefix_v, key, value, allowed):
    """SDPA over [prefix copied into every row ; the row's own states] with the GQA heads repeated."""
    batch, groups = query.shape[0], query.shape[1] // key.shape[1]
    full_k = torch.cat([prefix_k.expand(batch, -1, -1, -1), key], -2).repeat_interleave(groups, 1)
    full_v = torch.cat([prefix_v.expand(batch, -1, -1, -1), value], -2).repeat_interleave(groups, 1)
    return F.scaled_dot_product_attention(query, full_k, full_v, attn_mask=allowed).transpose(1, 2)


@pytest.mark.parametrize("kernel", ["fused (CPU)", "unfused (other devices)"])
@pytest.mark.parametrize("new", [1, 5])
def test_the_join_equals_one_softmax_over_prefix_and_rows(new, kernel, monkeypatch):
    if kernel.startswith("unfused"):
        monkeypatch.setattr(prefix_attention, "_attend_fused", prefix_attention._attend_unfused)
    torch.manual_seed(0)
    batch, kv_heads, groups, prefix, rows, dim = 3, 2, 3, 37, 9, 16
    query = torch.randn(batch, kv_heads * groups, new, dim)
    prefix_k, prefix_v = torch.randn(1, kv_heads, prefix, dim), torch.randn(1, kv_heads, prefix, dim)
    key, value = torch.randn(batch, kv_heads, rows, dim), torch.randn(batch, kv_heads, rows, dim)
    # Row 0 left-padded by 3 tokens, row 2 by 1; causal among the last `new` tokens.
    allowed = torch.ones(batch, 1, new, prefix + rows, dtype=torch.bool)
    allowed[0, ..., prefix:prefix + 3] = False
    allowed[2, ..., prefix:prefix + 1] = False
    for t in range(new):
        allowed[..., t, prefix + rows - new + t + 1:] = False
    cache = prefix_attention.shared_prefix_cache(make_llama(10), [(prefix_k, prefix_v)] * 2)
    monkeypatch.setattr(prefix_attention, "_MAX_SCORES", 300)  # a slice per new token
    out, _ = prefix_attention.attention(_Attention(), query, key, value, allowed, shared_prefix=cache)
    assert max_diff(out, _reference(query, prefix_k, prefix_v, key, value, allowed)) < 1e-5
    if new > 1:  # no mask at all: causal among the rows' last tokens
        unmasked, _ = prefix_attention.attention(_Attention(), query, key, value, None, shared_prefix=cache)
        causal = torch.ones(new, prefix + rows, dtype=torch.bool)
        for t in range(new):
            causal[t, prefix + rows - new + t + 1:] = False
        assert max_diff(unmasked, _reference(query, prefix_k, prefix_v, key, value, causal)) < 1e-5


def test_the_batch_cache_holds_views_of_the_prefix_not_copies(chat_engine):
    views = chat_engine._wc.prefix_views(20)
    cache = prefix_attention.shared_prefix_cache(chat_engine.model, views)
    for layer, (k, v) in zip(cache.layers, views):
        assert layer.prefix_keys.data_ptr() == k.data_ptr() and layer.prefix_values.data_ptr() == v.data_ptr()
        assert layer.get_seq_length() == 20  # masks and positions count the prefix


def test_attention_it_cannot_honour_is_refused():
    cache = prefix_attention.shared_prefix_cache(make_llama(10), [(torch.zeros(1, 2, 3, 16),) * 2] * 2)
    q, kv = torch.zeros(1, 6, 1, 16), torch.zeros(1, 2, 1, 16)
    with pytest.raises(EngineError, match="softcap"):
        prefix_attention.attention(_Attention(), q, kv, kv, None, shared_prefix=cache, softcap=30.0)
    with pytest.raises(EngineError, match="block_indices"):  # an argument it does not know, with a value
        prefix_attention.attention(_Attention(), q, kv, kv, None, shared_prefix=cache, block_indices=[0])


def test_a_prefill_in_several_chunks_matches(chat_engine, monkeypatch):
    chat_engine.prefill_chunk = 3  # each row's question arrives in pieces of 3 tokens
    copied, shared = _both_ways(chat_engine, monkeypatch, sampling=SamplingConfig(), max_new_tokens=5,
                                return_logits=True)
    for a, b in zip(copied, shared):
        assert a.token_ids == b.token_ids and max_diff(a.logits, b.logits) < 1e-4


def test_a_qwen2_model_passes_its_attention_arguments_through(word_tokenizer, monkeypatch):
    """Qwen2 hands attention `sliding_window=None`; only arguments with a value are refused."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=len(word_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, initializer_range=0.3, use_sliding_window=False,
                         eos_token_id=word_tokenizer.eos_token_id, attn_implementation="sdpa")
    torch.manual_seed(5)
    engine = PrefixCachedEngine(Qwen2ForCausalLM(config).eval(), word_tokenizer,
                                [{"role": "system", "content": SYSTEM_PROMPT}])
    copied, shared = _both_ways(engine, monkeypatch, sampling=SamplingConfig(), max_new_tokens=5, return_logits=True)
    for a, b in zip(copied, shared):
        assert a.token_ids == b.token_ids and max_diff(a.logits, b.logits) < 1e-4


def test_overlapping_batches_on_one_model_leave_it_as_it_was(word_tokenizer):
    """A review found two overlapping blocks restoring in the wrong order: the first out set SDPA back under the
    second, whose steps then ignored the prefix. Now the last one out restores."""
    model = make_llama(len(word_tokenizer))
    first, second = (prefix_attention.engine_attention(model) for _ in range(2))
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert model.config._attn_implementation == prefix_attention.NAME  # still inside the second
    second.__exit__(None, None, None)
    assert model.config._attn_implementation == "sdpa"


def test_a_batch_whose_attention_skipped_the_prefix_is_an_error_not_a_wrong_answer(chat_engine, monkeypatch):
    monkeypatch.setattr(batch_module, "MIN_SHARED_TOKENS", 1)
    decode = batch_module.BatchRunner._decode

    def switched_back_after_the_prefill(runner, *args, **kwargs):  # what the overlapping blocks once did
        runner.model.config._attn_implementation = "sdpa"
        return decode(runner, *args, **kwargs)

    monkeypatch.setattr(batch_module.BatchRunner, "_decode", switched_back_after_the_prefill)
    # Same lengths: no padding, so decode steps get no mask and SDPA would run over the rows' states alone.
    with pytest.raises(EngineError, match="did not read the shared prefix"):
        chat_engine.generate_batch(["the cat is red"] * 3, SamplingConfig(), max_new_tokens=3)
    assert chat_engine.model.config._attn_implementation == "sdpa"
