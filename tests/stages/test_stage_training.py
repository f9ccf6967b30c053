"""Training stage logic on the tiny model, against expectations worked out by hand: SFT labels, chunked
reference log-probs, completion tokens left after truncation, and merging an adapter."""

import pytest

from faithforge.training.dpo import expected_completion_tokens
from faithforge.data.pairs import build_synthetic_pairs
from faithforge.data.teacher import make_example


def test_sft_labels_cover_the_completion_only(tiny_model_dir):
    from transformers import AutoTokenizer

    from faithforge.training.sft import SftExample, collate, encode_example

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompt = [{"role": "user", "content": "Ada bought 3 lamps in Oslo ."}]
    ids, labels = encode_example(tokenizer, SftExample(prompt, "Ada bought 3 lamps ."), max_length=128)
    completion = [t for t in labels if t != -100]
    assert tokenizer.decode(completion) == "Ada bought 3 lamps . <eos>"
    assert ids[-len(completion):] == completion and labels[: len(ids) - len(completion)] == [-100] * (
        len(ids) - len(completion))
    batch = collate([(ids, labels), (ids[:5], labels[:5])], pad_id=tokenizer.pad_token_id)
    assert batch["attention_mask"][1].tolist() == [1] * 5 + [0] * (len(ids) - 5)
    assert batch["labels"][1, 5:].eq(-100).all()


def test_chunked_log_probs_equal_the_full_softmax(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from faithforge.training.reference_cache import collate_pairs, completion_logps, tokenize_pair

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    pairs, _ = build_synthetic_pairs([make_example("train", i, 0, 0.5) for i in range(3)], 1.0, 0)
    ids, attention, completion = collate_pairs([tokenize_pair(tokenizer, p) for p in pairs], tokenizer.pad_token_id,
                                               max_length=None)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attention).logits.float()
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    expected = (logp * completion[:, 1:]).sum(-1)
    for chunk in (7, 50, 100_000):  # a chunk that does not divide the vocabulary, and one larger than it
        sums, counts = completion_logps(model, ids, attention, completion, vocab_chunk=chunk)
        assert torch.allclose(sums, expected, atol=1e-5)
        assert counts.tolist() == completion[:, 1:].sum(-1).tolist()


@pytest.mark.parametrize("prompt,completion,max_length,mode,kept", [
    (10, 5, None, "keep_start", 5), (10, 5, 15, "keep_start", 5), (10, 5, 12, "keep_start", 2),
    (10, 5, 9, "keep_start", 0), (10, 5, 12, "keep_end", 5), (10, 5, 3, "keep_end", 3),
])
def test_completion_tokens_left_after_truncation(prompt, completion, max_length, mode, kept):
    assert expected_completion_tokens(prompt, completion, max_length, mode) == kept


def test_merged_model_gives_the_adapter_models_logits(tiny_model_dir, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from faithforge.training.modeling import merge_adapter

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    # init_lora_weights=False: a non-zero update, so a merge that dropped it would be caught
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                 init_lora_weights=False, task_type="CAUSAL_LM")).eval()
    peft_model.save_pretrained(tmp_path / "adapter")
    ids = torch.tensor([[2, 4, 10, 11, 12, 13]])
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
    merged_dir = merge_adapter(tiny_model_dir, tmp_path / "adapter", tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    with torch.no_grad():
        got = merged(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=1e-4)
    assert not torch.allclose(got, AutoModelForCausalLM.from_pretrained(tiny_model_dir)(input_ids=ids).logits, atol=1e-3)
    assert (merged_dir / "tokenizer.json").is_file()
