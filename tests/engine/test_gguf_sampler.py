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
from tests.fixtures.smollm2 import imported_smollm2, random_lora

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
    gguf = gguf_of(folder)  # no cache folder: the file the import read
    assert gguf is not None and gguf.suffix == ".gguf" and gguf_of(folder, adapter="some/adapter") is None
    base = [(folder, None)]
    cache = tmp_path / "cache"
    assert choose_sampler("engine", CPU, greedy, base, cache).name == "engine"
    assert "on gpu" in choose_sampler("auto", Plan.manual("pairs", "gpu"), greedy, base, cache).reason
    nucleus = SamplingConfig(temperature=0.7, top_p=0.9)
    record = json.loads((folder / "faithforge-import.json").read_text())
    rounded = tmp_path / "bf16-import"
    rounded.mkdir()
    (rounded / "faithforge-import.json").write_text(json.dumps({**record, "dtype": "bfloat16"}))
    assert gguf_of(rounded) is None  # rounded weights are not the file's
    if llama_cpp_available():
        assert "top-p before" in choose_sampler("auto", CPU, nucleus, base, cache).reason
        planned = choose_sampler("auto", CPU, greedy, base, cache, write=False)  # a content key: named, not written
        assert planned.name == "llama.cpp" and planned.gguf.parent == cache and not planned.gguf.exists()
        # never two engines in a stage: an adapter with no cache folder to be written into has no GGUF
        assert "1 of 2" in choose_sampler("auto", CPU, greedy, [(folder, None), (folder, "some/adapter")]).reason
        choice = choose_sampler("auto", CPU, greedy, base)
        assert (choice.name, choice.gguf, choice.key()) == ("llama.cpp", gguf, ["llama.cpp", [gguf.name]])
        assert "imported from" in choice.reason
    assert not list(tmp_path.glob("**/*.gguf"))  # nothing was written: engine, GPU plan, top-p, a key


@pytest.fixture(scope="module")
def lora_adapter(smollm2, tmp_path_factory):
    """A LoRA adapter on SmolLM2 whose update is not zero (B drawn at random), saved as training saves one."""
    from transformers import AutoModelForCausalLM

    folder, _ = smollm2
    peft = random_lora(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32))
    out = tmp_path_factory.mktemp("adapter")
    peft.save_pretrained(out)
    return out


def test_a_model_and_an_adapter_are_written_as_f16_gguf_once_per_content(smollm2, lora_adapter, tmp_path):
    """With a cache folder the stages get an f16 GGUF written from the folder's own weights (the adapter merged in
    float32), named by content: a second lookup reuses the file, another adapter gets another file, and the
    choice records which file samples (so pairs drawn from Q4_1 are not reused as f16's)."""
    _need_llama_cpp()
    folder, _ = smollm2
    cache = tmp_path / "cache" / "gguf"
    base = gguf_of(folder, None, cache)
    merged = gguf_of(folder, str(lora_adapter), cache)
    assert base.parent == cache and merged.parent == cache and base != merged
    assert base.name.endswith(".f16.gguf") and base != gguf_of(folder)
    assert sorted(p.name for p in cache.iterdir()) == sorted([base.name, merged.name])  # no temporary left
    stamp = base.stat().st_mtime_ns
    assert gguf_of(folder, None, cache) == base and base.stat().st_mtime_ns == stamp  # reused, not rewritten
    from faithforge.training.gguf_writer import read_metadata

    assert read_metadata(base)["general.file_type"] == 1  # LLAMA_FTYPE_MOSTLY_F16
    choice = choose_sampler("auto", CPU, SamplingConfig(), [(folder, None), (folder, str(lora_adapter))], cache)
    assert choice.name == "llama.cpp" and choice.ggufs == (base, merged) and "written as f16" in choice.reason
    assert choice.key() == ["llama.cpp", [base.name, merged.name]]
    scratch = tmp_path / "scratch"
    apart = choose_sampler("auto", CPU, SamplingConfig(), [(folder, None), (folder, str(lora_adapter))], cache,
                           adapter_dir=scratch)
    assert apart.ggufs[0] == base and apart.ggufs[1].parent == scratch  # a trained model's file where asked


def test_the_key_follows_the_template_the_tokenizer_and_the_adapter_config(smollm2, lora_adapter, tmp_path):
    """Another chat template, tokenizer file or adapter config is another model for llama.cpp: another file."""
    from faithforge.training.sampling_gguf import sampling_gguf_key

    folder, _ = smollm2
    copy = tmp_path / "model"
    copy.mkdir()
    for entry in folder.iterdir():
        (copy / entry.name).symlink_to(entry)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    for entry in lora_adapter.iterdir():
        (adapter / entry.name).symlink_to(entry)
    keys = {sampling_gguf_key(copy), sampling_gguf_key(copy, adapter)}
    assert sampling_gguf_key(copy) == sampling_gguf_key(folder)  # content, not the folder's name or place
    template = copy / "chat_template.jinja"
    text = template.read_text()
    template.unlink()
    template.write_text(text + "{# another template #}")
    keys.add(sampling_gguf_key(copy))
    config = adapter / "adapter_config.json"
    settings = json.loads(config.read_text())
    config.unlink()
    config.write_text(json.dumps({**settings, "lora_alpha": settings["lora_alpha"] * 2}))
    keys.add(sampling_gguf_key(copy, adapter))
    assert len(keys) == 4


def test_the_f16_gguf_of_base_plus_adapter_answers_as_the_fp32_merged_model(smollm2, lora_adapter, tmp_path):
    """Teacher-forced on llama.cpp's greedy answers from the written file, the fp32 model with the adapter merged
    puts every chosen token at (or within a near-tie of) its top logit; and the adapter changed the answers (a
    file written without it would not pass for it)."""
    _need_llama_cpp()
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from faithforge.stages.sampler import gguf_sampler

    folder, tokenizer = smollm2
    written = gguf_of(folder, str(lora_adapter), tmp_path)
    results = gguf_sampler(written, folder, tokenizer, SYSTEM, n_ctx=1024).generate_batch(
        DOCUMENTS, SamplingConfig(max_new_tokens=16), batch_size=3)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, lora_adapter).merge_and_unload().eval()
    engine = PrefixCachedEngine(model, tokenizer, [{"role": "system", "content": SYSTEM}])
    with torch.inference_mode():
        expected = engine.generate_batch(DOCUMENTS, SamplingConfig(max_new_tokens=16), batch_size=3)
        worst_gap = 0.0
        for document, result in zip(DOCUMENTS, results):
            prompt = engine.renderer.render(engine.renderer.request_turns(document))
            logits = model(torch.tensor([prompt + result.token_ids])).logits[0, len(prompt) - 1: -1]
            chosen = logits.gather(1, torch.tensor(result.token_ids)[:, None])[:, 0]
            worst_gap = max(worst_gap, float((logits.max(dim=1).values - chosen).max()))
    assert worst_gap < 0.5, f"llama.cpp chose a token {worst_gap:.2f} logits below the merged fp32 model's best"
    assert sum(r.token_ids == e.token_ids for r, e in zip(results, expected)) >= 2
    plain = gguf_sampler(gguf_of(folder, None, tmp_path), folder, tokenizer, SYSTEM, n_ctx=1024).generate_batch(
        DOCUMENTS, SamplingConfig(max_new_tokens=16), batch_size=3)
    assert [r.token_ids for r in plain] != [r.token_ids for r in results]


def test_a_model_the_writer_does_not_know_falls_back_to_its_imported_file(tmp_path):
    from faithforge.training.sampling_gguf import unwritable_reason

    other = tmp_path / "gpt2"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (other / "model.safetensors").write_bytes(b"weights")
    assert unwritable_reason(other).endswith("this model is 'gpt2'")
    assert gguf_of(other, None, tmp_path / "cache") is None and not (tmp_path / "cache").exists()


def test_threads_drop_to_one_on_an_oversubscribed_machine():
    assert default_threads(busy=0.4, cores=2, wait_policy="") == 2  # idle: every core
    assert default_threads(busy=2.0, cores=2, wait_policy="") == 1  # every core busy already: no spinning barrier
    assert default_threads(busy=8.4, cores=2, wait_policy="ACTIVE") == 1
    assert default_threads(busy=3.0, cores=8, wait_policy="active") == 8
    # threads that sleep between operations: one thread, however idle the machine (2.5x faster than two, measured)
    assert default_threads(busy=0.0, cores=2, wait_policy="PASSIVE") == 1
    assert default_threads(busy=0.0, cores=8, wait_policy="passive") == 1


def _llama_generate_one(llm, tokenizer, eos, ids: list[int], sampling: SamplingConfig, seed: int) -> list[int]:
    """llama-cpp-python's own one-sequence API (an independent reference): reset, seed, generate until stopped."""
    from faithforge.engine.finish import StopTracker

    llm.reset()
    llm.set_seed(seed)
    tracker = StopTracker(tokenizer, eos, (), None, sampling.max_new_tokens)
    greedy = sampling.temperature == 0
    for token in llm.generate(ids, top_k=1 if greedy else sampling.top_k, top_p=sampling.top_p, min_p=0.0,
                              typical_p=1.0, temp=sampling.temperature, repeat_penalty=1.0, reset=True):
        if tracker.push(int(token)) is not None:
            break
    return tracker.token_ids


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_request_alone_computes_what_llama_generate_computes(sampler, temperature):
    """batch_size=1: every request, repeats included, gives the tokens llama-cpp-python's `Llama.generate` gives on
    the same file, ids and seed (flash attention on, as the batched context has it): the tree prefill, the
    resident prefix and the per-request sampler chain change nothing a request computes on its own."""
    from llama_cpp import Llama

    from faithforge.engine.gguf_sampler import request_seed

    sampling = SamplingConfig(temperature=temperature, seed=11, max_new_tokens=16)
    prompts = [DOCUMENTS[0], DOCUMENTS[0], DOCUMENTS[1], DOCUMENTS[2]]
    results = sampler.generate_batch(prompts, sampling, batch_size=1)
    llm = Llama(model_path=str(sampler.gguf), n_ctx=2048, n_threads=sampler.threads,
                n_threads_batch=sampler.threads, flash_attn=True, verbose=False)
    try:
        for i, (prompt, result) in enumerate(zip(prompts, results)):
            ids = sampler.renderer.render(sampler.renderer.request_turns(prompt))
            expected = _llama_generate_one(llm, sampler.tokenizer, sampler._eos, ids, sampling,
                                           request_seed(sampling.seed, i))
            assert result.token_ids == expected, f"request {i} parts from Llama.generate"
    finally:
        llm.close()
    assert results[1].cached_tokens == results[1].prompt_tokens - 1  # a repeat re-reads only its last token
    assert 0 < results[2].cached_tokens < results[2].prompt_tokens  # the system prompt, held from request 1


def test_a_group_evaluates_a_shared_prompt_once_and_calls_do_not_depend_on_each_other(sampler):
    sampling = SamplingConfig(temperature=1.0, seed=3, max_new_tokens=12)
    prompts = [DOCUMENTS[0]] * 3 + [DOCUMENTS[1]] * 3
    first = sampler.generate_batch(prompts, sampling, batch_size=6)
    assert first[0].cached_tokens == 0  # the call starts from an empty context
    assert [r.cached_tokens == r.prompt_tokens for r in first] == [False, True, True, False, True, True]
    assert 0 < first[3].cached_tokens < first[3].prompt_tokens  # the system prompt, evaluated for request 0
    sampler.generate_batch(DOCUMENTS[2:], SamplingConfig(temperature=1.0, seed=9, max_new_tokens=20), batch_size=1)
    again = sampler.generate_batch(prompts, sampling, batch_size=6)
    assert [r.token_ids for r in again] == [r.token_ids for r in first]
    assert len({tuple(r.token_ids) for r in first[:3]}) > 1  # repeats share a prompt, not a draw


def test_groups_shrink_to_fit_the_context():
    from faithforge.engine.llama_batch import cells_needed, fitting_groups

    rows = [[1] * 30 + [i + 2, 2, 3] for i in range(6)]
    assert cells_needed(rows[:2], 10) == 30 + 2 * 3 + 2 * 10  # the shared 30 once, each tail, each budget
    assert cells_needed([rows[0]] * 4, 10) == 32 + 1 + 4 * 10  # repeats: one prompt, four budgets
    assert [list(g) for g in fitting_groups(rows, 4, 10, 10_000)] == [[0, 1, 2, 3], [4, 5]]
    groups = fitting_groups(rows, 4, 10, 60)
    assert all(cells_needed(rows[g.start:g.stop], 10) <= 60 for g in groups)
    assert [len(g) for g in groups] == [2, 2, 2] and sum(map(len, groups)) == len(rows)
    assert [list(g) for g in fitting_groups(rows[:1], 4, 100, 50)] == [[0]]  # alone, always a group


def test_a_small_context_still_answers_every_request_in_order(smollm2):
    _need_llama_cpp()
    from faithforge.stages.sampler import gguf_sampler

    folder, tokenizer = smollm2
    small = gguf_sampler(gguf_of(folder), folder, tokenizer, SYSTEM, n_ctx=256)
    greedy = SamplingConfig(max_new_tokens=24)
    together = small.generate_batch(DOCUMENTS * 2, greedy, batch_size=6)  # 6 x (~60 + 24) cells > 256: split
    assert [r.prompt_tokens for r in together] == [r.prompt_tokens for r in small.generate_batch(DOCUMENTS * 2,
                                                                                                 greedy, batch_size=1)]
    assert all(r.token_ids and r.finish_reason in ("eos", "length") for r in together)


@pytest.mark.parametrize("n_ctx", [64, 300])
def test_contexts_smaller_than_a_decode_call_still_answer(smollm2, n_ctx):
    """llama.cpp caps a decode call at min(n_ctx, 512) tokens and rounds the cells up to 256: a 64-token context
    (fewer cells than llama.cpp's 256 parallel sequences) and a 300-token one with a 380-token prompt (more than
    one call) both answer, where a fixed 512-token call or 256 sequences aborted the process (a review's repro)."""
    _need_llama_cpp()
    from faithforge.stages.sampler import gguf_sampler

    folder, tokenizer = smollm2
    small = gguf_sampler(gguf_of(folder), folder, tokenizer, SYSTEM, n_ctx=n_ctx)
    assert small._decoder.n_batch <= n_ctx and small._decoder.max_sequences <= small._decoder.n_batch
    document = "Rain fell." if n_ctx < 100 else " ".join(DOCUMENTS * 6)
    [result] = small.generate_batch([document], SamplingConfig(max_new_tokens=8), batch_size=4)
    assert result.token_ids and result.prompt_tokens > (0 if n_ctx < 100 else small._decoder.n_batch)


def test_a_call_reports_its_progress_after_each_group(sampler):
    seen = []
    sampler.generate_batch(DOCUMENTS * 2, SamplingConfig(max_new_tokens=2), batch_size=4,
                           progress=lambda done, total: seen.append((done, total)))
    assert seen == [(4, 6), (6, 6)]


def test_evaluation_answers_through_llama_cpp_in_batches_when_the_model_exists_as_gguf(smollm2):
    """The evaluate stage's llama.cpp path (taken when every evaluated model exists as GGUF): greedy answers in
    the order of the sources, the cut-off flags filled, the same answers at any batch size up to near-ties."""
    _need_llama_cpp()
    from faithforge.stages.evaluate import summarize_sources

    folder, _ = smollm2
    cut: list[bool] = []
    answers = summarize_sources(str(folder), DOCUMENTS, adapter=None, plan=CPU, max_new_tokens=6, batch_size=3,
                                system_prompt=SYSTEM, truncated=cut, gguf=gguf_of(folder))
    assert len(answers) == len(cut) == len(DOCUMENTS) and all(answers) and True in cut  # 6 tokens cut most
    alone = summarize_sources(str(folder), DOCUMENTS[:1], adapter=None, plan=CPU, max_new_tokens=6, batch_size=1,
                              system_prompt=SYSTEM, gguf=gguf_of(folder))
    assert alone[0].split()[0] == answers[0].split()[0]  # the first word is read from the same prefill logits


def test_a_server_started_where_threads_sleep_serves_on_one_thread(monkeypatch):
    """The llama.cpp server inherits this process's wait policy: where threads sleep it gets one thread (a user's
    or FaithForge's PASSIVE is kept), elsewhere the threads asked for."""
    from faithforge.training import export_verify

    started = []
    monkeypatch.setattr(export_verify.subprocess, "Popen", lambda cmd, **kw: started.append((cmd, kw)))
    for policy, asked, served in (("PASSIVE", 2, "1"), ("ACTIVE", 2, "2"), ("", 4, "4")):
        monkeypatch.setenv("OMP_WAIT_POLICY", policy)
        export_verify.launch_llama_server("m.gguf", port=1, alias="a", n_ctx=64, threads=asked, log=None)
        cmd, kw = started[-1]
        assert cmd[cmd.index("--n_threads") + 1] == served and cmd[cmd.index("--n_threads_batch") + 1] == served
        assert kw.get("env") is None  # inherited as it is
