"""The cache itself: BPE merges across the prefix boundary, foreign caches, stale weights, flat memory."""

from __future__ import annotations

import pytest
import torch
from tests.fixtures.engine_models import (SYSTEM_PROMPT, bpe_model, bpe_tokenizer, chat_engine, make_llama, max_diff,  # noqa: F401
                             reencode_logits, word_model, word_tokenizer)

from faithforge.engine import CacheMismatchError, PrefixCache, PrefixCachedEngine, SamplingConfig

TOL = 1e-4


def test_bpe_merge_across_the_boundary(bpe_model, bpe_tokenizer):
    prefix = "the quick bro"
    engine = PrefixCachedEngine(bpe_model, bpe_tokenizer, prefix)
    full = bpe_tokenizer(prefix + "wn fox")["input_ids"]
    assert full[: len(engine.prefix_ids)] != engine.prefix_ids  # the premise: "bro"+"wn" merged into "brown"
    result = engine.generate("wn fox", SamplingConfig(max_new_tokens=5), return_logits=True)
    assert result.cached_tokens < len(engine.prefix_ids)
    for t, row in enumerate(result.logits):
        assert max_diff(row, reencode_logits(bpe_model, full + result.token_ids[:t])) < TOL
    # the prefix came back exactly (its cut-off states were re-appended), so later requests are exact too
    assert engine._wc.ids == engine.prefix_ids
    fresh = PrefixCachedEngine(bpe_model, bpe_tokenizer, prefix)
    for (k0, v0), (k1, v1) in zip(fresh._wc.prefix_views(len(engine.prefix_ids)),
                                  engine._wc.prefix_views(len(engine.prefix_ids))):
        assert torch.equal(k0, k1) and torch.equal(v0, v1)
    plain = bpe_tokenizer(prefix + " lazy dog")["input_ids"]
    assert max_diff(engine.next_token_logits(" lazy dog"), reencode_logits(bpe_model, plain)) < TOL
    batch = engine.generate_batch(["wn fox", " lazy dog", "ken"], SamplingConfig(), max_new_tokens=4,
                                  return_logits=True)
    for suffix, res in zip(["wn fox", " lazy dog", "ken"], batch):
        ids = bpe_tokenizer(prefix + suffix)["input_ids"]
        assert max_diff(res.logits[0], reencode_logits(bpe_model, ids)) < TOL


def test_bpe_boundary_in_a_conversation(bpe_model, bpe_tokenizer):
    engine = PrefixCachedEngine(bpe_model, bpe_tokenizer, "the quick bro")
    chat = engine.conversation()
    chat.send("wn", SamplingConfig(max_new_tokens=3))
    text = "the quick bro" + "".join(c for _, c in chat.turns) + " fox"
    assert max_diff(chat.next_token_logits(" fox"), reencode_logits(bpe_model, bpe_tokenizer(text)["input_ids"])) < TOL
    engine.generate(" lazy", SamplingConfig(max_new_tokens=2))  # moves the conversation out of the cache
    assert engine._wc.ids == engine.prefix_ids


def test_prefix_cache_round_trip(chat_engine, word_model, word_tokenizer, tmp_path):
    exported = chat_engine.export_prefix_cache()
    exported.save(tmp_path / "prefix.pt")
    loaded = PrefixCache.load(tmp_path / "prefix.pt")
    prefix = [{"role": "system", "content": SYSTEM_PROMPT}]
    reused = PrefixCachedEngine(word_model, word_tokenizer, prefix, prefix_cache=loaded)
    full = reused.renderer.render(reused.renderer.request_turns("the cat"))
    assert max_diff(reused.next_token_logits("the cat"), reencode_logits(word_model, full)) < TOL


def test_foreign_cache_is_rejected(chat_engine, word_model, word_tokenizer):
    exported = chat_engine.export_prefix_cache()
    prefix = [{"role": "system", "content": SYSTEM_PROMPT}]
    other_weights = make_llama(len(word_tokenizer), seed=9, eos_token_id=word_tokenizer.eos_token_id)
    with pytest.raises(CacheMismatchError, match="different model or tokenizer"):
        PrefixCachedEngine(other_weights, word_tokenizer, prefix, prefix_cache=exported)
    other_tokenizer = word_tokenizer.__class__(tokenizer_object=word_tokenizer.backend_tokenizer,
                                               bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    other_tokenizer.chat_template = word_tokenizer.chat_template.replace("<system> ", "<system> <user> ")
    with pytest.raises(CacheMismatchError, match="different model or tokenizer"):
        PrefixCachedEngine(word_model, other_tokenizer, prefix, prefix_cache=exported)
    with pytest.raises(CacheMismatchError, match="different prefix"):
        PrefixCachedEngine(word_model, word_tokenizer, [{"role": "system", "content": "the cat"}], prefix_cache=exported)
    stranger = PrefixCachedEngine(word_model, word_tokenizer, prefix).conversation()
    with pytest.raises(CacheMismatchError, match="another engine"):
        chat_engine._attach(stranger)


def test_changed_weights_need_a_refresh(word_tokenizer):
    model = make_llama(len(word_tokenizer), seed=4)
    engine = PrefixCachedEngine(model, word_tokenizer, [{"role": "system", "content": SYSTEM_PROMPT}])
    chat = engine.conversation()
    chat.send("the cat", SamplingConfig(max_new_tokens=3))
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.mul_(1.5)  # what an optimizer step does: an in-place update
    with pytest.raises(CacheMismatchError, match="refresh"):
        engine.generate("the cat")
    engine.refresh()
    full = engine.renderer.render(chat.turns + engine.renderer.request_turns("sun"))
    assert max_diff(chat.next_token_logits("sun"), reencode_logits(model, full)) < TOL


def test_memory_stays_at_the_prefix_across_requests(chat_engine):
    prefix_bytes = chat_engine.cache_nbytes
    per_token = prefix_bytes / len(chat_engine.prefix_ids)
    assert per_token == 2 * 2 * 2 * 16 * 4  # K+V x layers x kv_heads x head_dim x fp32 bytes
    held = chat_engine.cache_storage_nbytes  # buffer capacity: prefix + growth slack
    for i in range(10):
        chat_engine.generate("the cat " * i, SamplingConfig(max_new_tokens=4))
        assert chat_engine.cache_nbytes == prefix_bytes
        assert chat_engine.cache_storage_nbytes == held  # short requests write into the slack: no new memory
    chat_engine.generate_batch(["the cat"] * 8, SamplingConfig(), max_new_tokens=4)
    assert chat_engine.cache_nbytes == prefix_bytes


def test_parked_conversation_holds_only_its_own_tokens(chat_engine):
    chat = chat_engine.conversation()
    chat.send("the cat is red", SamplingConfig(max_new_tokens=5))
    own = len(chat_engine._wc.ids) - len(chat_engine.prefix_ids)
    chat_engine.generate("sun", SamplingConfig(max_new_tokens=2))
    per_token = chat_engine.cache_nbytes / len(chat_engine.prefix_ids)
    assert chat.parked_nbytes == own * per_token
    chat_engine.reset()
    chat.send("and then", SamplingConfig(max_new_tokens=2))  # parked states reused, then reset drops them
    chat_engine.reset()
    assert chat_engine._wc.ids == chat_engine.prefix_ids


def test_lead_tiny_model_batched_greedy_through_its_chat_template(tiny_model_dir):
    """The evaluation stage's call: batched greedy on the project's tiny model equals model.generate."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    words = [w for w in tokenizer.get_vocab() if w.isalpha()][:30]
    engine = PrefixCachedEngine(model, tokenizer, [{"role": "system", "content": " ".join(words[:20])}])
    prompts = [" ".join(words[i:i + 1 + i % 5]) for i in range(6)]
    results = engine.generate_batch(prompts, SamplingConfig(), max_new_tokens=8)
    for prompt, result in zip(prompts, results):
        messages = [{"role": "system", "content": " ".join(words[:20])}, {"role": "user", "content": prompt}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             do_sample=False, max_new_tokens=8)
        assert result.token_ids == out[0, len(ids):].tolist()
