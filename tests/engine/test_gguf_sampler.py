"""llama.cpp as the sampler for a model that exists as GGUF: the real SmolLM2 file against the fp32 folder imported
from it, through the engine's own prompts, stopping and text; and the choice the stages make between the two."""

from __future__ import annotations

import json
import os

import pytest
import torch

from faithforge.engine import EngineError, PrefixCachedEngine, SamplingConfig
from faithforge.engine.gguf_sampler import default_threads, llama_cpp_available
from faithforge.stages.sampler import choose_sampler, gguf_of
from faithforge.gpu.planner import Plan
from tests.fixtures.smollm2 import imported_smollm2

SYSTEM = "Summarize the document in one sentence. Use only facts stated in the document."
DOCUMENTS = [
    "Ada bought three lamps in Graz on Monday and paid 40 euros.",
    "The ferry to Split left at 7 a.m. with 112 passengers; it arrived two hours late because of wind.",
    "Tomas painted the fence blue in June. His neighbour Ivo helped on the second day.",
]
CPU = Plan.manual("pairs", "cpu", batch_size=8)


def _need_llama_cpp():
    if not llama_cpp_available():
        message = "llama-cpp-python is not installed (CMAKE_ARGS=\"-DGGML_NATIVE=OFF\" pip install llama-cpp-python)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    from faithforge.training.modeling import load_tokenizer

    folder = imported_smollm2(tmp_path_factory)
    return folder, load_tokenizer(folder)


@pytest.fixture(scope="module")
def sampler(smollm2):
    _need_llama_cpp()
    from faithforge.stages.sampler import gguf_sampler

    folder, tokenizer = smollm2
    return gguf_sampler(gguf_of(folder), folder, tokenizer, SYSTEM, n_ctx=2048)


def test_greedy_tokens_are_the_fp32_models_choices_up_to_near_ties(smollm2, sampler):
    """Teacher-forced on llama.cpp's own greedy answer, the fp32 model imported from the same file puts every
    token llama.cpp chose at (or within a near-tie of) its own top logit: the same model, prompt and stopping.
    A wrong chat rendering, tokenizer or EOS set would put tokens far down the fp32 model's ranking."""
    from transformers import AutoModelForCausalLM

    folder, tokenizer = smollm2
    results = sampler.generate_batch(DOCUMENTS, SamplingConfig(max_new_tokens=24))
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    engine = PrefixCachedEngine(model, tokenizer, [{"role": "system", "content": SYSTEM}])
    worst_gap = 0.0
    for document, result in zip(DOCUMENTS, results):
        assert result.finish_reason in ("eos", "length") and result.token_ids
        assert result.text == tokenizer.decode(result.token_ids, skip_special_tokens=True)
        prompt = engine.renderer.render(engine.renderer.request_turns(document))
        assert result.prompt_tokens == len(prompt)
        ids = torch.tensor([prompt + result.token_ids])
        with torch.inference_mode():
            logits = model(ids).logits[0, len(prompt) - 1: -1]
        chosen = logits.gather(1, torch.tensor(result.token_ids)[:, None])[:, 0]
        gaps = logits.max(dim=1).values - chosen
        worst_gap = max(worst_gap, float(gaps.max()))
    assert worst_gap < 0.5, f"llama.cpp chose a token {worst_gap:.2f} logits below the fp32 model's best"
    assert results[1].cached_tokens > 0  # the system prompt was reused from the previous request


def test_seeded_samples_repeat_and_differ_by_seed(sampler):
    sampling = SamplingConfig(temperature=1.0, seed=5, max_new_tokens=12)
    first = [r.token_ids for r in sampler.generate_batch(DOCUMENTS[:1] * 3, sampling)]
    again = [r.token_ids for r in sampler.generate_batch(DOCUMENTS[:1] * 3, sampling)]
    other = [r.token_ids for r in sampler.generate_batch(DOCUMENTS[:1] * 3, SamplingConfig(1.0, seed=6,
                                                                                          max_new_tokens=12))]
    assert first == again and first != other
    assert len({tuple(t) for t in first}) > 1  # three draws of one prompt are not one sample repeated


def test_top_p_with_another_temperature_is_refused(sampler):
    with pytest.raises(EngineError, match="top-p before"):
        sampler.generate_batch(DOCUMENTS[:1], SamplingConfig(temperature=0.7, top_p=0.9, max_new_tokens=4))


def test_pairs_sampled_through_llama_cpp_say_so(smollm2, sampler):
    from faithforge.data.teacher import generate_split
    from faithforge.training.onpolicy_pairs import build_onpolicy_pairs

    folder, tokenizer = smollm2
    examples = list(generate_split("train", 3, 3, 0.5))
    pairs, report = build_onpolicy_pairs(None, tokenizer, examples, k=3, temperature=1.0, seed=1, max_new_tokens=24,
                                         margin=0.5, sampler=sampler, sampler_note="llama.cpp on the test file",
                                         system_prompt=SYSTEM)
    assert report.samples == 9 and report.sampler == "llama.cpp on the test file"
    assert report.to_dict()["sampler"] == "llama.cpp on the test file" and report.sample_seconds > 0
    assert report.built + sum(report.dropped_sources.values()) == report.sources


def test_the_choice_takes_llama_cpp_only_for_a_gguf_on_the_cpu(smollm2, tmp_path):
    folder, _ = smollm2
    greedy = SamplingConfig()
    gguf = gguf_of(folder)
    assert gguf is not None and gguf.suffix == ".gguf" and gguf_of(folder, adapter="some/adapter") is None
    assert choose_sampler("engine", CPU, greedy, [gguf]).name == "engine"
    assert "on local" in choose_sampler("auto", Plan.manual("pairs", "local"), greedy, [gguf]).reason
    assert "1 of 2" in choose_sampler("auto", CPU, greedy, [gguf, None]).reason  # never two engines in a stage
    nucleus = SamplingConfig(temperature=0.7, top_p=0.9)
    assert "top-p before" in choose_sampler("auto", CPU, nucleus, [gguf]).reason
    record = json.loads((folder / "faithforge-import.json").read_text())
    rounded = tmp_path / "bf16-import"
    rounded.mkdir()
    (rounded / "faithforge-import.json").write_text(json.dumps({**record, "dtype": "bfloat16"}))
    assert gguf_of(rounded) is None  # rounded weights are not the file's
    if llama_cpp_available():
        choice = choose_sampler("auto", CPU, greedy, [gguf])
        assert (choice.name, choice.gguf) == ("llama.cpp", gguf)


def test_threads_drop_to_one_on_an_oversubscribed_machine():
    assert default_threads(load_average_1m=0.4, cores=2) == 2  # idle: every core
    assert default_threads(load_average_1m=2.0, cores=2) == 1  # every core busy already: no spinning barrier
    assert default_threads(load_average_1m=8.4, cores=2) == 1
    assert default_threads(load_average_1m=3.0, cores=8) == 8
