"""The evaluate stage keeps each model's answers by what wrote them: a rerun judges them again instead of writing
them again, a damaged file is written again, and anything that changes the answers changes their key."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from faithforge.core.config import load_config
from faithforge.stages.answer_cache import Answers, adapter_fingerprint, answers_key, read_answers, write_answers
from faithforge.training.reference_cache import sampling_fingerprint
from tests.fixtures.small_config import SMALL_PIPELINE
from tests.fixtures.throwaway_kinds import throwaway_model_folder_judge  # noqa: F401 - a fixture


def test_stored_answers_read_back_and_anything_else_reads_as_none(tmp_path):
    path = tmp_path / "answers" / "a.json"
    assert read_answers(path, 2) is None  # absent
    write_answers(path, Answers(["One.", "Two"], [False, True]))
    assert read_answers(path, 2) == Answers(["One.", "Two"], [False, True])
    assert read_answers(path, 3) is None  # written for other sources
    copied = path.with_name("b.json")
    copied.write_text(path.read_text())
    assert read_answers(copied, 2) is None  # a file renamed or copied under another key
    changed = path.read_text().replace('"Two"', '"Three"')  # still valid JSON of the right shape
    for damaged in (changed, '{"texts": ["One."', '{"texts": ["a", 2], "truncated": [false, false]}', "[]", ""):
        path.write_text(damaged)
        assert read_answers(path, 2) is None, damaged


def test_every_input_of_the_answers_is_in_their_key():
    inputs = dict(sampler="llama.cpp", gguf="abc.f16.gguf", model="m1", adapter="a1", sources=["s1", "s2"],
                  system_prompt="Answer from the document.", max_new_tokens=32, batch_size=64, placement="cpu",
                  precision="fp32")
    other = dict(sampler="engine", gguf=None, model="m2", adapter=None, sources=["s1", "s3"], system_prompt="Answer.",
                 max_new_tokens=40, batch_size=8, placement="gpu", precision="bf16")
    key = answers_key(**inputs)
    assert answers_key(**inputs) == key
    for name, value in other.items():
        assert answers_key(**{**inputs, name: value}) != key, name


def test_an_adapters_fingerprint_is_its_weights_and_settings_only(tmp_path):
    (tmp_path / "adapter_config.json").write_text('{"r": 8, "target_modules": ["q_proj", "v_proj"], '
                                                  '"base_model_name_or_path": "/a/model"}')
    (tmp_path / "adapter_model.safetensors").write_bytes(b"weights")
    first = adapter_fingerprint(tmp_path)
    (tmp_path / "README.md").write_text("a model card written again")
    assert adapter_fingerprint(tmp_path) == first
    # PEFT's order of target_modules differs by process, and the base path says where, not which, weights
    (tmp_path / "adapter_config.json").write_text('{"target_modules": ["v_proj", "q_proj"], "r": 8, '
                                                  '"base_model_name_or_path": "/b/model"}')
    assert adapter_fingerprint(tmp_path) == first
    (tmp_path / "adapter_config.json").write_text('{"r": 16, "target_modules": ["q_proj", "v_proj"]}')
    assert adapter_fingerprint(tmp_path) != first and adapter_fingerprint(None) is None


def test_the_sampled_models_fingerprint_holds_its_generation_config(tiny_model_dir, tmp_path):
    """An attack (2026-12-07): new EOS ids in generation_config.json kept the key, and the stale answers of one
    model beside fresh ones of another made a difference that was not there."""
    import shutil

    folder = shutil.copytree(tiny_model_dir, tmp_path / "model")
    first = sampling_fingerprint(folder)
    assert sampling_fingerprint(folder) == first
    (folder / "generation_config.json").write_text('{"eos_token_id": [2, 7]}')
    assert sampling_fingerprint(folder) != first  # the answers' key and the on-policy pairs' key hold it


def test_a_rerun_judges_the_stored_answers_and_a_damaged_file_is_written_again(tmp_path, monkeypatch,
                                                                                throwaway_model_folder_judge):
    import faithforge.stages.evaluate as evaluate
    from tests.fixtures.inprocess_pipeline import run_stages

    model_folder_judge = throwaway_model_folder_judge

    written = []
    summarize = evaluate.summarize_sources

    def counted(*args, **kwargs):
        written.append(kwargs.get("adapter"))
        return summarize(*args, **kwargs)

    monkeypatch.setattr(evaluate, "summarize_sources", counted)
    overrides = copy.deepcopy(SMALL_PIPELINE)
    overrides["workspace"] = str(tmp_path / "ws")
    cfg = load_config(None, overrides=overrides, environ={})
    first = run_stages(cfg)["evaluate"]
    assert len(written) == 3 and "reused" not in first.sampler  # before, after DPO, the control

    written.clear()
    again = run_stages(cfg)["evaluate"]
    assert written == [] and "of before, after, control reused from an earlier run" in again.sampler
    assert again.models == first.models and again.table == first.table

    # Another judge alone judges the stored answers. This one, added as one module and one registration line
    # (tests/fixtures/throwaway_kinds.py), needs the run's model folder: the run hands it that folder and a cache
    # folder of its own name, beside its own setting.
    judged = load_config(None, overrides={**overrides, "evaluate": {**overrides["evaluate"], "judge": model_folder_judge,
                                                                   "judge_options": {model_folder_judge: {"max_words": 3}}}},
                         environ={})
    by_words = run_stages(judged)
    assert written == []
    rows = [json.loads(line) for line in (Path(by_words["evaluate"].path) / "outputs.jsonl").read_text().splitlines()]
    assert rows and all(r["judge"] == model_folder_judge for r in rows)
    assert all(r["judge_hallucinated"] == (len(r["summary"].split()) > 3) for r in rows)  # its setting reached it
    handed = json.loads((tmp_path / "ws" / "cache" / model_folder_judge / "handed.json").read_text())
    assert handed["base_model"] == by_words["warm_start"].path and handed["vocab_size"] > 0

    stored = sorted((tmp_path / "ws" / "answers").glob("answers-*"))
    assert len(stored) == 3
    stored[0].write_text('{"texts": ["cut short')  # a damaged file is never trusted
    resumed = run_stages(cfg)["evaluate"]
    assert len(written) == 1 and resumed.models == first.models

    written.clear()
    longer = load_config(None, overrides={**overrides, "evaluate": {**overrides["evaluate"], "max_new_tokens": 40}},
                         environ={})
    run_stages(longer)
    assert len(written) == 3  # another token limit: other answers

    from faithforge.core.workspace import Workspace

    fresh = Workspace.open(tmp_path / "ws").remove_outputs()  # `--fresh`: no answer survives it
    assert not fresh.not_ours and not any((tmp_path / "ws" / "answers").iterdir())
