"""The written-out Llama decode step (`faithforge.engine.llama_step`) computes exactly what the model's forward
computes with the one-row kernels: logits and cache contents bit-identical (`torch.equal`), step by step and over
whole generations and conversations; it is taken only where that was checked, and a failed step leaves the cache
as it was."""

from __future__ import annotations

import pytest
import torch
from tests.fixtures.engine_models import SYSTEM_PROMPT, make_llama, word_model, word_tokenizer  # noqa: F401

from faithforge.engine import PrefixCachedEngine, SamplingConfig, llama_step, one_row
from faithforge.engine.errors import EngineError
from faithforge.engine.forward import forward_token
from faithforge.engine.prefix_attention import engine_attention


def _llama(vocab_size: int, **overrides):
    """A random-init fp32 Llama like the fixtures' but with the config options the step must honour."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = dict(vocab_size=vocab_size, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                  num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.3,
                  tie_word_embeddings=False, attn_implementation="sdpa")
    config.update(overrides)
    with torch.random.fork_rng():
        torch.manual_seed(11)
        model = LlamaForCausalLM(LlamaConfig(**config))
    if config.get("attention_bias") or config.get("mlp_bias"):
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    p.normal_(0, 0.5)
    return model.eval()


VARIANTS = {
    "fixture": {},
    "biases, tied head": dict(attention_bias=True, mlp_bias=True, tie_word_embeddings=True),
    "own head size, llama3 rope scaling": dict(head_dim=12, rope_parameters=dict(
        rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=64)),
}


def _states(cache) -> list:
    """Copies of each cache layer's keys and values (None for a slot no layer writes: a pruned model's)."""
    return [None if layer.keys is None else (layer.keys.clone(), layer.values.clone()) for layer in cache.layers]


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        x is None and y is None or (x is not None and y is not None and torch.equal(x[0], y[0])
                                    and torch.equal(x[1], y[1])) for x, y in zip(a, b))


def _pruned(vocab_size: int):
    """Layer 1 of 3 removed the usual way: the others keep their `layer_idx` (0 and 2), so their cache slots."""
    model = _llama(vocab_size)
    del model.model.layers[1]
    return model


@pytest.mark.parametrize("onednn", [True, False])
@pytest.mark.parametrize("variant", [*VARIANTS, "pruned"])
def test_each_step_equals_the_models_forward_bit_for_bit(word_tokenizer, variant, onednn, monkeypatch):
    if onednn and not one_row.onednn_linear_available():
        pytest.skip("this PyTorch build has no oneDNN")
    if not onednn:
        monkeypatch.setattr(one_row, "onednn_linear_available", lambda: False)
    model = _pruned(len(word_tokenizer)) if variant == "pruned" else _llama(len(word_tokenizer), **VARIANTS[variant])
    assert llama_step.applies_to(model)
    engine = PrefixCachedEngine(model, word_tokenizer, [{"role": "system", "content": SYSTEM_PROMPT}])
    cache = engine._wc.cache
    with torch.inference_mode(), engine_attention(model), one_row.one_row_linears(model):
        for token in (5, 17, 2, 9):
            past = cache.get_seq_length()
            theirs = forward_token(model, cache, token, past, one_row=True)
            their_states = _states(cache)
            cache.crop(-1)
            mine = llama_step.decode_step(model, cache, token, past)
            assert torch.equal(mine, theirs) and mine.dtype == torch.float32
            assert _same(_states(cache), their_states)


def test_generate_and_conversations_give_the_same_tokens_and_logits(word_model, word_tokenizer, monkeypatch):
    import faithforge.engine.engine as engine_module

    counts = {"written out": 0, "model forward": 0}
    real_step, real_forward = llama_step.decode_step, engine_module.forward_token

    def step(*args):
        counts["written out"] += 1
        return real_step(*args)

    def forward(*args, **kwargs):  # the engine's decode steps through the model's own forward
        counts["model forward"] += 1
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(llama_step, "decode_step", step)
    monkeypatch.setattr(engine_module, "forward_token", forward)
    engine = PrefixCachedEngine(word_model, word_tokenizer, [{"role": "system", "content": SYSTEM_PROMPT}])
    runs, seen = {}, {}
    for written_out in (False, True):
        monkeypatch.setattr(llama_step, "applies_to", lambda m, on=written_out: on)
        counts.update(dict.fromkeys(counts, 0))
        chat = engine.conversation()
        runs[written_out] = (
            [engine.generate("the old king walks to the river", sampling, return_logits=True)
             for sampling in (SamplingConfig(max_new_tokens=10),
                              SamplingConfig(temperature=1.0, seed=3, max_new_tokens=10))],
            [chat.send(text, SamplingConfig(max_new_tokens=6)).token_ids for text in ("the cat is red", "and the dog")])
        seen[written_out] = dict(counts)
    (plain, plain_turns), (fast, fast_turns) = runs[False], runs[True]
    for a, b in zip(plain, fast):
        assert a.token_ids == b.token_ids and torch.equal(a.logits, b.logits)
    assert fast_turns == plain_turns
    # Every token the model's forward took back in the plain run, the written-out step took in the other.
    assert seen[False]["written out"] == 0 and seen[True]["model forward"] == 0
    assert seen[True]["written out"] == seen[False]["model forward"] >= 9


def test_models_it_was_not_checked_on_keep_their_own_forward(word_model, word_tokenizer):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    vocab = len(word_tokenizer)
    assert llama_step.applies_to(word_model)
    adapted = get_peft_model(make_llama(vocab, seed=5), LoraConfig(r=4, target_modules=["q_proj"])).eval()
    qwen = Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2,
                                        attn_implementation="sdpa")).eval()

    class OwnLlama(LlamaForCausalLM):  # a subclass may change anything
        pass

    subclassed = OwnLlama(make_llama(vocab).config).eval()
    hooked = make_llama(vocab)
    hooked.model.layers[1].mlp.register_forward_hook(lambda module, args, out: out * 2)
    offloaded = make_llama(vocab)  # accelerate's offloading replaces forwards on instances
    offloaded.model.layers[0].self_attn.forward = lambda *a, **k: None
    hub_kernel = make_llama(vocab)  # what the `kernels` library sets where it found a kernel on the hub
    hub_kernel.model.layers[1].self_attn._kernel_funcs["rotary_pos_emb"].forward = lambda *a: None
    rotary_hooked = make_llama(vocab)  # the model's forward calls the rotary wrapper as a module: hooks run
    rotary_hooked.model.layers[0].self_attn._kernel_funcs["rotary_pos_emb"].register_forward_hook(
        lambda module, args, out: out)
    compiled, layer_compiled = make_llama(vocab), make_llama(vocab)
    compiled.compile()  # in place: no `_orig_mod`, the call goes to compiled code (never run here)
    layer_compiled.model.layers[1].compile()
    non_causal, one_non_causal = make_llama(vocab), make_llama(vocab)
    non_causal.config.is_causal = False  # transformers then passes is_causal=False: SDPA, not the one-row kernel
    one_non_causal.model.layers[1].self_attn.is_causal = False
    others = {"adapter": adapted, "hub kernel": hub_kernel, "qwen": qwen, "subclass": subclassed, "hook": hooked,
              "hooked rotary wrapper": rotary_hooked, "compiled in place": compiled, "a layer compiled": layer_compiled,
              "non-causal config": non_causal, "a non-causal layer": one_non_causal, "instance forward": offloaded,
              "bf16": make_llama(vocab).to(torch.bfloat16), "eager attention": make_llama(vocab, attn="eager")}
    assert {name: llama_step.applies_to(m) for name, m in others.items()} == dict.fromkeys(others, False)
    with one_row.one_row_linears(word_model):  # the kernels' own switch is the one replaced forward allowed
        assert llama_step.applies_to(word_model)


def test_patches_on_the_classes_or_the_module_keep_the_models_forward(word_model, monkeypatch):
    """A library that swaps transformers' Llama code (as liger-kernel swaps the RMS norm and the rotary function)."""
    from transformers.models.llama import modeling_llama

    def own_norm(self, hidden_states):
        return hidden_states

    monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward", own_norm)
    assert not llama_step.applies_to(word_model)
    monkeypatch.undo()
    monkeypatch.setattr(modeling_llama, "apply_rotary_pos_emb", lambda q, k, cos, sin: (q, k))
    assert not llama_step.applies_to(word_model)
    monkeypatch.undo()
    hook = modeling_llama.apply_rotary_pos_emb.register_forward_hook(lambda module, args, out: out)
    try:  # the function wrapper every Llama attention shares
        assert not llama_step.applies_to(word_model)
    finally:
        hook.remove()
    assert llama_step.applies_to(word_model)


def test_the_engine_keeps_the_models_forward_where_the_step_does_not_apply(word_tokenizer, monkeypatch):
    calls = []
    monkeypatch.setattr(llama_step, "decode_step", lambda *a: calls.append(a))
    hooked = make_llama(len(word_tokenizer))
    hooked.model.layers[0].register_forward_pre_hook(lambda module, args: None)
    assert len(PrefixCachedEngine(hooked, word_tokenizer, "the cat").generate(
        " is", SamplingConfig(max_new_tokens=4)).token_ids) >= 1
    plain = make_llama(len(word_tokenizer))
    assert llama_step.applies_to(plain)
    engine = PrefixCachedEngine(plain, word_tokenizer, "the cat")
    engine.one_row_kernels = False  # benchmarks' stock way: no written-out step either
    assert len(engine.generate(" is", SamplingConfig(max_new_tokens=4)).token_ids) >= 1
    assert calls == []


def test_a_step_with_gradients_on_is_refused(word_model, word_tokenizer):
    engine = PrefixCachedEngine(word_model, word_tokenizer, "the cat")
    with pytest.raises(EngineError, match="gradients off"):
        llama_step.decode_step(word_model, engine._wc.cache, 7, engine._wc.length)


def test_a_step_that_fails_part_way_leaves_the_cache_as_it_was(word_model, word_tokenizer, monkeypatch):
    engine = PrefixCachedEngine(word_model, word_tokenizer, [{"role": "system", "content": SYSTEM_PROMPT}])
    cache = engine._wc.cache
    before = _states(cache)
    real = one_row.attend_one_row
    calls = []

    def fails_in_the_second_layer(*args):
        calls.append(1)
        if len(calls) == 2:
            raise MemoryError("out of memory, as a long cache can be")
        return real(*args)

    monkeypatch.setattr(one_row, "attend_one_row", fails_in_the_second_layer)
    with torch.inference_mode(), pytest.raises(MemoryError):
        llama_step.decode_step(word_model, cache, 7, cache.get_seq_length())
    assert _same(_states(cache), before)
    monkeypatch.setattr(one_row, "attend_one_row", real)
    assert engine.generate("the cat is red", SamplingConfig(max_new_tokens=3)).token_ids  # still usable
