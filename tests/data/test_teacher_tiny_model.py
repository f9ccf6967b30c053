import hashlib

from faithforge.data.teacher import DAYS, generate_split, make_example, prompt_messages
from faithforge.training.tiny_model import build_tiny_model


def test_teacher_is_deterministic_and_noisy_like_xsum():
    a = [e.to_dict() for e in generate_split("train", 50, seed=1, omitted_fact_share=0.5)]
    b = [e.to_dict() for e in generate_split("train", 50, seed=1, omitted_fact_share=0.5)]
    assert a == b
    examples = list(generate_split("train", 200, seed=1, omitted_fact_share=0.5))
    omitted = [e for e in examples if e.facts.day is None]
    assert 60 < len(omitted) < 140
    for e in omitted:
        source_words = set(e.source.split())
        reference_days = [w for w in e.warm_start_reference.split() if w in DAYS]
        assert reference_days and not set(reference_days) & source_words  # the reference invents the day
        assert not set(e.faithful.split()) & set(DAYS)  # the faithful summary does not
        assert e.omission == ""
    for e in (x for x in examples if x.facts.day is not None):
        assert e.facts.day in e.source and e.facts.day in e.faithful
        assert e.warm_start_reference == e.faithful
        assert e.facts.day not in e.hallucinated  # swapped for another day
        assert not set(e.omission.split()) & set(DAYS)


def test_tiny_model_round_trip_is_deterministic(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    one = build_tiny_model(tmp_path / "one", seed=3)
    two = build_tiny_model(tmp_path / "two", seed=3)
    other = build_tiny_model(tmp_path / "other", seed=4)

    def digest(p):
        return hashlib.sha256((p / "model.safetensors").read_bytes()).hexdigest()

    assert digest(one) == digest(two) != digest(other)
    tokenizer = AutoTokenizer.from_pretrained(one)
    model = AutoModelForCausalLM.from_pretrained(one)
    example = make_example("test", 0, 0, 0.5)
    prompt = tokenizer.apply_chat_template(prompt_messages(example.source), add_generation_prompt=True,
                                           tokenize=True)["input_ids"]
    full = tokenizer.apply_chat_template(prompt_messages(example.source)
                                         + [{"role": "assistant", "content": example.faithful}],
                                         tokenize=True)["input_ids"]
    assert full[: len(prompt)] == prompt  # prompt tokens are a true prefix
    assert tokenizer.unk_token_id not in full  # every teacher word is in the vocabulary
    assert tokenizer.decode(full[len(prompt):], skip_special_tokens=True).strip() == example.faithful
    assert model.config.vocab_size == len(tokenizer)
