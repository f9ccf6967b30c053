"""What `faithforge model export` starts from, and the merged Hugging Face model it makes.

The source is a DPO adapter folder (its base read from `adapter_config.json`, or given), a pipeline run id (its
adapter and the model it was trained on, read from the run store), or a model folder that needs no merge. The
adapter is folded into the base on the CPU in fp32 (as `train.save_merged` does: merging into 4-bit weights would
round the update away, and the GPU may still hold the NF4 policy), and the merge is measured: the largest logit
difference between base + adapter (unmerged, peft) and the merged model on the probe prompts. The written folder
is then loaded back by plain `transformers` (no FaithForge code) and measured the same way in the dtype it was
saved in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from faithforge.core.errors import UserError

DTYPES = ("float32", "bfloat16", "float16")
#: Probe conversations for the logit comparisons (not evaluation items: nothing is chosen on them).
PROBES = [
    [{"role": "user", "content": "Document: Ada bought 3 lamps in Graz on Monday. Question: Who bought lamps?"}],
    [{"role": "system", "content": "Answer from the document only."},
     {"role": "user", "content": "Document: Ben painted a fence in Oslo. Question: On which day did Ben paint?"}],
    [{"role": "user", "content": "Write one sentence about a river."}],
]


@dataclass
class ExportSource:
    kind: str
    """`adapter` (merge needed) or `model` (a model folder exported as it is)."""
    model_path: str
    """The base model folder (for `model`: the model itself)."""
    adapter_path: Optional[str] = None
    run_id: Optional[str] = None
    workspace: Optional[str] = None
    """The workspace whose run store knows this adapter (for the model card's lineage and rates)."""
    run: dict[str, Any] = field(default_factory=dict)
    """Stage outputs of the run that trained the adapter (stage → outputs), when found."""
    run_config: dict[str, Any] = field(default_factory=dict)
    """That run's configuration (as the run store recorded it), when found."""


def _stage_outputs(store, run_id: str) -> dict[str, Any]:
    outputs: dict[str, Any] = {}
    for row in store.stages(run_id):
        if row.status == "completed" and ":" not in row.stage:
            outputs[row.stage] = row.outputs
    return outputs


def _store(workspace: Path):
    from faithforge.core.store import Store

    return Store(f"sqlite:///{workspace / 'faithforge.db'}")


def _run_for_adapter(adapter: Path) -> tuple[str | None, str | None, dict]:
    """(workspace, run id, stage outputs) of the newest run whose DPO stage wrote `adapter`, if a run store
    beside it knows one."""
    for workspace in (adapter.parent.parent, adapter.parent):
        if not (workspace / "faithforge.db").is_file():
            continue
        store = _store(workspace)
        for run in store.list_runs(limit=500):
            outputs = _stage_outputs(store, run["id"])
            if (outputs.get("train") or {}).get("path") == str(adapter):
                return str(workspace), run["id"], outputs
        return str(workspace), None, {}
    return None, None, {}


def resolve_source(source: str, *, base: str | None = None, workspace: str | Path = ".faithforge") -> ExportSource:
    """What to export, checked before anything loads: one line saying what to fix otherwise."""
    path = Path(source).expanduser()
    if path.is_dir():
        path = path.resolve()
        if (path / "adapter_config.json").is_file():
            config = json.loads((path / "adapter_config.json").read_text())
            base_path = base or config.get("base_model_name_or_path")
            if not base_path or not (Path(base_path) / "config.json").is_file():
                raise UserError(f"the adapter in {path} names base model {base_path!r}, which is not a model folder "
                                "here; pass the base with --base MODEL_FOLDER")
            ws, run_id, outputs = _run_for_adapter(path)
            config = _store(Path(ws)).get_run(run_id).config if run_id else {}
            return ExportSource("adapter", str(Path(base_path).resolve()), str(path), run_id, ws, outputs, config)
        if (path / "config.json").is_file():
            if base:
                raise UserError(f"{path} is a model folder, not an adapter; --base applies to adapters only")
            return ExportSource("model", str(path))
        raise UserError(f"{path} holds neither an adapter (adapter_config.json) nor a model (config.json); pass a "
                        "DPO adapter folder, a model folder or a run id (faithforge runs lists them)")
    if path.exists():
        raise UserError(f"{path} is a file; pass a DPO adapter folder, a model folder or a run id")
    ws = Path(workspace).expanduser().resolve()
    if not (ws / "faithforge.db").is_file():
        raise UserError(f"{source} is neither a folder nor a run id of the workspace {ws} (it has no run store); "
                        "pass an adapter folder, or --workspace with the run's workspace")
    store = _store(ws)
    if store.get_run(source) is None:
        raise UserError(f"no run {source} in {ws}; `faithforge runs` lists the run ids")
    outputs = _stage_outputs(store, source)
    adapter, model = (outputs.get("train") or {}).get("path"), (outputs.get("warm_start") or {}).get("path")
    if not adapter or not Path(adapter).is_dir():
        raise UserError(f"run {source} has no finished DPO adapter on disk ({adapter or 'no train stage'}); "
                        "finish the run first")
    if not model or not (Path(model) / "config.json").is_file():
        raise UserError(f"run {source}'s starting model ({model or 'not recorded'}) is not on disk; pass the adapter "
                        "folder and --base MODEL_FOLDER instead")
    return ExportSource("adapter", str(Path(base or model).resolve()), adapter, source, str(ws), outputs,
                        store.get_run(source).config or {})


def _probe_ids(tokenizer):
    """One tensor per probe prompt, chat template applied. Shape: (1, prompt_tokens), long."""
    import torch

    rows = []
    for messages in PROBES:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        rows.append(torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]]))
    return rows


def _logits(model, probes):
    """The model's logits on each probe, no gradient. Shape: (1, prompt_tokens, vocab_size) each, float32."""
    import torch

    with torch.no_grad():
        return [model(input_ids=ids).logits.float() for ids in probes]


def _max_diff(a, b) -> float:
    """Largest |a − b| over paired lists of same-shaped tensors (logits: nats before the softmax)."""
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def merged_model(src: ExportSource, on_step: Callable[[str], None] | None = None):
    """(merged fp32 model on the CPU, tokenizer, merge record). The record holds max |Δlogit| between base +
    adapter (peft, unmerged) and the merged model on the probe prompts, and the reference logits for later."""
    import torch
    from transformers import AutoModelForCausalLM

    from faithforge.training.modeling import load_tokenizer

    say = on_step or (lambda message: None)
    tokenizer = load_tokenizer(src.model_path)
    say(f"loading {src.model_path} (fp32, CPU)")
    model = AutoModelForCausalLM.from_pretrained(src.model_path, dtype=torch.float32).eval()
    probes = _probe_ids(tokenizer)
    record: dict[str, Any] = {"probe_tokens": sum(int(p.shape[1]) for p in probes)}
    if src.kind == "model":
        record["reference_logits"] = _logits(model, probes)
        record["merge_max_abs_logit_diff"] = None
        return model, tokenizer, record
    from peft import PeftModel

    say(f"merging {src.adapter_path}")
    with_adapter = PeftModel.from_pretrained(model, src.adapter_path).eval()
    reference = _logits(with_adapter, probes)
    with with_adapter.disable_adapter():  # the base alone: an adapter that changes nothing is worth saying
        base_logits = _logits(with_adapter, probes)
    merged = with_adapter.merge_and_unload().eval()
    record["reference_logits"] = reference
    record["merge_max_abs_logit_diff"] = _max_diff(reference, _logits(merged, probes))
    record["adapter_changes_logits_by"] = _max_diff(reference, base_logits)
    return merged, tokenizer, record


def default_dtype(model_path: str) -> str:
    config = json.loads((Path(model_path) / "config.json").read_text())
    dtype = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    return dtype if dtype in DTYPES else "float32"


def save_hf(model, tokenizer, out: Path, dtype: str, reference_logits) -> dict[str, Any]:
    """Write the merged model in `dtype` with its tokenizer and chat template, load it back with plain
    transformers and measure max |Δlogit| against base + adapter."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    model.to(getattr(torch, dtype)).save_pretrained(out)
    model.to(torch.float32)
    tokenizer.save_pretrained(out)
    reloaded = AutoModelForCausalLM.from_pretrained(str(out), dtype=getattr(torch, dtype)).eval()
    reloaded_tokenizer = AutoTokenizer.from_pretrained(str(out))
    probes = _probe_ids(reloaded_tokenizer)
    diff = _max_diff(reference_logits, _logits(reloaded, probes))
    del reloaded
    return {"dtype": dtype, "reloaded_max_abs_logit_diff": diff,
            "bytes": sum(p.stat().st_size for p in out.iterdir() if p.is_file())}
