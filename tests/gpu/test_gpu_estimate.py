"""Estimator arithmetic against hand-computed values, and clear errors for bad configs."""

from __future__ import annotations

import json

import pytest

from faithforge.gpu.errors import ModelConfigError
from faithforge.gpu.estimate import (CUDA_CONTEXT_BYTES, estimate_ollama, estimate_reference, estimate_train, weights_bytes)
from faithforge.gpu.model_shape import load_model_config, load_model_shape, model_shape_from_config
from faithforge.gpu.ollama_sizes import ollama_model, ollama_model_from_api

KIB = 1024


def test_llama3_8b_parameter_count_and_kv_cache():
    shape = load_model_shape("llama-3-8b")
    embed = 128256 * 4096
    per_layer = 4096 * 4096 * 2 + 4096 * 1024 * 2 + 3 * 4096 * 14336
    assert shape.linear_params == 32 * per_layer == 6_979_321_856
    assert shape.total_params == 2 * embed + 32 * per_layer + 32 * 2 * 4096 + 4096 == 8_030_261_248
    assert shape.kv_bytes_per_token(2) == 2 * 32 * 8 * 128 * 2 == 128 * KIB
    assert load_model_shape("llama-2-7b").kv_bytes_per_token(2) == 512 * KIB  # no GQA: 32 KV heads


def test_shipped_configs_have_their_published_sizes():
    assert round(load_model_shape("qwen2.5-7b").total_params / 1e9, 2) == 7.62
    assert round(load_model_shape("qwen3-8b").total_params / 1e9, 2) == 8.19
    assert round(load_model_shape("llama-2-7b").total_params / 1e9, 2) == 6.74
    assert load_model_shape("qwen3-8b").kv_bytes_per_token(2) == 144 * KIB


def test_nf4_keeps_embeddings_and_lm_head_in_16_bit():
    shape = load_model_shape("llama-3-8b")
    rest = 2 * 128256 * 4096 + 32 * 2 * 4096 + 4096
    assert weights_bytes(shape, "nf4") == int(6_979_321_856 * 0.516 + rest * 2)
    assert weights_bytes(shape, "bf16") == 2 * shape.total_params
    assert weights_bytes(shape, "fp32") == 4 * shape.total_params


def test_log_prob_terms_model_trls_chunked_kernel_not_full_logits():
    shape = load_model_shape("qwen2.5-7b")
    tokens = 2 * 1 * 2048  # chosen + rejected
    train = estimate_train(shape, micro_batch=1, seq_len=2048)
    tile = 4096 * 32768 * 2  # TRL: TOKEN_CHUNK_SIZE × _CHUNKED_LOGPROB_CHUNK_SIZE bf16 values
    assert train.terms["logits_bytes"] == tile + tokens * (3584 * (2 + 4 + 2) + 40)
    assert train.terms["logits_bytes"] < 2 * 2048 * 152064 * 8 / 10  # the old full-logits charge, 10x smaller
    ref = estimate_reference(shape, batch_size=2, seq_len=512)
    assert ref.terms["logits_bytes"] == min(2048, 4096) * 32768 * 2 + 2048 * (3584 * 2 + 40)
    assert ref.terms["cuda_context_bytes"] == CUDA_CONTEXT_BYTES == 512 * KIB * KIB


def test_lora_optimizer_and_checkpointing_terms():
    shape = load_model_shape("llama-3-8b")
    lora = 32 * 16 * ((4096 + 4096) * 2 + (4096 + 1024) * 2 + (4096 + 14336) * 3)
    paged = estimate_train(shape, micro_batch=1, seq_len=512)  # the GPU train stage: NF4 + paged 8-bit AdamW
    assert paged.settings["lora_params"] == lora == 41_943_040
    # TRL casts LoRA to bf16 on 4-bit models; two uint8 states + an fp32 absmax per 256-value block each
    assert (paged.terms["lora_params_bytes"], paged.terms["lora_grads_bytes"], paged.terms["optimizer_state_bytes"]) \
        == (2 * lora, 2 * lora, int(lora * (2 + 8 / 256)))
    fp32 = estimate_train(shape, micro_batch=1, seq_len=512, quantization="bf16", optimizer="adamw-fp32")
    assert (fp32.terms["lora_params_bytes"], fp32.terms["optimizer_state_bytes"]) == (4 * lora, 8 * lora)
    no_ckpt = estimate_train(shape, micro_batch=1, seq_len=512, gradient_checkpointing=False)
    assert no_ckpt.terms["activations_bytes"] > 10 * paged.terms["activations_bytes"]
    assert paged.total_bytes == sum(paged.terms.values())


def test_full_fine_tune_charges_weights_grads_and_two_adamw_states():
    from faithforge.gpu.estimate import estimate_full_finetune

    shape = load_model_shape("qwen2.5-7b")
    est = estimate_full_finetune(shape, batch_size=1, seq_len=128, quantization="bf16")
    assert est.terms["optimizer_state_bytes"] == 2 * est.terms["weights_bytes"] == 4 * shape.total_params
    with pytest.raises(ValueError, match="quantized"):
        estimate_full_finetune(shape, batch_size=1, seq_len=128, quantization="nf4")


def test_live_reference_with_a_separate_copy_adds_the_weights_again():
    shape = load_model_shape("qwen2.5-7b")
    cached = estimate_train(shape, micro_batch=1, seq_len=512, ref_strategy="cached")
    shared = estimate_train(shape, micro_batch=1, seq_len=512, ref_strategy="live")
    copy = estimate_train(shape, micro_batch=1, seq_len=512, ref_strategy="live", reference_model="separate-copy")
    assert cached.terms["reference_weights_bytes"] == shared.terms["reference_weights_bytes"] == 0
    assert copy.terms["reference_weights_bytes"] == copy.terms["weights_bytes"]
    assert cached.total_bytes <= shared.total_bytes < copy.total_bytes


def test_ollama_kv_cache_and_table():
    model = ollama_model("qwen3:8b")
    est = estimate_ollama(model, parallel=2, context_tokens=4096)
    assert est.terms["kv_cache_bytes"] == 2 * 4096 * (2 * 36 * 8 * 128 * 2)
    assert est.terms["weights_bytes"] == 5_200_000_000
    assert ollama_model("qwen3") == ollama_model("qwen3:latest") == model
    with pytest.raises(ModelConfigError, match="known tags"):
        ollama_model("nosuchmodel:1b")
    show = {"model_info": {"general.architecture": "llama", "llama.block_count": 32, "llama.attention.head_count": 32,
                           "llama.attention.head_count_kv": 8, "llama.embedding_length": 4096,
                           "general.parameter_count": 8030261248}}
    from_api = ollama_model_from_api("llama3.1:8b", show, size_bytes=4_920_753_328)
    assert from_api.kv_bytes_per_token(2) == 128 * KIB and from_api.weights_bytes == 4_920_753_328


def test_unknown_architecture_names_missing_keys_and_fallback_is_opt_in():
    gpt2 = {"model_type": "gpt2", "n_embd": 768, "n_layer": 12, "n_head": 12, "vocab_size": 50257}
    with pytest.raises(ModelConfigError) as err:
        model_shape_from_config(gpt2, "gpt2")
    message = str(err.value)
    assert "hidden_size" in message and "num_hidden_layers" in message and "allow_param_count_fallback" in message
    assert "vocab_size" not in message.split("lacks")[1].split(";")[0]
    with pytest.raises(ModelConfigError, match="mixture-of-experts"):
        model_shape_from_config({**json.loads(json.dumps(load_model_config_dict())), "num_experts": 128}, "moe")
    guessed = model_shape_from_config(gpt2, "gpt2", allow_param_count_fallback=True, param_count=124_000_000)
    assert guessed.approximate and guessed.total_params >= 124_000_000
    with pytest.raises(ModelConfigError):  # opting in without a parameter count is still an error
        model_shape_from_config(gpt2, "gpt2", allow_param_count_fallback=True)


def load_model_config_dict():
    from faithforge.gpu.model_shape import SHIPPED_CONFIGS_DIR

    return load_model_config(SHIPPED_CONFIGS_DIR / "qwen3-8b.json")


def test_missing_or_broken_config_json(tmp_path):
    with pytest.raises(ModelConfigError, match="no config.json"):
        load_model_config(tmp_path)
    (tmp_path / "config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelConfigError, match="cannot read"):
        load_model_shape(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(load_model_config_dict()), encoding="utf-8")
    assert load_model_shape(tmp_path).num_layers == 36


def test_bad_numbers_are_rejected():
    shape = load_model_shape("llama-3-8b")
    with pytest.raises(ValueError, match="micro_batch"):
        estimate_train(shape, micro_batch=0, seq_len=512)
    with pytest.raises(ValueError, match="optimizer"):
        estimate_train(shape, micro_batch=1, seq_len=512, optimizer="sgd")  # type: ignore[arg-type]
