"""`faithforge model export`: the trained model as something a server runs — a merged Hugging Face folder, a GGUF
file (f16, and q8_0 / q4_k_m through llama.cpp's quantizer), or a GGUF with an Ollama Modelfile — verified before
it is called done, with a model card.

Order: every check that needs no model (source, output folder, format, quantization, llama-cpp-python,
architecture) → merge on the CPU and measure it → write into a temporary folder → serve each GGUF with llama.cpp's
server and compare greedy answers with transformers' → model card and `faithforge-export.json` → rename the folder
into place. A failed verification leaves no export behind.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from faithforge.core.errors import UserError
from faithforge.core.workspace import require_new_folder
from faithforge.training.export_hf import DTYPES, ExportSource, default_dtype, merged_model, resolve_source, save_hf
from faithforge.training.gguf_writer import QUANTS, gguf_architecture, llama_cpp_or_error, quantize, write_gguf

FORMATS = ("hf", "gguf", "ollama")
RECORD_NAME = "faithforge-export.json"
RUN_CONFIG_NAME = "faithforge-run-config.yaml"
#: The merged model must reproduce base + adapter; fp32 merging moves logits by ~1e-5 (a different sum order).
MERGE_TOLERANCE = 1e-3
#: The f16 GGUF must give transformers' greedy answer on at least this share of the probe prompts (an f16/fp32
#: near-tie may flip one; a wrong rope layout or tokenizer agrees on none).
F16_MIN_AGREEMENT = 0.9


@dataclass
class ExportOptions:
    fmt: str = "gguf"
    quants: tuple[str, ...] = ("f16",)
    dtype: str | None = None
    base: str | None = None
    workspace: str = ".faithforge"
    prompts: int = 20
    max_new_tokens: int = 24
    threads: int = 2
    name: str | None = None


def check_options(opts: ExportOptions) -> None:
    if opts.fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {opts.fmt!r}")
    bad = [q for q in opts.quants if q not in QUANTS]
    if bad:
        raise UserError(f"--quant must be one of {', '.join(QUANTS)}, got {bad[0]!r}")
    if opts.fmt == "hf" and tuple(opts.quants) != ("f16",):
        raise UserError("--quant applies to --format gguf and ollama; for hf choose the weights with --dtype")
    if opts.dtype is not None and opts.dtype not in DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(DTYPES)}, got {opts.dtype!r}")
    if opts.fmt != "hf" and opts.dtype is not None:
        raise UserError("--dtype applies to --format hf; a GGUF is written in f16 and quantized with --quant")
    from faithforge.training.export_verify import PROMPTS

    if not 1 <= opts.prompts <= len(PROMPTS):
        raise UserError(f"--prompts must be between 1 and {len(PROMPTS)}, got {opts.prompts}")



def _ollama_name(out: Path, name: str | None) -> str:
    raw = (name or out.name).lower()
    cleaned = "".join(c if c.isalnum() or c in "-_." else "-" for c in raw).strip("-.") or "faithforge-model"
    return cleaned


def export_model(source: str, out: str | Path, opts: ExportOptions,
                 on_step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Export `source` (adapter folder, run id or model folder) to `out`; returns the export record."""
    from faithforge.core.workspace import atomic_directory, atomic_write_json, atomic_write_text

    say = on_step or (lambda message: None)
    check_options(opts)
    out = Path(out).expanduser().resolve()
    require_new_folder(out)
    src = resolve_source(source, base=opts.base, workspace=opts.workspace)
    config = json.loads((Path(src.model_path) / "config.json").read_text())
    # Read before any model loads: a run's settings this version cannot read are said now, not after the merge.
    system = _run_system_prompt(src) if opts.fmt == "ollama" else None
    if opts.fmt != "hf":
        from faithforge.training.gguf_writer import pre_tokenizer
        from faithforge.training.modeling import load_tokenizer

        gguf_architecture(config)
        pre_tokenizer(load_tokenizer(src.model_path))  # a vocabulary llama.cpp cannot read: refused now
        llama_cpp_or_error(f"--format {opts.fmt}")
    started = time.perf_counter()
    merged, tokenizer, merge = merged_model(src, say)
    if merge["merge_max_abs_logit_diff"] is not None and merge["merge_max_abs_logit_diff"] > MERGE_TOLERANCE:
        raise UserError(f"the merged model's logits differ from base + adapter by {merge['merge_max_abs_logit_diff']:.3g} "
                        f"(> {MERGE_TOLERANCE}); nothing was written")
    record: dict[str, Any] = {
        "format": opts.fmt, "source": source, "kind": src.kind, "base_model": src.model_path,
        "adapter": src.adapter_path, "run_id": src.run_id, "workspace": src.workspace,
        "command": "faithforge model export " + " ".join(shlex.quote(a) for a in sys.argv[3:])
        if sys.argv[1:3] == ["model", "export"] else None,
        "merge_max_abs_logit_diff": merge["merge_max_abs_logit_diff"],
        "adapter_changes_logits_by": merge.get("adapter_changes_logits_by"), "probe_tokens": merge["probe_tokens"],
    }
    with atomic_directory(out, new=True) as tmp:  # onto nothing or the empty folder checked above
        if opts.fmt == "hf":
            dtype = opts.dtype or default_dtype(src.model_path)
            say(f"writing the merged model ({dtype}) and loading it back with plain transformers")
            record["hf"] = save_hf(merged, tokenizer, tmp, dtype, merge["reference_logits"])
            if record["hf"]["reloaded_max_abs_logit_diff"] > (MERGE_TOLERANCE if dtype == "float32" else 1.0):
                raise UserError(f"the written model's logits differ from base + adapter by "
                                f"{record['hf']['reloaded_max_abs_logit_diff']:.3g}; nothing was written")
        else:
            _export_gguf(src, merged, tokenizer, config, tmp, out, opts, record, say, system)
        if src.run_config:  # the run's settings, so the card's reproduce command is exact
            import yaml

            atomic_write_text(tmp / RUN_CONFIG_NAME, yaml.safe_dump(src.run_config, sort_keys=False))
        record["seconds"] = round(time.perf_counter() - started, 1)
        atomic_write_text(tmp / "README.md", model_card(src, record, opts, out))
        atomic_write_json(tmp / RECORD_NAME, record)
    return record


def _export_gguf(src: ExportSource, merged, tokenizer, config: dict, tmp: Path, out: Path, opts: ExportOptions,
                 record: dict, say: Callable[[str], None], system: str | None) -> None:
    from faithforge.training.export_verify import greedy_agreement, hf_greedy, rendered_prompts

    prompts = rendered_prompts(tokenizer, opts.prompts)
    say(f"greedy answers of the merged model (transformers, fp32) to {len(prompts)} prompts")
    t0 = time.perf_counter()
    expected = hf_greedy(merged, tokenizer, prompts, opts.max_new_tokens)
    record["transformers_greedy_seconds"] = round(time.perf_counter() - t0, 1)
    f16 = tmp / "model-f16.gguf"
    t0 = time.perf_counter()
    report = write_gguf(merged.state_dict(), config, tokenizer, src.model_path, f16,
                        name=_ollama_name(out, opts.name), on_step=say)
    files: dict[str, dict[str, Any]] = {"f16": {"file": f16.name, "bytes": report.bytes,
                                                "seconds": round(time.perf_counter() - t0, 1)}}
    record["gguf"] = {"architecture": report.architecture, "pre_tokenizer": report.pre_tokenizer,
                      "tensors": report.tensors}
    for quant in dict.fromkeys(opts.quants):
        if quant == "f16":
            continue
        say(f"quantizing to {quant} with llama.cpp")
        t0 = time.perf_counter()
        path = quantize(f16, tmp / f"model-{quant}.gguf", quant, threads=opts.threads)
        files[quant] = {"file": path.name, "bytes": path.stat().st_size, "seconds": round(time.perf_counter() - t0, 1)}
    for quant, info in files.items():
        say(f"serving {info['file']} with llama.cpp's server and comparing greedy answers")
        t0 = time.perf_counter()
        agreement = greedy_agreement(tmp / info["file"], tokenizer, expected, prompts,
                                     max_new_tokens=opts.max_new_tokens, threads=opts.threads)
        info["agreement"] = agreement.to_dict()
        info["verify_seconds"] = round(time.perf_counter() - t0, 1)
    record["files"] = files
    f16_agreement = files["f16"]["agreement"]
    if f16_agreement["same_prompt_tokens"] != f16_agreement["prompts"] or f16_agreement["rate"] < F16_MIN_AGREEMENT:
        raise UserError(f"the f16 GGUF served by llama.cpp does not reproduce the merged model: "
                        f"{f16_agreement['same_greedy']}/{f16_agreement['prompts']} greedy answers and "
                        f"{f16_agreement['same_prompt_tokens']} prompt tokenizations agree; nothing was written "
                        "(report the model)")
    if opts.fmt == "ollama":
        _write_modelfile(tokenizer, tmp, out, opts, files, record, system=system)


def _run_system_prompt(src: ExportSource) -> str | None:
    """The system prompt the run trained and measured with (None when the source is no run's): the Modelfile's
    SYSTEM, which Ollama sends when a chat has none. It was the chat template's default ("You are a helpful AI
    assistant named SmolLM…"), so `ollama run` answered under another prompt than the rates on the card (an
    attack, 2026-12-07)."""
    if not src.run_config:
        return None
    from faithforge.core.config import validate_config
    from faithforge.data.sources import system_prompt

    return system_prompt(validate_config(src.run_config, f"run {src.run_id}'s settings"))


def _write_modelfile(tokenizer, tmp: Path, out: Path, opts: ExportOptions, files: dict, record: dict,
                     system: str | None = None) -> None:
    from faithforge.core.workspace import atomic_write_text
    from faithforge.training.export_verify import PROMPTS
    from faithforge.training.modelfile import modelfile_text, reproduces_chat_template, template_pieces

    pieces = template_pieces(tokenizer)
    conversations = [[{"role": "user", "content": p}] for p in PROMPTS]
    conversations += [[{"role": "system", "content": "Answer from the document only."},
                       {"role": "user", "content": p}] for p in PROMPTS]
    conversations += [[{"role": "user", "content": PROMPTS[0]}, {"role": "assistant", "content": "Ada."},
                       {"role": "user", "content": PROMPTS[1]}]]
    wrong = reproduces_chat_template(pieces, tokenizer, conversations)
    if wrong:
        raise UserError(f"the Modelfile TEMPLATE would render {len(wrong)} of {len(conversations)} conversations "
                        "differently from the model's chat template; export with --format gguf instead")
    chosen = next((q for q in opts.quants if q != "f16"), "f16")
    gguf_name = files[chosen]["file"]
    atomic_write_text(tmp / "Modelfile", modelfile_text(gguf_name, pieces, tokenizer, system=system))
    name = _ollama_name(out, opts.name)
    record["ollama"] = {"modelfile": "Modelfile", "gguf": gguf_name, "name": name, "system": system,
                        "create": f"ollama create {name} -f {shlex.quote(str(out / 'Modelfile'))}",
                        "template_checked_on": len(conversations), "template": pieces.to_dict()}


def _fmt_rate(rates: dict | None) -> str:
    if not rates or rates.get("rate") is None:
        return "—"
    ci = rates.get("rate_ci")
    interval = f" [{100 * ci[0]:.1f}%, {100 * ci[1]:.1f}%]" if ci else ""
    recall = f", recall {rates['recall']:.3f}" if rates.get("recall") is not None else ""
    return f"{100 * rates['rate']:.1f}%{interval} (n = {rates.get('n')}{recall})"


def _fmt_num(x: float | None) -> str:
    return "— (no adapter)" if x is None else f"{x:.3g}"


def _fmt_bytes(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def model_card(src: ExportSource, record: dict, opts: ExportOptions, out: Path) -> str:
    """README.md of the export: what it is, where it came from, what was measured, how to reproduce it."""
    lines = [f"# {out.name}", "",
             f"Exported by FaithForge (`faithforge model export`, format `{opts.fmt}`) on "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", ""]
    for section in (_card_what_it_is(src), _card_lineage(src), _card_rates(src.run or {}), _card_verification(record),
                    _card_use(record, opts, out), _card_reproduce(src, record, opts, out)):
        lines += section
    return "\n".join(lines[:-1]) + "\n"


def _card_what_it_is(src: ExportSource) -> list[str]:
    from faithforge.training.model_import import read_import_record

    lines = ["## What it is", ""]
    imported = read_import_record(src.model_path)
    base_line = f"- **Base model:** `{src.model_path}`"
    if imported:
        base_line += f" (imported by FaithForge from `{Path(imported['source']).name}`, {imported['parameters']:,} parameters)"
    lines.append(base_line)
    if src.adapter_path:
        lines.append(f"- **LoRA adapter (DPO):** `{src.adapter_path}`, merged into the base on the CPU in fp32. "
                     "The adapter alone stays loadable with plain peft (`PeftModel.from_pretrained(base, ADAPTER)`).")
    else:
        lines.append("- A model folder exported as it is (no adapter merged).")
    return lines + [""]


def _card_lineage(src: ExportSource) -> list[str]:
    lines = ["## Data lineage", ""]
    run = src.run or {}
    if src.run_id:
        lines.append(f"- Pipeline run `{src.run_id}` in the workspace `{src.workspace}` (`faithforge runs -w "
                     f"{src.workspace}`).")
        dataset, pairs, train = run.get("generate") or {}, run.get("pairs") or {}, run.get("train") or {}
        if dataset:
            lines.append(f"- Examples: `{dataset.get('path')}` ({dataset.get('counts')}).")
        if pairs:
            builder = (pairs.get("report") or {}).get("builder")
            lines.append(f"- Preference pairs: `{pairs.get('path')}` ({pairs.get('counts')}"
                         f"{', builder ' + str(builder) if builder else ''}).")
        if train:
            lines.append(f"- DPO: {train.get('steps')} steps, micro-batch {train.get('micro_batch')} × "
                         f"{train.get('grad_accum')}, loss {train.get('first_loss')} → {train.get('final_loss')}.")
    else:
        lines.append("- No run store beside the adapter names the run that trained it; lineage unknown.")
    return lines + [""]


def _card_rates(run: dict) -> list[str]:
    lines = ["## Measured hallucination rates", ""]
    evaluation = run.get("evaluate") or {}
    models = evaluation.get("models") or {}
    if models:
        lines += [f"Judge `{evaluation.get('judge')}` — {evaluation.get('judge_accuracy')}", "",
                  f"On {evaluation.get('items')} `{evaluation.get('split')}` items (95% intervals):", "",
                  "| model | hallucination rate |", "|---|---|"]
        lines += [f"| {label} | {_fmt_rate(rates)} |" for label, rates in models.items()]
        diff = evaluation.get("difference") or {}
        rate = diff.get("rate")
        if rate and rate.get("difference") is not None:  # the evaluate stage's paired difference (a dict)
            lines += ["", f"After − before: {100 * rate['difference']:+.1f} points "
                          f"[{100 * rate['ci_low']:+.1f}, {100 * rate['ci_high']:+.1f}] "
                          f"({rate.get('method', 'paired bootstrap')}, 95%, "
                          f"n {rate.get('n')})."]
    else:
        lines.append("No evaluation of this adapter was found in a run store; measure it before you rely on it.")
    return lines + [""]


def _card_verification(record: dict) -> list[str]:
    lines = ["## Verification of this export", "",
             f"- Merged vs base + adapter (fp32, {record['probe_tokens']} probe tokens): max |Δlogit| "
             f"{_fmt_num(record['merge_max_abs_logit_diff'])}; the adapter itself moves the logits by up to "
             f"{_fmt_num(record.get('adapter_changes_logits_by'))}."]
    if "hf" in record:
        lines.append(f"- The written {record['hf']['dtype']} folder, loaded back with plain transformers: max "
                     f"|Δlogit| {record['hf']['reloaded_max_abs_logit_diff']:.3g} vs base + adapter; "
                     f"{_fmt_bytes(record['hf']['bytes'])}.")
    for quant, info in (record.get("files") or {}).items():
        a = info["agreement"]
        lines.append(f"- `{info['file']}` ({quant}, {_fmt_bytes(info['bytes'])}): served by llama.cpp's server, "
                     f"{a['same_greedy']}/{a['prompts']} greedy answers identical to transformers' "
                     f"(up to {a['max_new_tokens']} tokens; mean common prefix {a['mean_common_prefix_tokens']} "
                     f"tokens), prompt tokenization identical on {a['same_prompt_tokens']}/{a['prompts']}.")
    return lines + [""]


def _card_use(record: dict, opts: ExportOptions, out: Path) -> list[str]:
    lines = ["## Use it", ""]
    if opts.fmt == "hf":
        lines += ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
                  f'model = AutoModelForCausalLM.from_pretrained("{out}")',
                  f'tokenizer = AutoTokenizer.from_pretrained("{out}")', "```"]
    else:
        first = next(iter(record["files"].values()))["file"]
        lines += ["```bash", f"python -m llama_cpp.server --model {out / first} --host 127.0.0.1 --port 8000", "```"]
    if "ollama" in record:
        lines += ["", "```bash", record["ollama"]["create"], f"ollama run {record['ollama']['name']}", "```"]
        if record["ollama"].get("system"):
            lines += ["", "The rates above were measured with this system prompt; the Modelfile's SYSTEM sends it "
                      "when a chat has none (a chat that sends its own replaces it):", "", "```text",
                      record["ollama"]["system"], "```"]
    return lines + [""]


def _card_reproduce(src: ExportSource, record: dict, opts: ExportOptions, out: Path) -> list[str]:
    lines = ["## Reproduce", ""]
    if record.get("command"):
        lines += ["```bash", record["command"], "```"]
    else:
        lines += ["```bash", f"faithforge model export {shlex.quote(record['source'])} {shlex.quote(str(out))} "
                  f"--format {opts.fmt}" + "".join(f" --quant {q}" for q in opts.quants if opts.fmt != "hf"), "```"]
    if src.run_config:
        lines += ["", f"The run itself (`{src.run_id}`), with the settings it ran with (`{RUN_CONFIG_NAME}` beside this "
                  "card; its `model.path` must exist):", "", "```bash",
                  f"faithforge demo --config {RUN_CONFIG_NAME}", "```"]
    return lines + [""]
