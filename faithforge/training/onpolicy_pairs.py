"""On-policy preference pairs: sample summaries from the current policy, judge them, pair best against worst.

For each source, `k` summaries are sampled through the prefix-cached engine (the system prompt is encoded
once and shared by every request). Each is scored

    score = (1 if the judge finds nothing unsupported else 0) + recall_weight × key-fact recall

or, with `score_by="judge-score"`, the judge's own support score in place of the 0/1 verdict (a graded judge: the
`likelihood` judge's weakest-sentence log-probability per token, nats; the `trained` and `nli` judges' support
probability). On real news a judge that flags most long summaries leaves almost every source without a pair by
its verdict alone (measured with `likelihood`: 30 of 31 sources, one pair); its score still ranks them.

with the evaluation judge (`grounding` by default) and `key_fact_recall`, so a summary that hallucinates
loses to one that does not, and among faithful ones the one that keeps more facts wins (the model cannot
learn to be faithful by saying nothing). The highest-scoring summary becomes `chosen`, the lowest
`rejected`, when their scores differ by at least `margin`; otherwise the source gives no pair, and the
report says why.

`min_chosen_recall` closes the gap the score leaves on sources that have key facts (answerable questions): a
faithful non-answer ("The document does not say.", "Tomas ordered the bikes.") scores 1.0 there, above a wrong
answer, so without it such a sample becomes `chosen` and DPO learns to stop answering questions it could
answer. Measured on SmolLM2's pairs of seeds 0–2: 7–13 of ~95 pairs per seed were exactly that, and answer
accuracy fell ~11 points after DPO (BENCHMARKS.md). With `min_chosen_recall` = 1.0 only a sample that states every key
fact may be chosen on such a source; sources without key facts (nothing to recall) are unaffected. A sample that
is a question (SmolLM2 often echoes the one it was asked) is never chosen: it answers nothing.

`omission_pairs` adds the other half of "it cannot win by saying less": the unanswerable sources' chosen samples
are non-answers, and DPO generalizes them to answerable questions ("Ivo painted the chairs." for "Where did Ivo
paint the chairs?"). On a source with key facts whose samples include a faithful one that recalls less than the
chosen, a second pair rejects that one, so a non-answer loses to the answer where there is one.

Rows have the synthetic pairs' format (TRL conversational prompt/chosen/rejected plus `id`, `source_id`,
`kind="on-policy"`), so they go through `validate_pairs`, the reference cache and `run_dpo` unchanged.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from faithforge.core.errors import UserError
from faithforge.engine.errors import PromptTooLongError
from faithforge.data.pairs import validate_pairs
from faithforge.data.teacher import SYSTEM_PROMPT, prompt_messages

KIND = "on-policy"


@dataclass
class OnPolicyReport:
    """What the builder did: sources seen, samples drawn, pairs built, and why sources or samples were dropped."""

    sources: int = 0
    samples: int = 0
    built: int = 0
    omission_pairs: int = 0
    dropped_sources: Counter = field(default_factory=Counter)
    dropped_samples: Counter = field(default_factory=Counter)
    scores: list[dict[str, Any]] = field(default_factory=list)
    sampler: str = "engine"
    sample_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"sources": self.sources, "samples": self.samples, "built": self.built,
                "omission_pairs": self.omission_pairs,
                "dropped_sources": dict(self.dropped_sources), "dropped_samples": dict(self.dropped_samples),
                "scores": self.scores, "sampler": self.sampler, "sample_seconds": self.sample_seconds}


def _source_of(example: Any) -> tuple[str, str, list[str]]:
    """(source_id, source text, key facts) from a teacher `Example` or a dict with id/source/key_facts."""
    if isinstance(example, dict):
        try:
            source_id, source = example["id"], example["source"]
        except KeyError as exc:
            raise UserError(f"an on-policy source row lacks {exc.args[0]!r}; each needs id and source "
                            "(and key_facts for recall)") from exc
        facts = example.get("key_facts")
        if facts is None and isinstance(example.get("facts"), dict):
            from faithforge.data.teacher import Facts

            facts = Facts(**example["facts"]).key_facts()
        return str(source_id), source, list(facts or [])
    return example.id, example.source, list(example.key_facts)


SCORE_BY = ("verdict", "judge-score")


def score_summary(judge, source: str, summary: str, key_facts: list[str], recall_weight: float,
                  score_by: str = "verdict") -> dict[str, Any]:
    """The judge's verdict (or, with `score_by="judge-score"`, its own support score) and recall folded into one
    number (see the module docstring)."""
    from faithforge.evaluation.metrics import key_fact_recall

    verdict = judge.judge(source, summary)
    recall = key_fact_recall(key_facts, summary)
    if score_by == "judge-score":
        from faithforge.core.judge_registry import JUDGES

        registered = JUDGES.get(verdict.judge) if verdict.judge in JUDGES else None
        if verdict.judgeable and (verdict.score is None or (registered is not None and not registered.graded)):
            raise UserError(f"pairs.score_by is judge-score but the {verdict.judge} judge gives no support score; "
                            "use a graded judge (faithforge.core.judge_registry) or pairs.score_by: verdict")
        support = verdict.score if verdict.score is not None else 0.0
    else:
        support = 0.0 if verdict.hallucinated else 1.0
    score = support + recall_weight * (recall or 0.0)
    return {"judgeable": verdict.judgeable, "hallucinated": verdict.hallucinated, "recall": recall, "score": score,
            "judge_score": verdict.score}


def build_onpolicy_pairs(
    model,
    tokenizer,
    examples: Iterable[Any],
    *,
    k: int = 4,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    max_new_tokens: int = 48,
    margin: float = 0.5,
    recall_weight: float = 1.0,
    score_by: str = "verdict",
    min_chosen_recall: float = 0.0,
    omission_pairs: bool = False,
    faithful_chosen: bool = False,
    judge: Any = "grounding",
    batch_size: int = 32,
    system_prompt: str = SYSTEM_PROMPT,
    sampler: Any = None,
    sampler_note: str = "engine",
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[dict], OnPolicyReport]:
    """Sample `k` summaries per source from `model` (the current policy), judge them, pair best vs worst.

    `judge` is a judge name for `faithforge.evaluation.get_judge` or a judge object. Sampling is seeded:
    the same model, sources and arguments give the same pairs. The model is used in eval mode and put back
    into the mode it was in. `sampler`: something with the engine's `generate_batch` that samples instead (the
    pairs stage passes a `GGUFSampler` when the policy exists as GGUF; `model` is then unused), `sampler_note`
    what the report records about it. `progress(done, total)`: samples drawn so far, after each batch.
    """
    from faithforge.engine import SamplingConfig
    from faithforge.evaluation.judges import resolve_judge

    if k < 2:
        raise UserError(f"on-policy pairs need at least 2 samples per source (k={k})")
    if temperature <= 0:
        raise UserError(f"on-policy sampling needs temperature > 0 (got {temperature}): greedy decoding gives k "
                        "identical summaries")
    sources = [_source_of(e) for e in examples]
    judge = resolve_judge(judge)
    report = OnPolicyReport(sources=len(sources), sampler=sampler_note)
    if not sources:
        return [], report
    sampling = SamplingConfig(temperature=temperature, top_p=top_p, seed=seed, max_new_tokens=max_new_tokens)
    prompts = [source for _, source, _ in sources for _ in range(k)]  # a source's k samples together
    started = time.perf_counter()
    if sampler is not None:
        try:
            results = sampler.generate_batch(prompts, sampling, batch_size=batch_size, progress=progress)
        except PromptTooLongError as exc:
            # "prompt 164 has 30051 tokens …: raise n_ctx" named no document and a setting there is not
            # (an attack, 2026-12-07)
            raise UserError(f"document {sources[exc.index // k][0]} is {exc.prompt_tokens:,} tokens with the prompt; "
                            f"with {max_new_tokens} new tokens it exceeds the model's context of "
                            f"{exc.context_tokens:,}: split it into shorter documents (data.max_document_chars "
                            "refuses long ones before any work)") from None
    else:
        results = _sample(model, tokenizer, prompts, sampling, batch_size, system_prompt, progress)
    report.sample_seconds = round(time.perf_counter() - started, 1)
    report.samples = len(results)

    pairs: list[dict] = []
    seen: set[tuple[str, str, str]] = set()
    rules = ChosenRules(min_chosen_recall, faithful_chosen)
    for index, (source_id, source, key_facts) in enumerate(sources):
        texts = [result.text for result in results[index * k: (index + 1) * k]]
        candidates = _judged_candidates(judge, source, key_facts, texts, recall_weight, report, score_by)
        chosen_rejected = _source_pairs(candidates, margin, rules, omission_pairs, report)
        for position, ((best, best_score), (rejected, rejected_score)) in enumerate(chosen_rejected):
            if (source, best, rejected) in seen:
                report.dropped_sources["duplicate pair"] += 1
                continue
            seen.add((source, best, rejected))
            report.omission_pairs += position > 0
            pairs.append(_pair_row(source_id, source, best, rejected, system_prompt))
            report.scores.append({"id": pairs[-1]["id"], "chosen": best_score, "rejected": rejected_score})
    report.built = len(pairs)
    if pairs:
        validate_pairs(pairs, "on-policy pairs")
    return pairs, report


def _sample(model, tokenizer, prompts: list[str], sampling, batch_size: int, system_prompt: str,
            progress: Callable[[int, int], None] | None = None) -> list:
    """One generation per prompt through the prefix-cached engine, the model in eval mode (then put back)."""
    from faithforge.engine import PrefixCachedEngine

    was_training = model.training
    model.eval()
    try:
        engine = PrefixCachedEngine(model, tokenizer, [{"role": "system", "content": system_prompt}])
        return engine.generate_batch(prompts, sampling, batch_size=batch_size, progress=progress)
    finally:
        model.train(was_training)


def _judged_candidates(judge, source: str, key_facts: list[str], texts: list[str], recall_weight: float,
                       report: OnPolicyReport, score_by: str = "verdict") -> dict[str, dict[str, Any]]:
    """One source's distinct, judgeable summaries and their scores; the report counts the samples dropped."""
    candidates: dict[str, dict[str, Any]] = {}
    for raw in texts:
        text = " ".join(raw.split())
        if not text:
            report.dropped_samples["empty sample"] += 1
            continue
        if text in candidates:
            report.dropped_samples["duplicate sample"] += 1
            continue
        scored = score_summary(judge, source, text, key_facts, recall_weight, score_by)
        if not scored["judgeable"]:
            report.dropped_samples["judge could not decide"] += 1
            continue
        candidates[text] = scored
    return candidates


def _source_pairs(candidates: dict[str, dict[str, Any]], margin: float, rules: "ChosenRules",
                  omission_pairs: bool, report: OnPolicyReport) -> list[tuple[tuple[str, dict], tuple[str, dict]]]:
    """One source's (chosen, rejected) pairs: best vs worst, then best vs the omission rival when asked for."""
    picked = _best_and_worst(candidates, margin, rules, report)
    if picked is None:
        return []
    omission = _omission_rival(candidates, picked, margin) if omission_pairs else None
    return [picked] + ([(picked[0], omission)] if omission else [])


@dataclass(frozen=True)
class ChosenRules:
    """What a sample needs to be `chosen`, beside the best score (see the module docstring)."""

    min_chosen_recall: float = 0.0
    """On a source with key facts, the least share of them the chosen sample states."""
    faithful_chosen: bool = False
    """The chosen sample is one the judge finds nothing unsupported in. Without it, on an answerable question a
    sample that states the answer *and* invents something (\"Quinn painted 5 clocks on Saturday in Oslo.\") still
    outscores a wrong one and is chosen: DPO and the SFT term then raise the invention with the answer."""

    def describe(self) -> str:
        rules = [f"recall below {self.min_chosen_recall:g}", "a question"] + (["flagged"] if self.faithful_chosen else [])
        return ", ".join(rules[:-1]) + ", or " + rules[-1]


def _may_be_chosen(text: str, scored: dict[str, Any], rules: ChosenRules) -> bool:
    """A sample may be `chosen` when it is not a question (an echo of the question answers nothing; SmolLM2
    echoes it), its source has nothing to recall or it recalls at least `min_chosen_recall`, and — under
    `faithful_chosen` — the judge flags nothing in it."""
    if text.rstrip().endswith("?"):
        return False
    if rules.faithful_chosen and scored["hallucinated"]:
        return False
    return scored["recall"] is None or scored["recall"] >= rules.min_chosen_recall


def _omission_rival(candidates: dict[str, dict[str, Any]], picked, margin: float) -> tuple[str, dict] | None:
    """The on-policy omission pair's rejected sample: on a source with key facts, the *faithful* sample that
    recalls least (an evasive non-answer such as "Ivo painted the chairs."), when it is not already the rejected
    one and recalls less than the chosen by at least `margin` of score. The unanswerable sources' pairs prefer
    such non-answers; this pair teaches that on an answerable question they lose to the answer."""
    (best, best_score), (worst, _) = picked
    if best_score["recall"] is None:
        return None
    faithful = [(text, scored) for text, scored in candidates.items()
                if text not in (best, worst) and not scored["hallucinated"]
                and scored["recall"] < best_score["recall"] and best_score["score"] - scored["score"] >= margin]
    return min(faithful, key=lambda item: (item[1]["recall"], item[1]["score"]), default=None)


def _best_and_worst(candidates: dict[str, dict[str, Any]], margin: float, rules: ChosenRules,
                    report: OnPolicyReport) -> tuple[tuple[str, dict[str, Any]], tuple[str, dict[str, Any]]] | None:
    """(best, worst) summaries with their scores, or None (the report says why) when there are fewer than two,
    none may be chosen (`ChosenRules`), or best and worst differ by less than `margin`."""
    if len(candidates) < 2:
        report.dropped_sources["fewer than 2 distinct judged samples"] += 1
        return None
    ranked = sorted(candidates.items(), key=lambda item: item[1]["score"])
    eligible = [item for item in ranked if _may_be_chosen(item[0], item[1], rules)]
    if not eligible:
        report.dropped_sources[f"no sample may be chosen ({rules.describe()})"] += 1
        return None
    worst, best = ranked[0], eligible[-1]
    if best[1]["score"] - worst[1]["score"] < margin:
        report.dropped_sources[f"best and worst score differ by less than the margin {margin}"] += 1
        return None
    return best, worst


def _pair_row(source_id: str, source: str, best: str, worst: str, system_prompt: str) -> dict[str, Any]:
    """One pair in the synthetic pairs' format (TRL conversational prompt/chosen/rejected, id, source_id, kind)."""
    return {
        "id": hashlib.sha256(f"{source_id}:{KIND}:{best}:{worst}".encode()).hexdigest()[:16],
        "source_id": source_id, "kind": KIND,
        "prompt": prompt_messages(source) if system_prompt == SYSTEM_PROMPT else
        [{"role": "system", "content": system_prompt}, {"role": "user", "content": source}],
        "chosen": [{"role": "assistant", "content": best}],
        "rejected": [{"role": "assistant", "content": worst}],
    }
