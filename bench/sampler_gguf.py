"""Which GGUF llama.cpp should sample SmolLM2 from: the file it was imported from (Q4_1) or an f16 file written from
the same float32 weights (issue 28, item 1). Side by side, one process, on the demo's shapes:

    python bench/sampler_gguf.py --model DIR [--sources 40] [--k 4] [--rounds 2] [--questions 200]
                                 [--adapter ADAPTER] [--out FILE.json]

1. Writing: seconds to write the f16 file (and, with `--adapter`, base + adapter merged in float32).
2. The pairs stage's shape: `--sources` grounded-qa *validation* questions x `--k` samples at temperature 1, 64
   sequences a step, 64 new tokens at most, the demo's system prompt, 2 threads; Q4_1 and f16 interleaved in a
   rotating order for `--rounds` rounds; tokens/s as the median, and each file's `grounding`-flagged share of the
   first round's samples with its Wilson 95% interval (the draws differ, the distribution must not).
3. The evaluation's shape: `--questions` distinct *test* questions, greedy, batch 64: seconds for the float32
   prefix engine, llama.cpp on f16 and on Q4_1 (once each, in that order), and how many answers each llama.cpp
   file writes token-identical to the float32 engine (the base model; with `--adapter` only the writing is timed).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.gguf_batched import load_avg, write  # noqa: E402 - the same report helpers

MAX_NEW_TOKENS = 64  # the cap bench/gguf_batched.py used (the demo's evaluate.max_new_tokens is 40)
BATCH = 64  # the demo's plan: sequences a step, for sampling and for evaluation


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="SmolLM2 imported with `faithforge model import --smollm2 DIR`")
    p.add_argument("--adapter", default=None, help="a trained LoRA adapter of that model: time its merge + write")
    for name, default in (("--sources", 40), ("--k", 4), ("--rounds", 2), ("--questions", 200), ("--threads", 2),
                          ("--seed", 0)):  # see the module docstring
        p.add_argument(name, type=int, default=default)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "sampler_gguf.json")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    import torch
    from transformers import AutoModelForCausalLM

    from faithforge.data.grounded_qa import SYSTEM_PROMPT, generate_questions
    from faithforge.engine import PrefixCachedEngine, SamplingConfig
    from faithforge.evaluation import get_judge
    from faithforge.evaluation.metrics import wilson_interval
    from faithforge.stages.sampler import gguf_sampler, imported_gguf
    from faithforge.training.modeling import load_tokenizer
    from faithforge.training.onpolicy_pairs import score_summary
    from faithforge.training.sampling_gguf import write_sampling_gguf

    torch.set_num_threads(args.threads)
    report: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "load_1m_start": load_avg()}
    q4 = imported_gguf(args.model)
    if q4 is None:
        raise SystemExit(f"{args.model} was not imported from a GGUF at float32: import it with --smollm2")
    cache = Path(tempfile.mkdtemp(prefix="sampler-gguf-"))
    started = time.perf_counter()
    f16 = write_sampling_gguf(args.model, None, cache / "base.f16.gguf")
    report["write_s"] = {"base": round(time.perf_counter() - started, 2)}
    if args.adapter:
        started = time.perf_counter()
        write_sampling_gguf(args.model, args.adapter, cache / "adapter.f16.gguf")
        report["write_s"]["base + adapter (merged)"] = round(time.perf_counter() - started, 2)
    print(f"== writing the f16 GGUF: {report['write_s']} s (load {load_avg()})", flush=True)

    tokenizer = load_tokenizer(args.model)
    files = {"Q4_1 (imported)": q4, "f16 (written)": f16}
    samplers = {name: gguf_sampler(path, args.model, tokenizer, SYSTEM_PROMPT, n_ctx=0, threads=args.threads)
                for name, path in files.items()}
    examples = list(generate_questions("val", args.sources, args.seed))
    prompts = [e.source for e in examples for _ in range(args.k)]
    sampling = SamplingConfig(temperature=1.0, seed=args.seed, max_new_tokens=MAX_NEW_TOKENS)
    for sampler in samplers.values():
        sampler.generate_batch(prompts[:4], sampling, batch_size=4)  # warm-up, untimed
    print(f"\n== pairs shape: {args.sources} sources x {args.k} samples, {BATCH} a step, {args.threads} threads ==")
    speeds: dict[str, list[float]] = {name: [] for name in files}
    first: dict[str, list] = {}
    names = list(files)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            t = time.perf_counter()
            results = samplers[name].generate_batch(prompts, sampling, batch_size=BATCH)
            seconds = time.perf_counter() - t
            speeds[name].append(sum(len(x.token_ids) for x in results) / seconds)
            first.setdefault(name, results)
            print(f"  round {r + 1} {name}: {seconds:.1f} s, {speeds[name][-1]:.1f} tokens/s", flush=True)
    judge = get_judge("grounding")
    base_tps = statistics.median(speeds[names[0]])
    report["sampling"] = {}
    for name in names:
        flagged = sum(bool(score_summary(judge, examples[i // args.k].source, res.text.strip(),
                                         list(examples[i // args.k].key_facts), 1.0)["hallucinated"])
                      for i, res in enumerate(first[name]))
        low, high = wilson_interval(flagged, len(first[name]), 0.95)
        tps = statistics.median(speeds[name])
        report["sampling"][name] = {"tokens_per_s": round(tps, 1), "x_q4_1": round(tps / base_tps, 2),
                                    "flagged": flagged, "samples": len(first[name]),
                                    "rate": round(flagged / len(first[name]), 3),
                                    "ci95": [round(low, 3), round(high, 3)]}
        row = report["sampling"][name]
        print(f"  {name:<16} {tps:7.1f} tokens/s {row['x_q4_1']:5.2f}x   grounding-flagged {flagged}/{row['samples']}"
              f" = {row['rate']:.3f} [{row['ci95'][0]:.3f}, {row['ci95'][1]:.3f}]")
    rows = list(report["sampling"].values())
    report["sampling_each_rate_inside_the_others_interval"] = all(
        o["ci95"][0] <= r["rate"] <= o["ci95"][1] for r in rows for o in rows)
    print(f"  each rate inside the other's interval: {report['sampling_each_rate_inside_the_others_interval']}")

    questions = [e.source for e in generate_questions("test", args.questions, args.seed)]
    greedy = SamplingConfig(max_new_tokens=MAX_NEW_TOKENS)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    engine = PrefixCachedEngine(model, tokenizer, [{"role": "system", "content": SYSTEM_PROMPT}])
    print(f"\n== evaluation shape: {len(questions)} distinct test questions, greedy, batch {BATCH} ==")
    answers, report["evaluation"] = {}, {}
    with torch.inference_mode():
        engine.generate_batch(questions[:4], greedy, batch_size=4)  # warm-up, untimed
        for name, run in [("float32 engine", lambda: engine.generate_batch(questions, greedy, batch_size=BATCH)),
                          *[(n, (lambda s=s: s.generate_batch(questions, greedy, batch_size=BATCH)))
                            for n, s in samplers.items()]]:
            t = time.perf_counter()
            answers[name] = [x.token_ids for x in run()]
            report["evaluation"][name] = {"seconds": round(time.perf_counter() - t, 1)}
    reference = answers["float32 engine"]
    for name, row in report["evaluation"].items():
        row["identical_to_float32_engine"] = sum(a == b for a, b in zip(answers[name], reference))
        row["x_engine"] = round(report["evaluation"]["float32 engine"]["seconds"] / row["seconds"], 2)
        print(f"  {name:<16} {row['seconds']:6.1f} s {row['x_engine']:5.2f}x the engine;  token-identical to the "
              f"float32 engine: {row['identical_to_float32_engine']}/{len(questions)}")
    report["load_1m_end"] = load_avg()
    print(f"\nload {report['load_1m_start']} -> {report['load_1m_end']}")
    return write(args.out, report)


if __name__ == "__main__":
    raise SystemExit(main())
