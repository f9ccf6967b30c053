"""Generation behaviour: identical to model.generate when greedy, reproducible sampling, every stop reason."""

from __future__ import annotations

import pytest
import torch
from tests.fixtures.engine_models import SYSTEM_PROMPT, chat_engine, make_llama, word_model, word_tokenizer  # noqa: F401

from faithforge.engine import EngineError, PrefixCachedEngine, SamplingConfig
from faithforge.engine.sampling import filter_logits

PROMPTS = ["the cat is red", "you walk to the river", "sun"]


def hf_greedy(model, ids: list[int], n: int, eos: int | None) -> list[int]:
    out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         do_sample=False, max_new_tokens=n, eos_token_id=eos, pad_token_id=0)
    return out[0, len(ids):].tolist()


def test_greedy_equals_model_generate(chat_engine, word_model):
    for prompt in PROMPTS:
        full = chat_engine.renderer.render(chat_engine.renderer.request_turns(prompt))
        result = chat_engine.generate(prompt, SamplingConfig(max_new_tokens=12))
        assert result.token_ids == hf_greedy(word_model, full, 12, word_model.config.eos_token_id)
        assert result.finish_reason in {"length", "eos"}
        assert result.prompt_tokens == len(full) and result.computed_prompt_tokens == len(full) - 42


def test_eos_stops_like_model_generate(word_tokenizer):
    model = make_llama(len(word_tokenizer), seed=5)
    prefix = [{"role": "system", "content": SYSTEM_PROMPT}]
    free = PrefixCachedEngine(model, word_tokenizer, prefix).generate("the cat", SamplingConfig(max_new_tokens=8))
    eos = free.token_ids[3]  # make the 4th greedy token (or an earlier repeat of it) the EOS
    model.generation_config.eos_token_id = eos
    engine = PrefixCachedEngine(model, word_tokenizer, prefix)
    result = engine.generate("the cat", SamplingConfig(max_new_tokens=8))
    assert result.finish_reason == "eos" and result.token_ids[-1] == eos and len(result.token_ids) <= 4
    full = engine.renderer.render(engine.renderer.request_turns("the cat"))
    assert result.token_ids == hf_greedy(model, full, 8, eos)


def test_sampling_is_reproducible_under_a_seed(chat_engine):
    hot = SamplingConfig(temperature=1.5, top_k=50, top_p=0.95, seed=7, max_new_tokens=15)
    first = chat_engine.generate("the cat", hot)
    assert chat_engine.generate("the cat", hot).token_ids == first.token_ids
    other = chat_engine.generate("the cat", SamplingConfig(temperature=1.5, seed=8, max_new_tokens=15))
    assert other.token_ids != first.token_ids
    batch_a = chat_engine.generate_batch(PROMPTS, hot)
    batch_b = chat_engine.generate_batch(PROMPTS, hot)
    assert [r.token_ids for r in batch_a] == [r.token_ids for r in batch_b]


def test_top_k_1_and_tiny_top_p_are_greedy(chat_engine):
    greedy = chat_engine.generate("the cat", SamplingConfig(max_new_tokens=8)).token_ids
    assert chat_engine.generate("the cat", SamplingConfig(temperature=1.0, top_k=1, seed=1, max_new_tokens=8)).token_ids == greedy
    assert chat_engine.generate("the cat", SamplingConfig(temperature=1.0, top_p=1e-6, seed=1, max_new_tokens=8)).token_ids == greedy


def test_filters_keep_the_right_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = lambda cfg: torch.isfinite(filter_logits(logits, cfg))[0].tolist()  # noqa: E731
    assert kept(SamplingConfig(temperature=1.0, top_k=2)) == [True, True, False, False]
    assert kept(SamplingConfig(temperature=1.0, top_p=0.5)) == [True, False, False, False]
    assert kept(SamplingConfig(temperature=1.0, top_p=0.8)) == [True, True, False, False]
    assert kept(SamplingConfig(temperature=1.0, top_p=0.81)) == [True, True, True, False]


def test_stop_string_cuts_the_text(chat_engine):
    free = chat_engine.generate("the cat", SamplingConfig(max_new_tokens=10))
    words = free.text.split()
    stop = f"{words[3]} {words[4]}"  # spans two tokens
    result = chat_engine.generate("the cat", SamplingConfig(max_new_tokens=10), stop=["zzz-never", stop])
    assert result.finish_reason == "stop"
    assert stop not in result.text and free.text.startswith(result.text)
    assert result.text == free.text[: free.text.index(stop)]
    assert result.token_ids == free.token_ids[: len(result.token_ids)]


def test_callback_observes_and_stops(chat_engine):
    seen = []

    def callback(event):
        seen.append(event)
        return event.index == 2

    result = chat_engine.generate("the cat", SamplingConfig(max_new_tokens=10), callback=callback)
    assert result.finish_reason == "callback" and len(result.token_ids) == 3
    assert [e.token_id for e in seen] == result.token_ids and [e.index for e in seen] == [0, 1, 2]
    assert seen[-1].text == result.text
    assert chat_engine._wc.ids == chat_engine.prefix_ids  # the cache is back at the prefix


def test_length_limit(chat_engine):
    result = chat_engine.generate("the cat", SamplingConfig(max_new_tokens=3))
    assert result.finish_reason == "length" and len(result.token_ids) == 3


def test_empty_input(chat_engine, word_model, word_tokenizer):
    from tests.fixtures.engine_models import max_diff, reencode_logits

    full = chat_engine.renderer.render([("user", "")])  # an empty user turn is still a turn
    assert max_diff(chat_engine.next_token_logits(""), reencode_logits(word_model, full)) < 1e-4
    assert len(chat_engine.generate("", SamplingConfig(max_new_tokens=3)).token_ids) == 3
    text = PrefixCachedEngine(word_model, word_tokenizer, SYSTEM_PROMPT)  # empty text: continue the prefix
    prefix = text.prefix_ids
    result = text.generate("", SamplingConfig(max_new_tokens=3), return_logits=True)
    assert result.cached_tokens == len(prefix) - 1  # last prefix token re-fed to get its logits
    assert max_diff(result.logits[0], reencode_logits(word_model, prefix)) < 1e-4
    assert text.generate([], SamplingConfig(max_new_tokens=3)).token_ids == result.token_ids
    empty = PrefixCachedEngine(word_model, word_tokenizer, [])
    with pytest.raises(EngineError, match="both empty"):
        empty.generate([], SamplingConfig(max_new_tokens=3))


def test_empty_prefix_batch_matches_single(word_model, word_tokenizer):
    """No shared prefix at all: left padding with nothing cached in front must not produce NaNs."""
    engine = PrefixCachedEngine(word_model, word_tokenizer, [])
    prompts = [word_tokenizer(p)["input_ids"] for p in PROMPTS]
    batch = engine.generate_batch(prompts, SamplingConfig(), max_new_tokens=5)
    assert [r.token_ids for r in batch] == [engine.generate(p, SamplingConfig(max_new_tokens=5)).token_ids for p in prompts]


def test_bad_input_is_explained(chat_engine, word_model, word_tokenizer):
    with pytest.raises(EngineError, match="temperature"):
        SamplingConfig(temperature=-1)
    with pytest.raises(EngineError, match="top_p"):
        SamplingConfig(top_p=0)
    with pytest.raises(EngineError, match="token ids"):
        chat_engine.generate([1, 2, 3])
    with pytest.raises(EngineError, match="role"):
        chat_engine.generate([{"content": "hi"}])
    with pytest.raises(EngineError, match="chat"):
        PrefixCachedEngine(word_model, word_tokenizer, "text").generate([{"role": "user", "content": "hi"}])
    with pytest.raises(EngineError, match="non-empty str"):
        chat_engine.generate("x", stop=[""])
    with pytest.raises(EngineError, match="device"):
        PrefixCachedEngine(word_model, word_tokenizer, "text", device="meta")
    word_model.train()
    try:
        with pytest.raises(EngineError, match="model.eval"):
            chat_engine.generate("the cat")
    finally:
        word_model.eval()


def test_a_batched_call_reports_its_progress_after_each_batch(chat_engine):
    """The pairs stage's lines in a log file show done/total while it samples (issue 28, item 5)."""
    seen = []
    chat_engine.generate_batch(["a", "b", "c", "d", "e"], SamplingConfig(max_new_tokens=2), batch_size=2,
                               progress=lambda done, total: seen.append((done, total)))
    assert seen == [(2, 5), (4, 5), (5, 5)]
