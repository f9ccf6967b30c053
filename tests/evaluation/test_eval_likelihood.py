"""The likelihood judge: its token log-probabilities are the model's own (checked against a plain forward pass),
batching and windows change nothing they should not, scores are cached by content, and the fitted logistic
combination decides as fitted."""

from __future__ import annotations

import json

import pytest
import torch

from faithforge.core.errors import UserError
from faithforge.evaluation.fitted import FittedCombination, best_balanced_threshold, fit_combination, verdict_features
from faithforge.evaluation.likelihood import WITH_SOURCE, WITHOUT_SOURCE, LikelihoodJudge, LikelihoodScorer

SOURCE = ("The old king walked to the river on monday. The queen read a book in the city. "
          "A small dog ran to the house at night. The red bird sang in the tree.")
SUMMARY = "The king walked to the river. The dog ran to the city on friday."


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval(),
            AutoTokenizer.from_pretrained(tiny_model_dir))


def plain_logprobs(model, tokenizer, pieces: list[str], summary: str) -> list[float]:
    """log p(summary token | context, summary so far) from one unpadded forward over the whole sequence, the
    context being the pieces' ids one after another (as the scorer builds it)."""
    ctx = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    for piece in pieces:
        ctx += tokenizer(piece, add_special_tokens=False)["input_ids"]
    summ = tokenizer(summary, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        logits = model(torch.tensor([ctx + summ])).logits[0]
    logp = torch.log_softmax(logits.float(), -1)
    return [logp[len(ctx) + j - 1, t].item() for j, t in enumerate(summ)]


def test_token_scores_equal_a_plain_forward_pass(loaded):
    model, tokenizer = loaded
    scorer = LikelihoodScorer(model=model, tokenizer=tokenizer, device="cpu", batch_size=2)
    scores = scorer.score(SOURCE, SUMMARY)
    head, tail = WITH_SOURCE.split("{source}")
    cond = plain_logprobs(model, tokenizer, [head, SOURCE, tail], SUMMARY)
    prior = plain_logprobs(model, tokenizer, [WITHOUT_SOURCE], SUMMARY)
    assert [t.cond for t in scores.tokens] == pytest.approx(cond, abs=1e-4)
    assert [t.cond - t.pmi for t in scores.tokens] == pytest.approx(prior, abs=1e-4)
    assert scores.windows == 1 and len(scores.sentences) == 2
    assert scores.sentences[1].cond == pytest.approx(
        sum(t.cond for t in scores.tokens if t.start >= scores.sentences[1].start) /
        sum(1 for t in scores.tokens if t.start >= scores.sentences[1].start), abs=1e-9)


def test_batching_and_padding_do_not_change_scores(loaded):
    model, tokenizer = loaded
    one = LikelihoodScorer(model=model, tokenizer=tokenizer, device="cpu", batch_size=1, max_source_tokens=24,
                           window_overlap_tokens=4).score(SOURCE, SUMMARY)
    many = LikelihoodScorer(model=model, tokenizer=tokenizer, device="cpu", batch_size=5, max_source_tokens=24,
                            window_overlap_tokens=4).score(SOURCE, SUMMARY)
    assert one.windows > 1  # the source is longer than one window: several left-padded rows of different lengths
    assert [t.cond for t in one.tokens] == pytest.approx([t.cond for t in many.tokens], abs=1e-5)
    assert [t.pmi for t in one.tokens] == pytest.approx([t.pmi for t in many.tokens], abs=1e-5)


def test_each_sentence_keeps_its_best_window(loaded):
    model, tokenizer = loaded
    scorer = LikelihoodScorer(model=model, tokenizer=tokenizer, device="cpu", max_source_tokens=20,
                              window_overlap_tokens=4)
    scores = scorer.score(SOURCE, SUMMARY)
    windows = scorer._windows(SOURCE)
    for sentence in scores.sentences:
        per_window = []
        for w in windows:
            head, tail = WITH_SOURCE.split("{source}")
            bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
            ctx = bos + tokenizer(head, add_special_tokens=False)["input_ids"] + w + \
                tokenizer(tail, add_special_tokens=False)["input_ids"]
            rows = scorer._summary_logprobs([ctx], tokenizer(SUMMARY, add_special_tokens=False)["input_ids"])[0]
            members = [j for j, t in enumerate(scores.tokens) if sentence.start <= t.start < sentence.end]
            per_window.append(sum(rows[j] for j in members) / len(members))
        assert sentence.cond == pytest.approx(max(per_window), abs=1e-5)
        assert sentence.window == max(range(len(per_window)), key=per_window.__getitem__)


def test_scores_are_cached_by_content_and_a_cut_line_is_recomputed(loaded, tmp_path, monkeypatch):
    model, tokenizer = loaded
    first = LikelihoodScorer(model=model, tokenizer=tokenizer, device="cpu", cache_dir=tmp_path)
    scores = first.score(SOURCE, SUMMARY)
    other = first.score(SOURCE, "The queen read a book.")
    cache_file = next(tmp_path.glob("likelihood-*.jsonl"))
    lines = cache_file.read_text().splitlines()
    assert len(lines) == 2
    cache_file.write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])  # a kill cut the second line

    second = LikelihoodScorer(model=model, tokenizer=tokenizer, device="cpu", cache_dir=tmp_path)
    calls = []
    real = second._score_one
    monkeypatch.setattr(second, "_score_one", lambda s, m: calls.append(m) or real(s, m))
    assert second.score(SOURCE, SUMMARY) == scores  # read back, not recomputed
    assert calls == []
    assert second.score(SOURCE, "The queen read a book.") == other  # the cut line was not trusted
    assert calls == ["The queen read a book."]


def test_the_judge_flags_sentences_below_its_threshold(loaded):
    model, tokenizer = loaded
    scorer = LikelihoodScorer(model=model, tokenizer=tokenizer, device="cpu")
    scores = scorer.score(SOURCE, SUMMARY)
    conds = sorted(s.cond for s in scores.sentences)
    between = (conds[0] + conds[1]) / 2
    verdict = LikelihoodJudge(scorer, feature="cond", threshold=between).judge(SOURCE, SUMMARY)
    assert verdict.hallucinated and verdict.unsupported_sentences == 1
    weakest = min(scores.sentences, key=lambda s: s.cond)
    assert all(weakest.start <= f.span[0] < f.span[1] <= weakest.end for f in verdict.flags)
    assert verdict.score == pytest.approx(conds[0])
    assert set(verdict.features) >= {"cond", "pmi", "min_sentence_cond", "min_sentence_pmi"}
    assert not LikelihoodJudge(scorer, threshold=conds[0] - 1).judge(SOURCE, SUMMARY).hallucinated
    with pytest.raises(UserError, match="feature"):
        LikelihoodJudge(scorer, feature="entropy")


def test_best_balanced_threshold_separates_and_never_sits_on_a_score():
    cut = best_balanced_threshold([0.1, 0.2, 0.8, 0.9], [False, False, True, True])
    assert 0.2 < cut < 0.8
    assert best_balanced_threshold([1, 2, 3], [True, False, True]) not in (1, 2, 3)


def test_a_fitted_combination_learns_the_informative_feature_and_round_trips(tmp_path):
    import random

    rng = random.Random(0)
    rows, labels = [], []
    for _ in range(200):
        bad = rng.random() < 0.5
        rows.append({"a.signal": (1.5 if bad else -1.5) + rng.gauss(0, 1), "a.noise": rng.gauss(0, 1)})
        labels.append(bad)
    combo = fit_combination(rows, labels, ["a.signal", "a.noise"], fitted_on={"labels": "synthetic"})
    assert combo.weights[0] > 1.0 and abs(combo.weights[1]) < 0.5
    accuracy = sum((combo.probability(r) >= combo.threshold) == y for r, y in zip(rows, labels)) / len(rows)
    assert accuracy > 0.85
    loaded = FittedCombination.load(combo.save(tmp_path / "combo.json"))
    assert loaded == combo and loaded.fitted_on["labels"] == "synthetic" and loaded.judges == ["a"]
    with pytest.raises(UserError, match="a.signal"):
        combo.probability({"a.noise": 0.0})
    (tmp_path / "bad.json").write_text(json.dumps({"features": ["x"]}))
    with pytest.raises(UserError, match="unreadable"):
        FittedCombination.load(tmp_path / "bad.json")
    with pytest.raises(UserError, match="both"):
        fit_combination(rows[:10], [True] * 10, ["a.signal"])


def test_the_logistic_rule_decides_a_judge_list_from_its_judges_numbers():
    from faithforge.evaluation.judges import build_judges

    source = "Alice sold 3 hats in Paris on Monday."
    good, bad = "Alice sold 3 hats in Paris.", "Bob sold 4 hats in Rome on Friday."
    grounding_only = build_judges(["grounding", "grounded-qa"])
    features = [verdict_features(grounding_only.judge(source, s)) for s in (good, bad, good, bad)]
    combo = fit_combination(features, [False, True, False, True], ["grounding.novel_share", "grounding.flags"])
    judge = build_judges(["grounding", "grounded-qa"], rule="logistic", combination=combo)
    assert judge.name.endswith("~logistic")
    assert judge.judge(source, bad).hallucinated and not judge.judge(source, good).hallucinated
    assert not judge.judge(source, good).flags
    everything = build_judges(["grounding", "grounded-qa"], rule="all")
    assert everything.judge(source, bad).hallucinated == all(p.hallucinated for p in everything.judge(source, bad).parts)
    with pytest.raises(UserError, match="fitted on"):  # the fit read grounding's numbers; this list lacks it
        build_judges(["grounded-qa"], rule="logistic", combination=combo)


def test_config_accepts_the_likelihood_judge_and_checks_its_options_before_work(tmp_path, tiny_model_dir):
    from faithforge.core.config import EvaluateConfig
    from faithforge.evaluation.judge_options import judge_options

    cfg = EvaluateConfig(judge="likelihood")
    options = judge_options(cfg, base_model=str(tiny_model_dir))
    assert options["model_path"] == str(tiny_model_dir) and options["feature"] == "cond"
    with pytest.raises(UserError, match="likelihood_model"):
        judge_options(EvaluateConfig(judge="likelihood", likelihood_model=str(tmp_path)))
    with pytest.raises(UserError, match="judge_combination is empty"):
        judge_options(EvaluateConfig(judge=["grounding", "likelihood"], judge_rule="logistic"),
                      base_model=str(tiny_model_dir))
    combo = fit_combination([{"grounding.flags": 0.0}, {"grounding.flags": 1.0}] * 2, [False, True] * 2,
                            ["grounding.flags"]).save(tmp_path / "c.json")
    options = judge_options(EvaluateConfig(judge=["grounding", "likelihood"], judge_rule="logistic",
                                           judge_combination=str(combo)), base_model=str(tiny_model_dir))
    assert options["rule"] == "logistic" and options["combination"].features == ("grounding.flags",)


def test_eval_fit_combination_fits_on_validation_and_reports_held_out(tmp_path):
    from typer.testing import CliRunner

    from faithforge.app.cli_eval import app
    from faithforge.evaluation.calibration import make_calibration_set

    labels = make_calibration_set(tmp_path / "labels.jsonl", n=40, seed=0)
    out = tmp_path / "combo.json"
    result = CliRunner().invoke(app, ["fit-combination", "--labels", str(labels), "--judge", "grounding",
                                      "--judge", "grounded-qa", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "held-out labels" in result.output
    combo = FittedCombination.load(out)
    assert set(combo.judges) <= {"grounding", "grounded-qa"} and combo.fitted_on["held_out"]["n"] > 0
    # An earlier fit is replaced only when asked: a config naming it would silently mean another fit.
    before = out.read_bytes()
    again = CliRunner().invoke(app, ["fit-combination", "--labels", str(labels), "--judge", "grounding",
                                     "--out", str(out)])
    assert isinstance(again.exception, UserError) and "--replace" in str(again.exception)
    assert out.read_bytes() == before
    replaced = CliRunner().invoke(app, ["fit-combination", "--labels", str(labels), "--judge", "grounding",
                                        "--out", str(out), "--replace"])
    assert replaced.exit_code == 0 and "replacing the earlier fit" in replaced.output, replaced.output
    assert list(FittedCombination.load(out).judges) == ["grounding"]
    missing = CliRunner().invoke(app, ["fit-combination", "--labels", str(labels), "--judge", "likelihood",
                                       "--out", str(tmp_path / "other.json")])
    assert isinstance(missing.exception, UserError) and "likelihood" in str(missing.exception)
    assert not (tmp_path / "other.json").exists()


def test_the_pairs_stage_can_choose_with_the_likelihood_judge_on_the_sampled_policy(tiny_model_dir):
    from faithforge.core.config import PipelineConfig
    from faithforge.evaluation.likelihood import LikelihoodJudge
    from faithforge.stages.pairs import _pairs_judge

    config = PipelineConfig.model_validate({"pairs": {"builder": "on-policy", "judge": "likelihood"},
                                            "evaluate": {"judge": "grounding", "likelihood_feature": "pmi"}})
    judge = _pairs_judge(config, str(tiny_model_dir))
    assert isinstance(judge, LikelihoodJudge) and judge.feature == "pmi"
    assert judge.scorer.model_path == str(tiny_model_dir)
    with pytest.raises(UserError, match="causal LM"):
        _pairs_judge(config, None)


def test_a_calibration_of_the_likelihood_judge_belongs_to_its_model(tiny_model_dir, tmp_path):
    """A review (2026-12-07): every model's likelihood judge had one identity (`likelihood-rules`), so a threshold
    calibrated on one model was shown in the report of another."""
    import shutil

    from faithforge.core.config import EvaluateConfig
    from faithforge.evaluation import get_judge
    from faithforge.evaluation.heldout import judge_checkpoint
    from faithforge.evaluation.judge_options import judge_options

    other = shutil.copytree(tiny_model_dir, tmp_path / "other-model")
    cfg = EvaluateConfig(judge="likelihood")
    first, second = (judge_checkpoint(get_judge("likelihood", **judge_options(cfg, base_model=str(m))))
                     for m in (tiny_model_dir, other))
    assert first != second and "other-model" in second
    assert first == judge_checkpoint(get_judge("likelihood", **judge_options(cfg, base_model=str(tiny_model_dir))))
    pmi = EvaluateConfig(judge="likelihood", likelihood_feature="pmi")
    assert judge_checkpoint(get_judge("likelihood", **judge_options(pmi, base_model=str(tiny_model_dir)))) != first


def test_bfloat16_scoring_stays_close_to_float32_and_keeps_its_own_cache(tiny_model_dir, tmp_path):
    exact = LikelihoodScorer(tiny_model_dir, dtype="float32", cache_dir=tmp_path)
    fast = LikelihoodScorer(tiny_model_dir, dtype="bfloat16", cache_dir=tmp_path)
    a, b = exact.score(SOURCE, SUMMARY), fast.score(SOURCE, SUMMARY)
    assert exact._model.dtype == torch.float32 and fast._model.dtype == torch.bfloat16
    assert [s.cond for s in b.sentences] == pytest.approx([s.cond for s in a.sentences], abs=0.1)
    assert [s.cond for s in b.sentences] != [s.cond for s in a.sentences]  # really scored in bfloat16
    # one cache file each: a bfloat16 score is never read back as a float32 one
    assert exact.fingerprint != fast.fingerprint and len(list(tmp_path.glob("likelihood-*.jsonl"))) == 2


def test_auto_dtype_is_bfloat16_only_where_the_cpu_has_it(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert LikelihoodScorer(tiny_model_dir).dtype == "float32"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert LikelihoodScorer(tiny_model_dir).dtype == "bfloat16"
    assert LikelihoodScorer(tiny_model_dir, device="cuda").dtype == "bfloat16"
    assert LikelihoodScorer(tiny_model_dir, dtype="float32").dtype == "float32"
    # A GPU loads bfloat16 whatever was asked, and the key says so: a float32 CPU run never reads its scores
    # (a review found `float32` on a GPU written under the float32 key).
    on_gpu = LikelihoodScorer(tiny_model_dir, dtype="float32", device="cuda")
    assert on_gpu.dtype == "bfloat16"
    assert on_gpu.fingerprint != LikelihoodScorer(tiny_model_dir, dtype="float32").fingerprint
    with pytest.raises(UserError, match="likelihood dtype 'half': choose one of auto, float32, bfloat16"):
        LikelihoodScorer(tiny_model_dir, dtype="half")


def test_the_short_no_source_row_is_never_padded_to_a_window(loaded):
    """The no-source row (a few tokens) batched with a source window was padded to the window's width and cost as
    much as it; rows now batch only with rows of similar length, and the scores do not change."""
    from faithforge.evaluation.likelihood import _length_batches

    assert _length_batches([600, 8, 600, 590, 7], 4) == [[0, 2, 3], [1, 4]]
    assert _length_batches([600, 600, 600], 2) == [[0, 1], [2]]
    model, tokenizer = loaded
    widths: list[tuple[int, list[int]]] = []
    real = model.forward

    def recording(*args, **kwargs):
        mask = kwargs["attention_mask"]
        widths.append((mask.shape[1], mask.sum(-1).tolist()))
        return real(*args, **kwargs)

    source = " ".join([SOURCE] * 3)
    batched = LikelihoodScorer(model=model, tokenizer=tokenizer, device="cpu", batch_size=8)
    model.forward = recording
    try:
        scores = batched.score(source, SUMMARY)
    finally:
        del model.forward
    # one source window and the no-source row: two forward passes of one row each, not one padded pair
    assert [len(lengths) for _, lengths in widths] == [1, 1]
    assert widths[1][0] == widths[1][1][0] < widths[0][0] // 2  # the short row runs at its own width
    one = LikelihoodScorer(model=model, tokenizer=tokenizer, device="cpu", batch_size=1).score(source, SUMMARY)
    assert [t.pmi for t in scores.tokens] == pytest.approx([t.pmi for t in one.tokens], abs=1e-5)
