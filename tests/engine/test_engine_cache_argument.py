"""The engine hands the KV cache to the model under the current argument name (`cache`), so transformers
raises no `past_key_values` deprecation warning (the old name goes in transformers 5.40)."""

from __future__ import annotations

import warnings

from tests.fixtures.engine_models import build_word_tokenizer, make_llama

from faithforge.engine import PrefixCachedEngine, SamplingConfig
from faithforge.engine.forward import cache_argument


def test_generation_uses_the_current_cache_argument_without_deprecation_warnings():
    tokenizer = build_word_tokenizer()
    model = make_llama(len(tokenizer), seed=0)
    assert cache_argument(model) == "cache"
    engine = PrefixCachedEngine(model, tokenizer, [{"role": "system", "content": "the cat"}])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine.generate("a dog", SamplingConfig(max_new_tokens=4))
        engine.generate_batch(["a dog", "the red bird"], SamplingConfig(max_new_tokens=4))
    assert not [w for w in caught if "past_key_values" in str(w.message)]


def test_a_peft_wrapper_is_asked_about_the_model_it_wraps():
    from peft import LoraConfig, get_peft_model

    tokenizer = build_word_tokenizer()
    wrapped = get_peft_model(make_llama(len(tokenizer), seed=0),
                             LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    assert cache_argument(wrapped) == "cache"
