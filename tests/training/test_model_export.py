"""`faithforge model export`: a real model (SmolLM2-135M-Instruct + a small random LoRA adapter) exported to GGUF
and an Ollama Modelfile, served by llama.cpp's server and compared with transformers token for token; the hf
format loaded by plain transformers in a process that never imports FaithForge."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.fixtures.smollm2 import imported_smollm2

from faithforge.core.errors import UserError

ROOT = Path(__file__).resolve().parents[2]


def _random_adapter(base: Path, out: Path, *, seed: int = 0, scale: float = 0.02) -> Path:
    """A small LoRA adapter (r 4 on every linear layer) with random non-zero B: the merge changes the logits."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                  task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, scale)
    peft_model.save_pretrained(str(out))
    return out


def _llama_cpp_or_skip() -> None:
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        message = "llama-cpp-python is not installed"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI must run the export tests, but {message}")
        pytest.skip(message)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # ~2 min on idle cores; 15 min was not enough at load 20 on 2 cores
def test_smollm2_adapter_exported_to_gguf_and_ollama_serves_the_same_greedy_tokens(tmp_path_factory, tmp_path):
    """The f16 GGUF, served by llama.cpp's server, answers chat requests with transformers' greedy tokens; its
    metadata carries the chat template; the Modelfile reproduces the template; llama.cpp quantizes it to q4_k_m."""
    import httpx
    import torch
    from gguf import GGUFReader
    from tests.fixtures.llama_server import _stop, start_llama_server
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from faithforge.training.gguf_writer import quantize
    from faithforge.training.model_export import ExportOptions, export_model

    _llama_cpp_or_skip()
    base = imported_smollm2(tmp_path_factory)
    adapter = _random_adapter(base, tmp_path / "adapter")
    out = tmp_path / "export"
    record = export_model(str(adapter), out, ExportOptions(fmt="ollama", quants=("f16",), prompts=6,
                                                           max_new_tokens=16))
    assert record["merge_max_abs_logit_diff"] < 1e-3 < record["adapter_changes_logits_by"]
    f16 = record["files"]["f16"]
    assert f16["agreement"]["same_prompt_tokens"] == 6 and f16["agreement"]["same_greedy"] >= 5
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["Modelfile", "README.md", "faithforge-export.json", f16["file"]])
    q4 = quantize(out / f16["file"], tmp_path / "model-q4_k_m.gguf", "q4_k_m")  # llama.cpp's own quantizer
    assert q4.stat().st_size < 0.5 * f16["bytes"]
    assert GGUFReader(str(q4)).fields["general.file_type"].contents() == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M

    tokenizer = AutoTokenizer.from_pretrained(str(base))
    fields = GGUFReader(str(out / f16["file"])).fields
    assert fields["tokenizer.chat_template"].contents() == tokenizer.chat_template
    assert fields["general.architecture"].contents() == "llama" and fields["tokenizer.ggml.pre"].contents() == "smollm"

    modelfile = (out / "Modelfile").read_text()
    assert modelfile.startswith("# Written by") and f"FROM ./{f16['file']}" in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile and "SYSTEM \"\"\"You are a helpful AI assistant" in modelfile
    assert record["ollama"]["create"] == f"ollama create export -f {out / 'Modelfile'}"
    card = (out / "README.md").read_text()
    assert "max |Δlogit|" in card and f"{f16['agreement']['same_greedy']}/6 greedy answers" in card

    # Independently of the exporter's own check: the suite's llama.cpp server on the exported file, chat requests
    # (rendered by llama.cpp from the GGUF's template), against base + adapter in transformers (peft, unmerged).
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32),
                                          str(adapter)).eval()
    server, proc = start_llama_server(tmp_path / "server.log", gguf=out / f16["file"], n_ctx=1024)
    questions = ["Document: Lena fed 2 goats in Bonn on Friday. Question: How many goats did Lena feed?",
                 "Name a bird that cannot fly.", "Document: Omar sold a lamp in Kiel. Question: What did Omar sell?"]
    try:
        same = 0
        for question in questions:
            messages = [{"role": "user", "content": question}]
            reply = httpx.post(f"{server.base_url}/chat/completions", timeout=120, json={
                "model": server.model, "messages": messages, "max_tokens": 16, "temperature": 0.0,
                "repeat_penalty": 1.0}).json()["choices"][0]["message"]["content"]
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                return_dict=True)["input_ids"]
            with torch.no_grad():
                generated = reference.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                               max_new_tokens=16, pad_token_id=tokenizer.pad_token_id)
            expected = tokenizer.decode(generated[0, ids.shape[1]:], skip_special_tokens=True)
            same += int(reply.strip() == expected.strip())
    finally:
        _stop(proc)
    assert same >= len(questions) - 1, f"only {same}/{len(questions)} served answers equal transformers'"


@pytest.mark.timeout(600)
def test_hf_export_loads_in_plain_transformers_with_the_adapter_models_logits(tiny_model_dir, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from faithforge.training.model_export import ExportOptions, export_model

    adapter = _random_adapter(tiny_model_dir, tmp_path / "adapter", scale=0.2)
    out = tmp_path / "merged"
    record = export_model(str(adapter), out, ExportOptions(fmt="hf", dtype="float32"))
    assert record["hf"]["reloaded_max_abs_logit_diff"] < 1e-3 < record["adapter_changes_logits_by"]
    text = "Ada bought 3 lamps in Oslo ."
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)),
                                             str(adapter))(input_ids=ids).logits[0, -1]
    probe = ("import json, sys, torch\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
             f"m = AutoModelForCausalLM.from_pretrained({str(out)!r}); t = AutoTokenizer.from_pretrained({str(out)!r})\n"
             f"ids = t({text!r}, return_tensors='pt')['input_ids']\n"
             "print(json.dumps(m(input_ids=ids).logits[0, -1].tolist()))\n"
             "assert not any(name.startswith('faithforge') for name in sys.modules)\n"
             "assert t.chat_template")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert torch.allclose(torch.tensor(json.loads(result.stdout.strip().splitlines()[-1])), expected, atol=1e-4)
    assert (out / "README.md").is_file() and json.loads((out / "faithforge-export.json").read_text())["format"] == "hf"
    assert (adapter / "adapter_config.json").is_file()  # the adapter itself is untouched, loadable by plain peft


def test_bad_inputs_are_refused_before_any_model_loads(tmp_path, tiny_model_dir):
    from faithforge.training.model_export import ExportOptions, export_model

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep")
    cases = [
        (str(tiny_model_dir), tmp_path / "taken", ExportOptions(fmt="hf"), "already exists and is not empty"),
        (str(tiny_model_dir), tmp_path / "a", ExportOptions(fmt="onnx"), "--format must be one of"),
        (str(tiny_model_dir), tmp_path / "b", ExportOptions(fmt="gguf", quants=("q3",)), "--quant must be one of"),
        (str(tiny_model_dir), tmp_path / "c", ExportOptions(fmt="hf", quants=("q8_0",)), "--quant applies to"),
        ("0123456789abcdef0123456789abcdef", tmp_path / "d", ExportOptions(workspace=str(tmp_path / "nows")),
         "neither a folder nor a run id"),
        (str(tmp_path / "taken"), tmp_path / "e", ExportOptions(fmt="hf"), "holds neither an adapter"),
    ]
    for source, out, opts, message in cases:
        with pytest.raises(UserError, match=message):
            export_model(source, out, opts)
    assert (tmp_path / "taken" / "mine.txt").read_text() == "keep"
    assert not any((tmp_path / n).exists() for n in "abcde")


def test_gguf_refuses_a_tokenizer_llama_cpp_cannot_read(tmp_path, tiny_model_dir):
    """The tiny model's word-level tokenizer has no llama.cpp pre-tokenizer: refused in one line, nothing written."""
    from faithforge.training.model_export import ExportOptions, export_model

    _llama_cpp_or_skip()
    with pytest.raises(UserError, match="pre-tokenizer"):
        export_model(str(tiny_model_dir), tmp_path / "out", ExportOptions(fmt="gguf", prompts=1, max_new_tokens=2))
    assert not (tmp_path / "out").exists()


def test_cli_export_names_the_problem_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-c", "from faithforge.app.cli import main; main()", "model", "export",
                             str(tmp_path / "missing"), str(tmp_path / "out"), "--format", "hf", "-w",
                             str(tmp_path / "ws")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "neither a folder nor a run id" in result.stderr


LLAMA3_STYLE = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
                "{{ m['content'] }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}"
                "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")


def test_modelfile_template_is_read_from_the_chat_template(tiny_model_dir):
    """A Llama-3-style template: role headers, one end-of-turn token, no default system prompt."""
    from transformers import AutoTokenizer

    from faithforge.training.modelfile import (go_template, modelfile_text, reproduces_chat_template, stop_tokens,
                                               template_pieces)

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    tokenizer.chat_template = LLAMA3_STYLE
    pieces = template_pieces(tokenizer)
    assert pieces.suffix == "<|eot_id|>" and pieces.default_system is None
    assert pieces.user_prefix == "<|start_header_id|>user<|end_header_id|>\n\n"
    assert pieces.assistant_prefix == "<|start_header_id|>assistant<|end_header_id|>\n\n"
    conversations = [[{"role": "user", "content": "Q?"}],
                     [{"role": "system", "content": "S"}, {"role": "user", "content": "Q?"}],
                     [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                      {"role": "user", "content": "c"}]]
    assert reproduces_chat_template(pieces, tokenizer, conversations) == []
    assert stop_tokens(pieces, tokenizer)[0] == "<|eot_id|>"
    text = modelfile_text("m.gguf", pieces, tokenizer)
    assert 'PARAMETER stop "<|eot_id|>"' in text and "SYSTEM" not in text and go_template(pieces) in text
    assert 'SYSTEM """Summarize only."""' in modelfile_text("m.gguf", pieces, tokenizer, system="Summarize only.")


def test_an_exported_runs_modelfile_sends_the_system_prompt_its_rates_were_measured_with():
    """The Modelfile's SYSTEM was the chat template's default ("You are a helpful AI assistant named SmolLM"),
    not the prompt the run trained and measured with (an attack, 2026-12-07)."""
    from faithforge.data.sources import DOCUMENTS_PROMPT
    from faithforge.training.export_hf import ExportSource
    from faithforge.training.model_export import _run_system_prompt

    def source(run_config):
        if run_config:  # as `demo --real --documents` records it
            from faithforge.app.real_demo import REAL_DOCUMENTS_SETTINGS
            from faithforge.core.config import deep_merge

            run_config = deep_merge(REAL_DOCUMENTS_SETTINGS, run_config)
        return ExportSource(kind="adapter", model_path="m", run_id="r1", run_config=run_config)

    assert _run_system_prompt(source({})) is None  # an adapter folder alone: the template's default stays
    from faithforge.app.real_demo import REAL_DOCUMENTS_SETTINGS

    assert _run_system_prompt(source({"data": {"documents_path": "d.jsonl"}})) \
        == REAL_DOCUMENTS_SETTINGS["data"].get("system_prompt", DOCUMENTS_PROMPT)
    assert _run_system_prompt(source({"data": {"documents_path": "d.jsonl", "system_prompt": "Be terse."}})) \
        == "Be terse."


def test_a_chat_template_without_system_turns_is_refused(tiny_model_dir):
    from transformers import AutoTokenizer

    from faithforge.training.modelfile import template_pieces

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    tokenizer.chat_template = ("{% for m in messages %}{% if m['role'] != 'system' %}[{{ m['role'] }}] {{ m['content'] }}"
                               "\n{% endif %}{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}")
    with pytest.raises(UserError, match="drops a system, user or assistant message"):
        template_pieces(tokenizer)


def test_a_runs_settings_this_version_cannot_read_are_refused_before_any_model_loads(tmp_path, tiny_model_dir,
                                                                                      monkeypatch):
    """The run's system prompt is read from its recorded settings; settings that no longer validate (an older
    version's) were found only when the Modelfile was written, after the merge and the GGUF's verification."""
    from faithforge.training import model_export
    from faithforge.training.export_hf import ExportSource

    stale = ExportSource(kind="model", model_path=str(tiny_model_dir), run_id="r1",
                         run_config={"train": {"stepz": 3}})
    monkeypatch.setattr(model_export, "resolve_source", lambda *args, **kwargs: stale)
    monkeypatch.setattr(model_export, "merged_model", lambda *args: pytest.fail("the model was loaded first"))
    with pytest.raises(UserError, match="run r1's settings") as refused:
        model_export.export_model("r1", tmp_path / "out", model_export.ExportOptions(fmt="ollama"))
    assert "\n" not in str(refused.value) and "stepz" in str(refused.value)
    assert not (tmp_path / "out").exists()
