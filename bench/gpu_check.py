"""The one GPU check for issue 13: does QLoRA DPO of a 7B model fit the RTX 5070's 10.48e9 bytes, and does the
estimator predict what the real code uses?

    python bench/gpu_check.py --out "$OUT"              # on a CUDA machine (an H200 when one is lent)
    python bench/gpu_check.py --dry-run --out /tmp/x    # tiny shapes on the CPU: the same code path (CI)

On a bare lent machine run `bench/gpu_check.sh` instead: it installs the wheels carried in `wheels/` first
(see its header for how to prepare that folder under the 64 MiB carry limit), then runs this file.

What it does, once: writes a random-init folder of the qwen2.5-7b shape (bf16 safetensors, built on the GPU)
and loads it the way the train stage does (`load_for_plan`, NF4 + double quantization, bf16 compute), attaches
LoRA (r 16, all linears) once. Then, with the real `run_dpo` (cached reference log-probs, paged 8-bit AdamW,
gradient checkpointing, bf16), for (seq, micro-batch) in (512, 1), (1024, 1), (1024, 2), (2048, 1): peak
reserved and allocated beside `faithforge.gpu.estimate.estimate_train`'s prediction; the (1024, 1) case again under
`torch.cuda.set_per_process_memory_fraction((10.48e9 - 0.5 GiB context) / total)` for 4 steps (the RTX 5070
verdict); steps/s of the cached reference vs TRL's live reference (same model, adapters disabled); and
bench/prefix_cache.py's 6,287-token prefix variant. Everything goes to `<out>/gpu_check.json` as it is measured (a timeout keeps what
was done).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from faithforge.gpu.profiles import RTX5070_FREE_BYTES as BUDGET_BYTES  # noqa: E402 - one reading of "10.48": 10.48e9 bytes
CASES = ((512, 1), (1024, 1), (1024, 2), (2048, 1))
CAPPED_CASE, CAPPED_STEPS = (1024, 1), 4
TINY = {"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512, "max_position_embeddings": 4096,
        "tie_word_embeddings": False}


def write(out: Path, report: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def predicted(config: dict, name: str, seq: int, micro: int, device: str) -> dict:
    from faithforge.gpu.estimate import estimate_train
    from faithforge.gpu.model_shape import model_shape_from_config

    est = estimate_train(model_shape_from_config(config, name), micro_batch=micro, seq_len=seq, device=device,
                         optimizer="paged-adamw-8bit" if device == "cuda" else "adamw-fp32",
                         gradient_checkpointing=device == "cuda", quantization="nf4")
    return {"predicted_total_bytes": est.total_bytes,
            "predicted_reserved_bytes": est.total_bytes - est.terms["cuda_context_bytes"], "terms": est.terms}


def speed_arguments(output_dir: Path, steps: int, seq: int, on_gpu: bool):
    """The DPO settings both sides of the cached-vs-live speed comparison train with (no checkpoint inside it)."""
    from faithforge.training.dpo import DpoArguments

    return DpoArguments(output_dir=str(output_dir), steps=steps, micro_batch=1, grad_accum=1, learning_rate=1e-4,
                        beta=0.1, max_length=seq, seed=0, checkpoint_every=steps + 1, gradient_checkpointing=on_gpu,
                        optimizer="paged_adamw_8bit" if on_gpu else "adamw_torch", bf16=on_gpu)


def step_timer():
    """A trainer callback that times every step; `steps_per_second()` leaves out the first (warm-up) step."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):  # noqa: ARG002
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ARG002
            self.times.append(time.perf_counter() - self.started)

        def steps_per_second(self) -> float:
            timed = self.times[1:] or self.times
            return len(timed) / sum(timed)

    return StepTimer()


def live_reference_steps_per_second(policy, tokenizer, pairs, seq: int, steps: int, work: Path, on_gpu: bool) -> float:
    """TRL's own DPOTrainer computing the reference live every step (adapters disabled), same settings."""
    from datasets import Dataset
    from trl import DPOTrainer

    from faithforge.training.dpo import dpo_config, drop_reference_adapter

    timer = step_timer()
    args = dpo_config(speed_arguments(work, steps, seq, on_gpu), precompute_ref_log_probs=False)
    columns = ["id", "prompt", "chosen", "rejected"]
    trainer = DPOTrainer(model=policy, args=args, processing_class=tokenizer, callbacks=[timer],
                         train_dataset=Dataset.from_list([{k: p[k] for k in columns} for p in pairs]))
    trainer.train()
    drop_reference_adapter(policy)
    return timer.steps_per_second()


def section(report: dict, out: Path, name: str, run) -> None:
    """Run one measurement; a failure is recorded under its name and the next section still runs."""
    import torch

    started = time.perf_counter()
    try:
        report[name] = run()
    except Exception as exc:  # noqa: BLE001 - one failing section must not cost the others on a 15-minute lease
        report[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"}
    report[name]["section_seconds"] = round(time.perf_counter() - started, 1)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    write(out, report)
    print(name, json.dumps(report[name])[:1500], flush=True)


def likelihood_timing(model, tokenizer, device: str, items: int, batch_size: int) -> dict:
    """Issue 23: the likelihood judge on QAGS articles with this (7B-shape NF4) model: items/s and peak memory.
    Random-init weights: the scores mean nothing, the time and memory are the real code's."""
    import torch

    from faithforge.data.labeled_split import read_labeled_summaries
    from faithforge.evaluation.likelihood import LikelihoodScorer
    from faithforge.training.modeling import measured_peak, start_peak_measurement

    rows = read_labeled_summaries(ROOT / "bench" / "data" / "qags-human-labels.jsonl")[:items]
    scorer = LikelihoodScorer(model=model, tokenizer=tokenizer, device=device, batch_size=batch_size,
                              max_source_tokens=1024, window_overlap_tokens=128)
    scorer.score(rows[0].source, rows[0].summary)  # warm-up (kernels, allocator)
    tokens = sum(len(tokenizer(r.source + " " + r.summary)["input_ids"]) for r in rows[1:])
    start_peak_measurement()
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    scorer.score_many([(r.source, r.summary) for r in rows[1:]])
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return {"items": len(rows) - 1, "seconds": round(seconds, 2), "items_per_second": round((len(rows) - 1) / seconds, 2),
            "mean_tokens_per_item": round(tokens / (len(rows) - 1), 1), **measured_peak()}


def sampling_rate(model, tokenizer, requests: int, new_tokens: int) -> dict:
    """Issue 28: the pairs stage's sampler (the batched prefix-cached engine, temperature 1.0) on this model."""
    import torch

    from faithforge.engine import PrefixCachedEngine, SamplingConfig

    engine = PrefixCachedEngine(model, tokenizer, "You answer questions about the document below, briefly. " * 8)
    prompts = [f"Question {i}: who sold the hats, and on which day?" for i in range(requests)]
    sampling = SamplingConfig(temperature=1.0, top_p=0.95, seed=0, max_new_tokens=new_tokens)
    engine.generate_batch(prompts[:2], sampling, batch_size=2)  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    results = engine.generate_batch(prompts, sampling, batch_size=requests)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    generated = sum(len(r.token_ids) for r in results)
    return {"requests": requests, "new_tokens_each": new_tokens, "generated_tokens": generated,
            "seconds": round(seconds, 2), "tokens_per_second": round(generated / seconds, 1)}


def merge_timing(folder: Path, adapter: Path, device: str) -> dict:
    """Issue 27: fold an adapter trained on the NF4 policy into the 16-bit base on the GPU (peft
    merge_and_unload), the way `faithforge model export --format hf` does on a GPU: peak memory and time."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from faithforge.training.modeling import measured_peak, start_peak_measurement

    start_peak_measurement()
    started = time.perf_counter()
    base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, device_map=device)
    loaded = time.perf_counter() - started
    merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    parameters = sum(p.numel() for p in merged.parameters())
    del merged, base
    return {"load_seconds": round(loaded, 1), "load_and_merge_seconds": round(seconds, 1), "parameters": parameters,
            **measured_peak()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json ($OUT on a lent machine)")
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU: the code path, no figures")
    parser.add_argument("--steps", type=int, default=3, help="DPO steps per measured case")
    parser.add_argument("--speed-steps", type=int, default=6, help="steps for the cached-vs-live speed comparison")
    parser.add_argument("--only", choices=["likelihood"], help="build the model, then run only this section (a rerun "
                                                               "of one section on a short lease)")
    args = parser.parse_args(argv)

    import torch

    from faithforge.gpu_calibration.calibrate import build_random_model_dir, measure_peak, pairs_of_length
    from faithforge.training.dpo import DpoArguments, run_dpo
    from faithforge.training.modeling import attach_lora, load_for_plan, load_tokenizer
    from faithforge.training.reference_cache import ReferenceCache, cache_key, compute_reference_cache
    from faithforge.gpu.model_shape import SHIPPED_CONFIGS_DIR, load_model_config
    from faithforge.gpu.planner import Plan

    on_gpu = not args.dry_run
    if on_gpu and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; nothing measured (use --dry-run to exercise the code on the CPU)")
        return 2
    device = "cuda" if on_gpu else "cpu"
    name = "qwen2.5-7b" if on_gpu else "tiny-qwen2"
    config = load_model_config(SHIPPED_CONFIGS_DIR / "qwen2.5-7b.json") if on_gpu else dict(TINY)
    cases = CASES if on_gpu else ((32, 1), (64, 1), (64, 2), (128, 1))
    capped_case = CAPPED_CASE if on_gpu else cases[1]
    report: dict = {"device": torch.cuda.get_device_name(0) if on_gpu else "cpu (dry run)", "model": name,
                    "budget_bytes": BUDGET_BYTES, "torch": torch.__version__, "cases": [], "started": time.time()}
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    started = time.perf_counter()
    folder = build_random_model_dir(config, work / "model", init_device=device)
    plan = Plan.manual("train", "gpu" if on_gpu else "cpu", precision="nf4")
    base, loaded_on = load_for_plan(folder, plan)
    tokenizer = load_tokenizer(folder)
    policy = attach_lora(base, r=16, alpha=32, dropout=0.0, quantized=True, gradient_checkpointing=on_gpu)
    report["build_seconds"] = round(time.perf_counter() - started, 1)
    write(args.out, report)
    print(f"built {name} NF4 on {loaded_on} in {report['build_seconds']} s", flush=True)

    if args.only == "likelihood":
        policy.eval()
        with policy.disable_adapter():
            section(report, args.out, "likelihood_judge", lambda: likelihood_timing(
                policy, tokenizer, loaded_on, items=41 if on_gpu else 3, batch_size=8 if on_gpu else 2))
        return 0

    def dpo_case(seq: int, micro: int, steps: int, tag: str) -> dict:
        pairs = pairs_of_length(tokenizer, max(2 * micro, micro * steps), seq)
        key, components = cache_key(weights=f"random-{name}", tokenizer=tokenizer, max_length=seq,
                                    truncation_mode="keep_start", quantization={"precision": "nf4"}, pairs=pairs,
                                    compute_dtype="bfloat16")
        cache = ReferenceCache(work / f"ref-{tag}", key, components, shard_size=len(pairs))
        with policy.disable_adapter(), measure_peak(loaded_on) as ref_peak:
            compute_reference_cache(policy, tokenizer, pairs, cache, batch_size=micro, max_length=seq)
        row = {"case": tag, "seq_len": seq, "micro_batch": micro, "reference_pass": ref_peak.to_dict(),
               **predicted(config, name, seq, micro, "cuda" if on_gpu else "cpu")}
        try:
            with measure_peak(loaded_on) as peak:
                result = run_dpo(policy, tokenizer, pairs, cache.load(), DpoArguments(
                    output_dir=str(work / f"run-{tag}"), steps=steps, micro_batch=micro, grad_accum=1,
                    learning_rate=1e-4, beta=0.1, max_length=seq, seed=0, checkpoint_every=steps + 1,
                    gradient_checkpointing=on_gpu, optimizer="paged_adamw_8bit" if on_gpu else "adamw_torch",
                    bf16=on_gpu))
            row.update(steps=result["steps"], first_loss=result["history"][0]["loss"], oom=False)
            del result
        except torch.OutOfMemoryError as exc:
            row.update(oom=True, error=str(exc).splitlines()[0])
        row.update(peak.to_dict())
        if row.get("peak_reserved_bytes"):
            row["measured_over_predicted"] = round(row["peak_reserved_bytes"] / row["predicted_reserved_bytes"], 3)
        return row

    for seq, micro in cases:
        row = dpo_case(seq, micro, args.steps, f"{seq}x{micro}")
        report["cases"].append(row)
        write(args.out, report)
        print(json.dumps({k: v for k, v in row.items() if k != "terms"}), flush=True)

    policy.eval()
    with policy.disable_adapter():  # the base model as the judge and the sampler would load it: NF4, no adapter
        section(report, args.out, "likelihood_judge", lambda: likelihood_timing(
            policy, tokenizer, loaded_on, items=41 if on_gpu else 3, batch_size=8 if on_gpu else 2))
        section(report, args.out, "pairs_sampling", lambda: sampling_rate(
            policy, tokenizer, requests=32 if on_gpu else 2, new_tokens=64 if on_gpu else 4))
    policy.train()
    adapter_dir = work / "adapter-after-dpo"
    policy.save_pretrained(adapter_dir)  # trained by the DPO cases above: a real NF4-trained adapter

    if on_gpu:  # the RTX 5070 verdict: 10.48e9 bytes for the whole process, so torch's allocator gets that minus
        # the CUDA context it does not count (the estimator's 0.5 GiB; a stricter cap than the card's free memory)
        from faithforge.gpu.estimate import CUDA_CONTEXT_BYTES

        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction((BUDGET_BYTES - CUDA_CONTEXT_BYTES) / total)
    capped = dpo_case(capped_case[0], capped_case[1], CAPPED_STEPS, "capped")
    capped["allocator_cap_bytes"] = BUDGET_BYTES - 512 * 2**20 if on_gpu else None
    capped["fits"] = not capped.get("oom") and capped.get("steps") == CAPPED_STEPS
    report["capped"] = capped
    if on_gpu:
        torch.cuda.set_per_process_memory_fraction(1.0)
    write(args.out, report)
    print(json.dumps({k: v for k, v in capped.items() if k != "terms"}), flush=True)

    speed_seq = 1024 if on_gpu else 64
    pairs = pairs_of_length(tokenizer, args.speed_steps, speed_seq)
    key, components = cache_key(weights=f"random-{name}", tokenizer=tokenizer, max_length=speed_seq,
                                truncation_mode="keep_start", quantization={"precision": "nf4"}, pairs=pairs,
                                compute_dtype="bfloat16")
    cache = ReferenceCache(work / "ref-speed", key, components, shard_size=len(pairs))
    with policy.disable_adapter():
        compute_reference_cache(policy, tokenizer, pairs, cache, batch_size=1, max_length=speed_seq)
    timer = step_timer()
    run_dpo(policy, tokenizer, pairs, cache.load(),
            speed_arguments(work / "run-speed", args.speed_steps, speed_seq, on_gpu), extra_callbacks=[timer])
    cached = timer.steps_per_second()
    live = live_reference_steps_per_second(policy, tokenizer, pairs, speed_seq, args.speed_steps,
                                           work / "run-live", on_gpu)
    report["speed"] = {"seq_len": speed_seq, "cached_steps_per_second": cached, "live_steps_per_second": live,
                       "cached_over_live": cached / live}
    write(args.out, report)
    print(json.dumps(report["speed"]), flush=True)

    del policy, base
    if on_gpu:
        torch.cuda.empty_cache()
    section(report, args.out, "merge_adapter", lambda: merge_timing(folder, adapter_dir, device))
    prefix_args = (["--device", "cuda", "--prefix-tokens", "6287", "--hidden", "2048", "--layers", "36", "--heads",
                    "16", "--kv-heads", "2", "--intermediate", "11008", "--vocab", "151936", "--dtype", "bfloat16"]
                   if on_gpu else ["--prefix-tokens", "64", "--requests", "2", "--turns", "2", "--hidden", "64",
                                   "--layers", "1", "--vocab", "256", "--threads", "1"])
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "prefix_cache.py"), *prefix_args,
                           "--out", str(args.out / "prefix_cache.json")], capture_output=True, text=True)
    report["prefix_cache"] = {"args": prefix_args, "exit": done.returncode, "tail": done.stdout[-3000:],
                              "stderr": done.stderr[-2000:] if done.returncode else ""}
    report["seconds"] = round(time.perf_counter() - started, 1)
    write(args.out, report)
    print(f"gpu_check done in {report['seconds']} s; wrote {args.out / 'gpu_check.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
