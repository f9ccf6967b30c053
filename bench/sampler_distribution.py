"""Do the engine's sampler and llama.cpp's draw from the same distribution? (issue 28, item 1; seed 8's question)

    python bench/sampler_distribution.py --model DIR [--sources 40] [--k 8] [--out FILE.json]

On seed 8, five pair draws a sampler gave DPO rates 11.3 points apart (BENCHMARKS.md, "ten draws"), while the pair
sets looked alike by every summary. This asks the samplers themselves, on the pairs stage's shape: `--sources`
grounded-qa *validation* questions × `--k` samples at temperature 1 (64 new tokens at most, the demo's system
prompt, 64 sequences a step, 2 threads), once through the float32 prefix engine (`pairs.sampler: engine`) and once
through llama.cpp on the f16 GGUF written from the same weights (the default). Each sample is then scored by the
float32 model itself, teacher-forced: the mean log-probability per token of what was drawn. Two samplers of one
distribution give the same expected value (minus the entropy per token); a sampler of another distribution moves
it. Also per sampler: tokens per answer, the share that ended at EOS, and the `grounding`-flagged share. Differences
are paired by question (each question's mean over its k samples), with a t interval over questions.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.gguf_batched import load_avg, write  # noqa: E402 - the same report helpers

MAX_NEW_TOKENS = 64
BATCH = 64


def token_log_probs(model, prompt_ids: list[int], answer_ids: list[int]) -> float:
    """Mean log-probability per token (nats) of `answer_ids` after `prompt_ids` under `model`, teacher-forced."""
    import torch

    ids = torch.tensor([prompt_ids + answer_ids])
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1:-1].float()
    chosen = torch.log_softmax(logits, -1).gather(1, torch.tensor(answer_ids).unsqueeze(1))
    return float(chosen.mean())


def paired(a: list[float], b: list[float]) -> dict:
    """Mean of a − b over paired items, with a t 95% interval (scipy's one-sample t test on the differences)."""
    from scipy import stats

    d = [x - y for x, y in zip(a, b)]
    test = stats.ttest_1samp(d, 0.0)
    interval = test.confidence_interval(0.95)
    return {"mean": round(statistics.mean(d), 4),
            "ci95": [round(float(interval.low), 4), round(float(interval.high), 4)],
            "p": round(float(test.pvalue), 4), "n": len(d)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="SmolLM2 imported with `faithforge model import --smollm2 DIR`")
    p.add_argument("--sources", type=int, default=40)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "sampler_distribution.json")
    args = p.parse_args()
    import torch
    from transformers import AutoModelForCausalLM

    from faithforge.data.grounded_qa import SYSTEM_PROMPT, generate_questions
    from faithforge.engine import PrefixCachedEngine, SamplingConfig
    from faithforge.evaluation import get_judge
    from faithforge.stages.sampler import gguf_sampler
    from faithforge.training.modeling import load_tokenizer
    from faithforge.training.onpolicy_pairs import score_summary
    from faithforge.training.sampling_gguf import write_sampling_gguf

    torch.set_num_threads(args.threads)
    report: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "load_1m_start": load_avg()}
    tokenizer = load_tokenizer(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    engine = PrefixCachedEngine(model, tokenizer, [{"role": "system", "content": SYSTEM_PROMPT}])
    f16 = write_sampling_gguf(args.model, None, Path(tempfile.mkdtemp(prefix="sampler-dist-")) / "base.f16.gguf")
    llama = gguf_sampler(f16, args.model, tokenizer, SYSTEM_PROMPT, n_ctx=0, threads=args.threads)
    examples = list(generate_questions("val", args.sources, args.seed))
    prompts = [e.source for e in examples for _ in range(args.k)]
    sampling = SamplingConfig(temperature=1.0, seed=args.seed, max_new_tokens=MAX_NEW_TOKENS)
    with torch.inference_mode():
        drawn = {"engine (float32)": engine.generate_batch(prompts, sampling, batch_size=BATCH),
                 "llama.cpp (f16)": llama.generate_batch(prompts, sampling, batch_size=BATCH)}
    judge = get_judge("grounding")
    per_question: dict[str, dict[str, list[float]]] = {}
    report["samplers"] = {}
    for name, results in drawn.items():
        scores, flagged = [], []
        for i, res in enumerate(results):
            ids = [t for t in res.token_ids]
            prompt_ids = engine.renderer.render(engine.renderer.request_turns(prompts[i]))
            scores.append(token_log_probs(model, prompt_ids, ids) if ids else 0.0)
            example = examples[i // args.k]
            flagged.append(float(bool(score_summary(judge, example.source, res.text.strip(),
                                                    list(example.key_facts), 1.0)["hallucinated"])))
        lengths = [float(len(r.token_ids)) for r in results]
        eos = [float(r.finish_reason == "eos") for r in results]
        per_question[name] = {key: [statistics.mean(v[q * args.k:(q + 1) * args.k]) for q in range(args.sources)]
                              for key, v in (("log_prob", scores), ("tokens", lengths), ("eos", eos),
                                             ("flagged", flagged))}
        report["samplers"][name] = {key: round(statistics.mean(v), 4) for key, v in per_question[name].items()}
        print(f"  {name:<17} log p/token {report['samplers'][name]['log_prob']:+.3f}  tokens "
              f"{report['samplers'][name]['tokens']:.1f}  ended at EOS {report['samplers'][name]['eos']:.2f}  "
              f"grounding-flagged {report['samplers'][name]['flagged']:.3f}", flush=True)
    a, b = per_question["engine (float32)"], per_question["llama.cpp (f16)"]
    report["engine_minus_llama"] = {key: paired(a[key], b[key]) for key in a}
    for key, row in report["engine_minus_llama"].items():
        print(f"  engine − llama.cpp, {key:<8} {row['mean']:+.4f} [{row['ci95'][0]:+.4f}, {row['ci95'][1]:+.4f}] "
              f"p = {row['p']} over {row['n']} questions")
    report["load_1m_end"] = load_avg()
    return write(args.out, report)


if __name__ == "__main__":
    raise SystemExit(main())
