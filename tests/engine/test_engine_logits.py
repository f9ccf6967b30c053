"""Next-token logits through the prefix cache equal a full re-encode (fp32, within 1e-4).

Compared as logits, not greedy tokens: random-init models can emit the same tokens from a broken cache.
"""

from __future__ import annotations

import torch
from tests.fixtures.engine_models import (SYSTEM_PROMPT, bpe_model, bpe_tokenizer, chat_engine, make_llama, max_diff,  # noqa: F401
                             reencode_logits, word_model, word_tokenizer)

from faithforge.engine import PrefixCachedEngine, SamplingConfig

TOL = 1e-4
PROMPTS = ["the cat is red", "you walk to the river and see a big fish", "sun", "what day is it"]


def test_model_depends_on_context(word_model, word_tokenizer):
    """Guard for every test below: changing an early token moves the last logits by far more than TOL."""
    ids = word_tokenizer("the cat is red and the dog is blue")["input_ids"]
    other = [ids[0] + 1] + ids[1:]
    assert max_diff(reencode_logits(word_model, ids), reencode_logits(word_model, other)) > 0.05


def test_single_request_matches_reencode(chat_engine, word_model):
    for prompt in PROMPTS:
        full = chat_engine.renderer.render(chat_engine.renderer.request_turns(prompt))
        assert max_diff(chat_engine.next_token_logits(prompt), reencode_logits(word_model, full)) < TOL


def test_independent_requests_restore_the_prefix(chat_engine, word_model):
    prefix_len = len(chat_engine.prefix_ids)
    before = [(k.clone(), v.clone()) for k, v in chat_engine._wc.prefix_views(prefix_len)]
    for round_ in range(3):
        for prompt in PROMPTS:
            result = chat_engine.generate(prompt, SamplingConfig(max_new_tokens=5 + round_), return_logits=True)
            assert result.cached_tokens == prefix_len
            full = chat_engine.renderer.render(chat_engine.renderer.request_turns(prompt))
            # every step's logits, not just the first: prompt + generated[:t] re-encoded
            for t, row in enumerate(result.logits):
                assert max_diff(row, reencode_logits(word_model, full + result.token_ids[:t])) < TOL
            assert chat_engine._wc.ids == chat_engine.prefix_ids
            assert chat_engine._wc.cache.get_seq_length() == prefix_len
    for (k0, v0), (k1, v1) in zip(before, chat_engine._wc.prefix_views(prefix_len)):
        assert torch.equal(k0, k1) and torch.equal(v0, v1)


def test_text_and_id_prefixes_match_reencode(word_model, word_tokenizer):
    text_engine = PrefixCachedEngine(word_model, word_tokenizer, SYSTEM_PROMPT)
    ids_engine = PrefixCachedEngine(word_model, word_tokenizer, word_tokenizer(SYSTEM_PROMPT)["input_ids"])
    for prompt in PROMPTS:
        full_text = word_tokenizer(SYSTEM_PROMPT + " " + prompt)["input_ids"]
        assert max_diff(text_engine.next_token_logits(" " + prompt), reencode_logits(word_model, full_text)) < TOL
        suffix = word_tokenizer(prompt, add_special_tokens=False)["input_ids"]
        assert max_diff(ids_engine.next_token_logits(suffix), reencode_logits(word_model, full_text)) < TOL


def test_eager_attention_matches_too(word_tokenizer):
    model = make_llama(len(word_tokenizer), seed=3, attn="eager")
    engine = PrefixCachedEngine(model, word_tokenizer, [{"role": "system", "content": SYSTEM_PROMPT}])
    result = engine.generate("the cat", SamplingConfig(max_new_tokens=6), return_logits=True)
    full = engine.renderer.render(engine.renderer.request_turns("the cat"))
    for t, row in enumerate(result.logits):
        assert max_diff(row, reencode_logits(model, full + result.token_ids[:t])) < TOL


def test_multi_turn_extends_the_cache(chat_engine, word_model):
    chat = chat_engine.conversation()
    sampling = SamplingConfig(max_new_tokens=6)
    for turn, prompt in enumerate(["hello you", "the cat is red", "what day is it"]):
        full = chat_engine.renderer.render(chat.turns + chat_engine.renderer.request_turns(prompt))
        assert max_diff(chat.next_token_logits(prompt), reencode_logits(word_model, full)) < TOL
        result = chat.send(prompt, sampling, return_logits=True)
        for t, row in enumerate(result.logits):
            assert max_diff(row, reencode_logits(word_model, full + result.token_ids[:t])) < TOL
        if turn > 0:  # the earlier turns came from the cache, not just the prefix
            assert result.cached_tokens > len(chat_engine.prefix_ids) + 5
    assert len(chat.turns) == 6


def test_interleaved_conversations_and_requests(chat_engine, word_model):
    """Two conversations and independent requests take turns; each turn still matches a re-encode."""
    a, b = chat_engine.conversation(), chat_engine.conversation()
    sampling = SamplingConfig(max_new_tokens=4)
    a.send("the cat is red", sampling)
    b.send("the dog is blue", sampling)
    chat_engine.generate("sun", sampling)
    assert a.parked_nbytes > 0 and b.parked_nbytes > 0
    for conv, prompt in [(a, "and then"), (b, "what day"), (a, "you run")]:
        full = chat_engine.renderer.render(conv.turns + chat_engine.renderer.request_turns(prompt))
        result = conv.send(prompt, sampling, return_logits=True)
        assert result.cached_tokens > len(chat_engine.prefix_ids)  # its parked states were reused
        assert max_diff(result.logits[0], reencode_logits(word_model, full)) < TOL
    full = chat_engine.renderer.render(chat_engine.renderer.request_turns("moon"))
    assert max_diff(chat_engine.next_token_logits("moon"), reencode_logits(word_model, full)) < TOL


def test_batch_with_padding_matches_reencode(chat_engine, word_model):
    results = chat_engine.generate_batch(PROMPTS, SamplingConfig(), max_new_tokens=6, return_logits=True)
    for prompt, result in zip(PROMPTS, results):
        full = chat_engine.renderer.render(chat_engine.renderer.request_turns(prompt))
        assert result.cached_tokens == len(chat_engine.prefix_ids)
        for t, row in enumerate(result.logits):
            assert max_diff(row, reencode_logits(word_model, full + result.token_ids[:t])) < TOL
        assert result.token_ids == chat_engine.generate(prompt, SamplingConfig(max_new_tokens=6)).token_ids


def test_batch_rows_finishing_early_leave_the_batch(chat_engine, word_model):
    """Stop strings end some rows first; the remaining rows' logits stay exact after batch_select_indices."""
    plain = chat_engine.generate_batch(PROMPTS, SamplingConfig(), max_new_tokens=8)
    stop_word = plain[0].text.split()[2]
    results = chat_engine.generate_batch(PROMPTS, SamplingConfig(), max_new_tokens=8, stop=[stop_word],
                                         return_logits=True, batch_size=3)
    assert results[0].finish_reason == "stop"
    for prompt, result in zip(PROMPTS, results):
        full = chat_engine.renderer.render(chat_engine.renderer.request_turns(prompt))
        for t, row in enumerate(result.logits):
            assert max_diff(row, reencode_logits(word_model, full + result.token_ids[:t])) < TOL
