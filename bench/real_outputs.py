"""Real outputs of a model on the grounded-qa task, judged: the base rate, and the rows a person labels.

    faithforge model import --smollm2 /tmp/smollm2
    python bench/real_outputs.py --model /tmp/smollm2 --split val --count 48 --out bench/out/val_outputs.jsonl

Greedy answers (temperature 0, the evaluation's decoding) through the prefix-cached engine with the task's
system prompt, judged by the `grounding` judge. Prints the hallucination rate per category (unanswerable
questions are where a model invents) and the answer accuracy on answerable questions, and writes one JSON
object per item (`source`, `summary` = the answer, `category`, `flagged`, the judge's flags) — the format
`faithforge eval calibrate --labels` reads once a person has added `label` and `span`.

Splits: `val` chooses the task design and settings; `labels` (its own seed space) feeds the hand-labeled set;
`test` is the benchmark's held-out split, never used here for choosing anything.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--split", default="val")
    p.add_argument("--count", type=int, default=48)
    p.add_argument("--start", type=int, default=0, help="first index of the split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--system-prompt", default=None, help="try another system prompt (validation split only)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from faithforge.engine import PrefixCachedEngine, SamplingConfig
    from faithforge.evaluation import get_judge
    from faithforge.data.grounded_qa import SYSTEM_PROMPT, make_question
    from faithforge.training.modeling import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(args.model)
    model = load_causal_lm(args.model, quantization=None, device="cpu")
    system = args.system_prompt or SYSTEM_PROMPT
    engine = PrefixCachedEngine(model, tokenizer, [{"role": "system", "content": system}])
    examples = [make_question(args.split, i, args.seed) for i in range(args.start, args.start + args.count)]
    judge = get_judge("grounding")
    started = time.perf_counter()
    results = engine.generate_batch([[{"role": "user", "content": e.source}] for e in examples],
                                    SamplingConfig(temperature=0.0, max_new_tokens=args.max_new_tokens),
                                    batch_size=args.batch_size)
    seconds = time.perf_counter() - started
    rows, flagged, total, correct, answerable = [], Counter(), Counter(), 0, 0
    for example, result in zip(examples, results):
        answer = result.text.strip()
        verdict = judge.judge(example.source, answer)
        total[example.category] += 1
        flagged[example.category] += verdict.hallucinated
        if example.key_facts:
            answerable += 1
            correct += all(f in answer for f in example.key_facts)
        rows.append({"id": example.id, "split": args.split, "category": example.category, "source": example.source,
                     "summary": answer, "finish_reason": result.finish_reason, "key_facts": list(example.key_facts),
                     "flagged": verdict.hallucinated,
                     "flags": [f.text for f in verdict.flags] if hasattr(verdict, "flags") else []})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    unanswerable = [c for c in total if c.startswith("unanswerable")]
    n_u, f_u = sum(total[c] for c in unanswerable), sum(flagged[c] for c in unanswerable)
    print(json.dumps({
        "items": len(rows), "seconds": round(seconds, 1), "system_prompt": system,
        "rate_all": round(sum(flagged.values()) / len(rows), 3),
        "rate_unanswerable": round(f_u / n_u, 3) if n_u else None,
        "by_category": {c: f"{flagged[c]}/{total[c]}" for c in sorted(total)},
        "answer_accuracy": round(correct / answerable, 3) if answerable else None,
    }, indent=2))


if __name__ == "__main__":
    main()
