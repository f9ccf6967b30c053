"""The one-row decode kernels (`faithforge.engine.one_row`) give what stock PyTorch gives.

`PrefixCachedEngine.generate` reads a request and decodes its tokens through oneDNN's linear and a grouped,
split-K attention joined by log-sum-exp. Each must equal the stock computation up to float rounding (attention
outputs within 1e-5, logits within 1e-4, the same greedy and seeded-sampled tokens), must really be taken where
it applies, and must leave everything else (other threads, other models, other dtypes) as it was.
"""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F
from tests.fixtures.engine_models import SYSTEM_PROMPT, make_llama, max_diff, word_model, word_tokenizer  # noqa: F401

from faithforge.engine import PrefixCachedEngine, SamplingConfig
from faithforge.engine import one_row, prefix_attention

pytestmark = pytest.mark.skipif(not one_row.onednn_linear_available(), reason="this PyTorch build has no oneDNN")


def _states(kv_heads: int, tokens: int, head_dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values as a cache holds them: views of buffers with room for 37 more tokens (not contiguous)."""
    g = torch.Generator().manual_seed(seed)
    key = torch.randn(1, kv_heads, tokens + 37, head_dim, generator=g)[..., :tokens, :]
    value = torch.randn(1, kv_heads, tokens + 37, head_dim, generator=g)[..., :tokens, :]
    return key, value


def _stock(query, key, value, scale):
    """transformers' way for a row without padding: repeat each kv head over its query heads, causal SDPA
    aligned to the end (the new tokens are the last keys)."""
    heads, new, tokens = query.shape[1], query.shape[2], key.shape[2]
    groups = heads // key.shape[1]
    allowed = torch.ones(new, tokens, dtype=torch.bool).tril(tokens - new)
    return F.scaled_dot_product_attention(query, key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1),
                                          attn_mask=allowed, scale=scale)


@pytest.mark.parametrize("threads", [1, 2, 4])
@pytest.mark.parametrize("new", [1, 6])
@pytest.mark.parametrize("tokens", [6, 9, 203])  # past 0 or 3 keys, and enough for chunks with a remainder
def test_attention_equals_sdpa_over_repeated_kv_heads(tokens, new, threads, monkeypatch):
    if new > tokens:
        pytest.skip("more new tokens than keys")
    monkeypatch.setattr(one_row, "MIN_CHUNK_TOKENS", 16)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    key, value = _states(kv_heads=3, tokens=tokens, head_dim=16, seed=tokens)
    query = torch.randn(1, 9, new, 16, generator=torch.Generator().manual_seed(new))
    got = one_row.attend_one_row(query, key, value, scale=0.25)
    assert got.shape == (1, 9, new, 16)
    assert max_diff(got, _stock(query, key, value, 0.25)) < 1e-5


def test_chunks_make_every_thread_equally_busy():
    assert one_row.key_chunks(kv_heads=3, tokens=6287, threads=2) == 2  # SmolLM2: 3 kv heads on 2 cores
    assert one_row.key_chunks(kv_heads=3, tokens=6287, threads=4) == 4
    assert one_row.key_chunks(kv_heads=8, tokens=6287, threads=2) == 1  # already balanced
    assert one_row.key_chunks(kv_heads=2, tokens=6287, threads=3) == 3
    assert one_row.key_chunks(kv_heads=3, tokens=300, threads=2) == 1  # chunks under MIN_CHUNK_TOKENS: no split


def test_only_a_plain_causal_mask_is_accepted():
    allowed = torch.ones(3, 10, dtype=torch.bool).tril(7).view(1, 1, 3, 10)
    assert one_row.is_plain_causal(None, 3, 10)
    assert one_row.is_plain_causal(allowed, 3, 10)
    padded = allowed.clone()
    padded[..., 0] = False  # a pad before the row
    assert not one_row.is_plain_causal(padded, 3, 10)
    assert not one_row.is_plain_causal(allowed.float(), 3, 10)
    assert not one_row.is_plain_causal(allowed, 2, 10)


@pytest.fixture
def counted(monkeypatch):
    """Counts the one-row attention calls and oneDNN linear calls made while a test runs."""
    calls = {"attention": 0, "linear": 0}
    attend, linear = one_row.attend_one_row, one_row.onednn_linear

    def attend_counted(*args, **kwargs):
        calls["attention"] += 1
        return attend(*args, **kwargs)

    def linear_counted(*args):
        calls["linear"] += 1
        return linear(*args)

    monkeypatch.setattr(prefix_attention, "attend_one_row", attend_counted)  # the model's forward
    monkeypatch.setattr(one_row, "attend_one_row", attend_counted)  # llama_step's decode steps
    monkeypatch.setattr(one_row, "onednn_linear", linear_counted)
    return calls


def _both_ways(engine, question, sampling, **kwargs):
    engine.one_row_kernels = False
    stock = engine.generate(question, sampling, return_logits=True, **kwargs)
    engine.one_row_kernels = True
    fast = engine.generate(question, sampling, return_logits=True, **kwargs)
    return stock, fast


@pytest.mark.parametrize("min_chunk", [256, 8])  # the fixture's ~50-token prefix: one chunk, then split
def test_generate_gives_the_stock_tokens_and_logits(word_model, word_tokenizer, counted, monkeypatch, min_chunk):
    monkeypatch.setattr(one_row, "MIN_CHUNK_TOKENS", min_chunk)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)  # 2 kv heads on 3 threads: 3 chunks where allowed
    chunked = []
    real_chunks = one_row.key_chunks
    monkeypatch.setattr(one_row, "key_chunks", lambda *a: chunked.append(real_chunks(*a)) or chunked[-1])
    engine = PrefixCachedEngine(word_model, word_tokenizer, [{"role": "system", "content": SYSTEM_PROMPT}])
    for sampling in (SamplingConfig(max_new_tokens=10), SamplingConfig(temperature=1.0, seed=3, max_new_tokens=10)):
        stock, fast = _both_ways(engine, "the old king walks to the river", sampling)
        assert fast.token_ids == stock.token_ids
        assert max_diff(fast.logits, stock.logits) < 1e-4
    layers = word_model.config.num_hidden_layers
    # Per generate: the request's first call and 9 decode steps, each through every layer's attention.
    assert counted["attention"] == 2 * 10 * layers
    assert counted["linear"] >= 2 * 9 * (7 * layers + 1)  # q k v o gate up down per layer, and the head
    assert (max(chunked) > 1) == (min_chunk == 8)  # the split really ran in the second case, not in the first
    assert word_model.config._attn_implementation == "sdpa"  # set back after each request
    assert not any("forward" in m.__dict__ for m in word_model.modules())  # the linears too


def test_a_conversation_and_a_lora_adapter_match_too(word_model, word_tokenizer, counted):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(make_llama(len(word_tokenizer), seed=5, eos_token_id=word_tokenizer.eos_token_id),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    model.eval()
    engine = PrefixCachedEngine(model, word_tokenizer, [{"role": "system", "content": SYSTEM_PROMPT}])
    greedy = SamplingConfig(max_new_tokens=8)
    stock, fast = _both_ways(engine, "what day is it", greedy)
    assert fast.token_ids == stock.token_ids and max_diff(fast.logits, stock.logits) < 1e-4
    assert counted["attention"] > 0 and counted["linear"] > 0

    turns = {}
    for kernels in (False, True):
        engine.one_row_kernels = kernels
        chat = engine.conversation()
        turns[kernels] = [chat.send(text, greedy).token_ids for text in ("the cat is red", "and the dog")]
    assert turns[True] == turns[False]


def test_other_threads_keep_stock_linears_while_a_block_is_open(word_model):
    head = word_model.lm_head
    x = torch.randn(1, 1, head.in_features)
    seen = {}

    def other_thread():
        with torch.inference_mode():
            seen["other"] = head(x)

    with torch.inference_mode(), one_row.one_row_linears(word_model):
        mine = head(x)
        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join()
    with torch.inference_mode():
        stock = F.linear(x, head.weight, head.bias)
    assert torch.equal(seen["other"], stock)  # the other thread's call was not switched
    assert torch.equal(mine, one_row.onednn_linear(x, head.weight, head.bias))
    assert max_diff(mine, stock) < 1e-4
    assert "forward" not in head.__dict__  # removed when the block closed


def test_a_forward_set_by_someone_else_meanwhile_is_left_in_place(word_model):
    head = word_model.lm_head
    with one_row.one_row_linears(word_model):
        theirs = head.forward = lambda x: F.linear(x, head.weight, head.bias)  # e.g. a hook library, mid-block
    assert head.__dict__.pop("forward") is theirs


def test_attention_outside_its_scope_falls_back_to_sdpa(counted):
    """Heads of different key and value sizes (multi-head latent attention) or a non-causal module go to SDPA."""

    class Module(torch.nn.Module):
        is_causal = True
        num_key_value_groups = 2  # what transformers' attention modules carry for SDPA's repeat_kv

    query, key, value = torch.randn(1, 4, 1, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 6)
    out, _ = prefix_attention.attention(Module(), query, key, value, None, one_row=True)
    assert out.shape == (1, 1, 4, 6) and counted["attention"] == 0
    acausal = Module()
    acausal.is_causal = False
    prefix_attention.attention(acausal, query, key, torch.randn(1, 2, 5, 8), None, one_row=True)
    assert counted["attention"] == 0


def test_models_it_was_not_measured_on_keep_the_stock_path(word_tokenizer, counted):
    compiled = torch.compile(make_llama(len(word_tokenizer)))  # wrapped only, never run: compiling is not the point
    assert not one_row.applies_to(compiled)
    in_place = make_llama(len(word_tokenizer))
    in_place.compile()
    assert not one_row.applies_to(in_place)
    for model in (make_llama(len(word_tokenizer), attn="eager"), make_llama(len(word_tokenizer)).to(torch.bfloat16)):
        assert not one_row.applies_to(model)
        engine = PrefixCachedEngine(model, word_tokenizer, "the cat")
        engine.generate(" is", SamplingConfig(max_new_tokens=3))
    assert counted == {"attention": 0, "linear": 0}


def test_without_onednn_the_engine_decodes_as_before(word_model, word_tokenizer, counted, monkeypatch):
    monkeypatch.setattr(one_row, "onednn_linear_available", lambda: False)
    engine = PrefixCachedEngine(word_model, word_tokenizer, [{"role": "system", "content": SYSTEM_PROMPT}])
    stock, fast = _both_ways(engine, "the cat is red", SamplingConfig(max_new_tokens=6))
    assert fast.token_ids == stock.token_ids
    assert counted["linear"] == 0 and counted["attention"] > 0  # attention still grouped
