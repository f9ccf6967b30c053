"""DPO step speed and peak memory: FaithForge's cached reference vs TRL's default PEFT DPO, side by side.

    python bench/dpo_step.py                                   # CPU, mid-size random Llama (~1-2 min)
    python bench/dpo_step.py --device cuda --shape qwen2.5-7b  # QLoRA on a 7B shape (needs a CUDA GPU)

Both variants train the same LoRA adapters (same random-init weights, seed, pairs, order and settings):

* `faithforge`: the reference pass runs once (`compute_reference_cache`), then `run_dpo` trains with the
  cached numbers; no reference forward during training.
* `trl-live`: plain `trl.DPOTrainer` with `precompute_ref_log_probs=False`; with a PEFT model TRL runs the
  reference forward every step with the adapters disabled (one copy of the weights, two forwards).

Each variant runs in its own process, so its peak memory is its own: CPU = peak RSS (ru_maxrss), GPU =
torch.cuda.max_memory_reserved(). Steps/second is measured over the steps after `--warmup`.
The CUDA variant builds the config's shape with NF4 + double-quant linears (faithforge.gpu_calibration.calibrate), LoRA
r=16 on all linears, sequence length 1024, micro-batch 1, gradient checkpointing, paged 8-bit AdamW and
bf16 — what the train stage does on a GPU — and checks the peak against the RTX 5070's 10.48e9-byte budget
(gpu/profiles.py reads the seed note's "10.48" as GB, the stricter reading; goal < 8 GiB).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from faithforge.gpu.units import GiB_bytes, MiB_bytes  # noqa: E402 - the one byte-unit module
from faithforge.gpu.profiles import RTX5070_FREE_BYTES as BUDGET_BYTES  # noqa: E402 - one reading of "10.48": 10.48e9 bytes
GOAL_BYTES = 8 * GiB_bytes
SHAPES = {
    "cpu-mid": {"hidden": 256, "layers": 4, "heads": 4, "intermediate": 688, "vocab": 8192, "seq": 128,
                "micro_batch": 2, "lora_r": 16},
    "qwen2.5-7b": {"config": ROOT / "gpu" / "model_configs" / "qwen2.5-7b.json", "seq": 1024, "micro_batch": 1,
                   "lora_r": 16},
}


def bench_pairs(tokenizer, count: int, seq_len: int) -> list[dict]:
    """Synthetic pairs whose rendered prompt + completion is close to `seq_len` tokens (sources concatenated)."""
    from faithforge.data.pairs import build_synthetic_pairs
    from faithforge.training.reference_cache import tokenize_pair
    from faithforge.data.teacher import generate_split

    examples = list(generate_split("bench", count + 64, 0, 0.5))
    pairs, _ = build_synthetic_pairs(examples[:count], omission_share=0.0, seed=0)
    filler = [e.source for e in examples]
    out = []
    for i, pair in enumerate(pairs):
        words: list[str] = []
        j = i
        while True:
            candidate = words + filler[j % len(filler)].split()
            trial = {**pair, "prompt": [pair["prompt"][0], {"role": "user", "content": " ".join(candidate)}]}
            t = tokenize_pair(tokenizer, trial)
            if len(t["prompt_ids"]) + max(len(t["chosen_ids"]), len(t["rejected_ids"])) > seq_len:
                break
            words, j = candidate, j + 1
        out.append({**pair, "prompt": [pair["prompt"][0], {"role": "user", "content": " ".join(words)}]})
    return out


def build_model(shape: dict, device: str):
    import torch

    if device == "cuda":  # a random-init folder of the shape, loaded the way the train stage loads it (NF4)
        import tempfile

        from faithforge.gpu_calibration.calibrate import build_random_model_dir
        from faithforge.training.modeling import load_for_plan
        from faithforge.gpu.planner import Plan

        config = json.loads(Path(shape["config"]).read_text())
        folder = build_random_model_dir(config, Path(tempfile.mkdtemp(prefix="dpo-step-")) / "model",
                                        init_device="cuda")
        return load_for_plan(folder, Plan.manual("train", "gpu", precision="nf4"))[0]
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=shape["vocab"], hidden_size=shape["hidden"], num_hidden_layers=shape["layers"],
                         num_attention_heads=shape["heads"], num_key_value_heads=shape["heads"],
                         intermediate_size=shape["intermediate"], max_position_embeddings=shape["seq"] * 2,
                         tie_word_embeddings=False, pad_token_id=0)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def peak_memory_bytes(device: str) -> int:
    import resource

    import torch

    if device == "cuda":
        return int(torch.cuda.max_memory_reserved())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def step_timer(warmup: int):
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.durations: list[float] = []
            self._start = 0.0

        def on_step_begin(self, args, state, control, **kwargs):  # noqa: ARG002
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ARG002
            self.durations.append(time.perf_counter() - self._start)

        def steps_per_second(self) -> float:
            timed = self.durations[warmup:]
            return len(timed) / sum(timed)

    return StepTimer()


def run_variant(variant: str, args: argparse.Namespace) -> dict:
    """One variant in this process; returns its figures."""
    import tempfile

    import torch
    from datasets import Dataset

    from faithforge.training.dpo import DpoArguments, dpo_config, run_dpo
    from faithforge.training.modeling import attach_lora
    from faithforge.training.reference_cache import ReferenceCache, cache_key, compute_reference_cache
    from faithforge.training.tiny_model import build_tokenizer
    from faithforge.data.teacher import VOCABULARY_TEXTS

    torch.set_num_threads(args.threads)
    shape = SHAPES[args.shape]
    on_gpu = args.device == "cuda"
    tokenizer = build_tokenizer(list(VOCABULARY_TEXTS))
    pairs = bench_pairs(tokenizer, args.pairs, shape["seq"])
    model = build_model(shape, args.device)
    figures: dict = {"variant": variant, "pairs": len(pairs), "seq_len": shape["seq"],
                     "parameters": sum(p.numel() for p in model.parameters())}
    work = Path(tempfile.mkdtemp(prefix=f"dpo-bench-{variant}-"))
    steps = args.steps
    settings = DpoArguments(output_dir=str(work / "run"), steps=steps, micro_batch=shape["micro_batch"], grad_accum=1,
                            learning_rate=1e-4, beta=0.1, max_length=shape["seq"], seed=0,
                            checkpoint_every=steps + 1, gradient_checkpointing=on_gpu,
                            optimizer="paged_adamw_8bit" if on_gpu else "adamw_torch", bf16=on_gpu)
    timer = step_timer(args.warmup)
    if variant == "faithforge":
        key, components = cache_key(weights=f"bench-random-init-{args.shape}", tokenizer=tokenizer,
                                    max_length=shape["seq"], truncation_mode="keep_start",
                                    quantization={"nf4": on_gpu}, pairs=pairs)
        cache = ReferenceCache(work / "refcache", key, components, shard_size=64)
        started = time.perf_counter()
        compute_reference_cache(model, tokenizer, pairs, cache, batch_size=shape["micro_batch"] * 2,
                                max_length=shape["seq"])
        figures["reference_pass_seconds"] = round(time.perf_counter() - started, 2)
        figures["reference_pass_peak_bytes"] = peak_memory_bytes(args.device)
        figures["cache_bytes"] = sum(p.stat().st_size for p in cache.directory.iterdir())
        if on_gpu:
            torch.cuda.reset_peak_memory_stats()
        reference = cache.load()
    torch.manual_seed(0)
    policy = attach_lora(model, r=shape["lora_r"], alpha=2 * shape["lora_r"], dropout=0.0, quantized=on_gpu,
                         gradient_checkpointing=on_gpu)
    started = time.perf_counter()
    if variant == "faithforge":
        result = run_dpo(policy, tokenizer, pairs, reference, settings,
                         guard_tolerance=2e-2 if on_gpu else 1e-3, extra_callbacks=[timer])
        losses = [h["loss"] for h in result["history"]]
    else:
        from trl import DPOTrainer

        config = dpo_config(settings, precompute_ref_log_probs=False)
        columns = ["id", "prompt", "chosen", "rejected"]
        trainer = DPOTrainer(model=policy, args=config, processing_class=tokenizer, callbacks=[timer],
                             train_dataset=Dataset.from_list([{k: p[k] for k in columns} for p in pairs]))
        trainer.train()
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    figures.update(train_seconds=round(time.perf_counter() - started, 2), steps=len(timer.durations),
                   steps_per_second=timer.steps_per_second(), peak_bytes=peak_memory_bytes(args.device),
                   first_loss=losses[0], last_loss=losses[-1])
    return figures


def run_child(variant: str, argv: list[str]) -> dict:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, __file__, *argv, "--variant", variant], env=env, capture_output=True,
                          text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise SystemExit(f"the {variant} run failed (exit {done.returncode})")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--shape", choices=tuple(SHAPES), default=None,
                        help="cpu-mid (default on CPU) or qwen2.5-7b (default on CUDA)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2,
                        help="runs per variant, alternated (A B A B); the fastest run of each is reported, "
                             "which damps noise from other work on a shared machine")
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of steps/second")
    parser.add_argument("--pairs", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads per run")
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "dpo_step.json"))
    parser.add_argument("--variant", choices=("faithforge", "trl-live"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.shape = args.shape or ("qwen2.5-7b" if args.device == "cuda" else "cpu-mid")
    if args.steps <= args.warmup:
        parser.error("--steps must be larger than --warmup")

    if args.device == "cuda" or args.shape == "qwen2.5-7b":
        import torch

        if not torch.cuda.is_available():
            print(f"dpo_step: --device cuda --shape {args.shape} needs a CUDA GPU and this machine has none; "
                  "nothing was measured. Run it on the GPU worker, or run the CPU benchmark: "
                  "python bench/dpo_step.py")
            return 0
        args.device = "cuda"

    if args.variant:
        print("RESULT " + json.dumps(run_variant(args.variant, args)), flush=True)
        return 0

    argv = ["--device", args.device, "--shape", args.shape, "--steps", str(args.steps), "--warmup",
            str(args.warmup), "--pairs", str(args.pairs), "--threads", str(args.threads)]
    runs: dict[str, list[dict]] = {"faithforge": [], "trl-live": []}
    for _ in range(max(1, args.rounds)):
        for variant in runs:
            runs[variant].append(run_child(variant, argv))
    results = {v: {**max(r, key=lambda x: x["steps_per_second"]),
                   "all_steps_per_second": [x["steps_per_second"] for x in r],
                   "peak_bytes": max(x["peak_bytes"] for x in r)} for v, r in runs.items()}
    ours, live = results["faithforge"], results["trl-live"]
    unit = "GiB" if args.device == "cuda" else "MiB"
    scale = GiB_bytes if args.device == "cuda" else MiB_bytes
    memory = "peak reserved" if args.device == "cuda" else "peak RSS"
    print(f"DPO step benchmark — {args.device}, shape {args.shape}, {ours['parameters'] / 1e6:.1f}M parameters, "
          f"seq {ours['seq_len']}, {ours['pairs']} pairs, {args.steps} steps ({args.warmup} warm-up), "
          f"best of {max(1, args.rounds)} alternated runs per variant")
    print(f"{'variant':<12} {'steps/s':>8} {memory + ' ' + unit:>18} {'first loss':>11} {'last loss':>10}")
    for name, r in results.items():
        print(f"{name:<12} {r['steps_per_second']:>8.3f} {r['peak_bytes'] / scale:>18.2f} {r['first_loss']:>11.4f} "
              f"{r['last_loss']:>10.4f}")
    ratio = ours["steps_per_second"] / live["steps_per_second"]
    summary = {"device": args.device, "shape": args.shape, "steps": args.steps, "warmup": args.warmup,
               "rounds": max(1, args.rounds), "threads": args.threads,
               "speedup_steps_per_second": ratio,
               "peak_memory_ratio": ours["peak_bytes"] / live["peak_bytes"], "results": results}
    print(f"speed-up (faithforge / trl-live steps/s): {ratio:.2f}x; peak memory ratio: "
          f"{summary['peak_memory_ratio']:.2f}; one-off reference pass: {ours['reference_pass_seconds']:.1f} s "
          f"for {ours['pairs']} pairs, cache {ours['cache_bytes'] / 1024:.1f} KiB")
    if args.device == "cuda":
        verdict = "fits" if ours["peak_bytes"] < BUDGET_BYTES else "DOES NOT FIT"
        print(f"faithforge peak {ours['peak_bytes'] / GiB_bytes:.2f} GiB reserved: {verdict} the 10.48e9-byte budget "
              f"(goal < 8 GiB: {'met' if ours['peak_bytes'] < GOAL_BYTES else 'missed'})")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
