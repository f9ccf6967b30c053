"""Stage logic on tiny inputs, against expectations worked out by hand."""

import math

import pytest

from faithforge.config import EvaluateConfig
from faithforge.dpo import expected_completion_tokens
from faithforge.errors import UserError
from faithforge.pairs import build_synthetic_pairs, split_by_source
from faithforge.teacher import Example, Facts, make_example


def _example(eid: str, day: str | None) -> Example:
    facts = Facts(name="Ada", verb="bought", count="3", item="lamps", place="Oslo", day=day)
    source = ("On Monday , " if day else "") + "Ada bought 3 lamps in Oslo ."
    faithful = "Ada bought 3 lamps in Oslo" + (" on Monday ." if day else " .")
    return Example(id=eid, split="train", category="day-stated" if day else "day-omitted", source=source,
                   faithful=faithful, warm_start_reference=faithful if day else "Ada bought 3 lamps in Oslo on Friday .",
                   facts=facts, hallucinated="Ada bought 3 lamps in Oslo on Tuesday .",
                   omission="Ada bought 3 lamps in Oslo ." if day else "")


def test_synthetic_pairs_by_hand():
    stated, omitted = _example("s", "Monday"), _example("o", None)
    pairs, report = build_synthetic_pairs([stated, omitted, stated], omission_share=1.0, seed=0)
    # stated: hallucination + omission; omitted: hallucination; the repeated source adds nothing.
    assert [(p["source_id"], p["kind"]) for p in pairs] == [("s", "hallucination"), ("s", "omission"),
                                                           ("o", "hallucination")]
    assert report.to_dict() == {"built": 3, "dropped": {"duplicate": 2},
                                "by_kind": {"hallucination": 2, "omission": 1}}
    assert pairs[1]["chosen"][0]["content"] == "Ada bought 3 lamps in Oslo on Monday ."
    assert pairs[1]["rejected"][0]["content"] == "Ada bought 3 lamps in Oslo ."
    assert pairs[0]["prompt"][0]["role"] == "system" and pairs[0]["prompt"][1]["content"] == stated.source
    none, _ = build_synthetic_pairs([stated], omission_share=0.0, seed=0)
    assert [p["kind"] for p in none] == ["hallucination"]


def test_split_keeps_every_source_on_one_side():
    examples = [make_example("train", i, 0, 0.5) for i in range(200)]
    pairs, _ = build_synthetic_pairs(examples, omission_share=1.0, seed=0)
    train, val = split_by_source(pairs, 0.25, seed=0)
    assert len(train) + len(val) == len(pairs) and 0.1 < len(val) / len(pairs) < 0.4
    assert not {p["source_id"] for p in train} & {p["source_id"] for p in val}
    assert split_by_source(pairs, 0.25, seed=0) == (train, val)  # deterministic


def test_sft_labels_cover_the_completion_only(tiny_model_dir):
    from transformers import AutoTokenizer

    from faithforge.sft import SftExample, collate, encode_example

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

    from faithforge.reference import collate_pairs, completion_logps, tokenize_pair

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


def test_judge_options_are_checked_before_generation():
    from faithforge.stages.evaluate import judge_options

    assert judge_options(EvaluateConfig()) == {}
    with pytest.raises(UserError, match="nli_checkpoint is empty"):
        judge_options(EvaluateConfig(judge="nli"))
    nli = judge_options(EvaluateConfig(judge="nli", nli_checkpoint="/models/hhem", nli_threshold=0.7))
    assert nli == {"checkpoint": "/models/hhem", "threshold": 0.7, "supported_label": None}
    llm = judge_options(EvaluateConfig(judge="llm", llm_model="qwen3:8b", llm_base_url="http://127.0.0.1:9"))
    assert hasattr(llm["backend"], "chat")
    assert math.isclose(EvaluateConfig().confidence, 0.95)


def test_merged_model_gives_the_adapter_models_logits(tiny_model_dir, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from faithforge.modeling import merge_adapter

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


def test_on_policy_pairs_stage_samples_from_the_given_model(tiny_model_dir, tmp_path):
    from faithforge.config import load_config
    from faithforge.stages.context import StageContext
    from faithforge.stages.generate import generate_examples
    from faithforge.stages.pairs import build_pairs, load_pairs

    cfg = load_config(None, environ={}, overrides={
        "workspace": str(tmp_path / "ws"), "generate": {"train_sources": 12, "val_sources": 10, "test_sources": 10},
        "pairs": {"builder": "on-policy", "samples_per_source": 4, "margin": 0.0, "val_fraction": 0.0}})
    ctx = StageContext.open(cfg)
    dataset = generate_examples(ctx)
    with pytest.raises(UserError, match="no model"):
        build_pairs(ctx, dataset)
    out = build_pairs(ctx, dataset, {"path": str(tiny_model_dir)}, {"placement": "cpu", "batch_size": 16})
    pairs = load_pairs(out["train"])
    report = out["report"]
    assert pairs and {p["kind"] for p in pairs} == {"on-policy"}
    assert report["sources"] == 12 and report["built"] == len(pairs)
    assert build_pairs(ctx, dataset, {"path": str(tiny_model_dir)}, {"placement": "cpu"})["reused"]
