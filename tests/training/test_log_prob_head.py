"""The LM head's completion log-probs: on the CPU with small logits FaithForge builds them whole; the numbers and
gradients are TRL's chunked kernel's to fp32 rounding, every optional output included."""

from __future__ import annotations

import pytest
import torch
from trl.kernels.chunked_logprob import OPTIONAL_OUTPUTS, ChunkedLogProbFunction

from faithforge.training import log_prob_head
from faithforge.training.log_prob_head import completion_log_probs, materializes

ALL = ("log_probs", *OPTIONAL_OUTPUTS)


def _inputs(tokens=37, hidden=24, vocab=301, bias=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(tokens, hidden, generator=g)
    w = torch.randn(vocab, hidden, generator=g) * 0.3
    b = torch.randn(vocab, generator=g) if bias else None
    t = torch.randint(0, vocab, (tokens,), generator=g)
    return h, w, b, t


def _run(function, h, w, b, t, chunk, softcap, scale, temperature, outputs, weight_grad=False):
    h = h.clone().requires_grad_(True)
    w = w.clone().requires_grad_(weight_grad)
    b = None if b is None else b.clone().requires_grad_(weight_grad)
    out = function(h, w, b, t, temperature, chunk, softcap, scale, outputs)
    loss = (out[0] * torch.linspace(0.5, 1.5, len(t))).sum()
    if out[1] is not None:
        loss = loss + 0.3 * out[1].sum()
    loss.backward()
    return out, h.grad, (w.grad if weight_grad else None), (b.grad if b is not None and weight_grad else None)


@pytest.mark.parametrize("softcap,scale,temperature,bias", [(None, 1.0, 1.0, False), (30.0, 0.5, 0.7, True)])
def test_the_whole_logits_give_trls_numbers_and_gradients(softcap, scale, temperature, bias):
    h, w, b, t = _inputs(bias=bias)
    assert materializes(h, w)
    ours, grad_h, grad_w, grad_b = _run(completion_log_probs, h, w, b, t, 64, softcap, scale, temperature, ALL, True)
    trl, trl_h, trl_w, trl_b = _run(ChunkedLogProbFunction.apply, h, w, b, t, 64, softcap, scale, temperature, ALL,
                                    True)
    for name, a, c in zip(ALL, ours, trl):
        if name == "is_top1":
            assert torch.equal(a, c)
        else:
            assert torch.allclose(a, c, atol=2e-5, rtol=1e-5), name
    assert torch.allclose(grad_h, trl_h, atol=2e-5) and torch.allclose(grad_w, trl_w, atol=2e-5)
    if bias:
        assert torch.allclose(grad_b, trl_b, atol=2e-5)
    assert ours[0].dtype == torch.float32 and ours[0].shape == (len(t),)


def test_only_the_outputs_asked_for_are_computed_and_the_metrics_carry_no_gradient():
    h, w, b, t = _inputs()
    log_probs, entropy, log_sum_sq, mean_logits, is_top1 = completion_log_probs(
        h.requires_grad_(True), w, b, t, 1.0, 64, None, 1.0, ("log_probs",))
    assert log_probs.requires_grad and entropy is None and log_sum_sq is None and mean_logits is None and is_top1 is None
    out = completion_log_probs(h, w, b, t, 1.0, 64, None, 1.0, ALL)
    assert out[1].requires_grad and not any(x.requires_grad for x in out[2:])


def test_a_tie_for_the_top_word_counts_only_for_the_first_as_trls_kernel_does():
    h, w, b, _ = _inputs(tokens=2, vocab=8)
    w[5] = w[2]  # words 2 and 5 always share a logit
    h[:] = w[2] * 3  # and both lead
    t = torch.tensor([2, 5])
    ours = completion_log_probs(h, w, b, t, 1.0, 4, None, 1.0, ALL)[4]
    trl = ChunkedLogProbFunction.apply(h, w, b, t, 1.0, 4, None, 1.0, ALL)[4]
    assert ours.tolist() == trl.tolist() == [True, False]


def test_logits_above_the_limit_go_through_trls_kernel(monkeypatch):
    h, w, b, t = _inputs()
    monkeypatch.setattr(log_prob_head, "MATERIALIZE_LIMIT_BYTES", h.shape[0] * w.shape[0] * 4 - 1)
    assert not materializes(h, w)
    called = []
    real = ChunkedLogProbFunction.apply

    def spy(*args):
        called.append(args[0].shape[0])
        return real(*args)

    monkeypatch.setattr(ChunkedLogProbFunction, "apply", spy)
    completion_log_probs(h, w, b, t, 1.0, 64, None, 1.0, ("log_probs",))
    assert called == [h.shape[0]]


def test_autocast_and_non_fp32_inputs_go_through_trls_kernel():
    """Under bf16 autocast TRL adds the gradient tiles up in fp32; autograd through a bf16 matmul would not."""
    h, w, _, _ = _inputs()
    assert materializes(h, w)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not materializes(h, w)
    assert not materializes(h.bfloat16(), w.bfloat16())


def test_a_batch_without_a_scored_token_still_trains_through_the_callers_scatter():
    """TRL's fused head passes an empty hidden matrix when no label is valid and scatters the result back."""
    h, w, b, _ = _inputs()
    policy_hidden = h[:3].clone().requires_grad_(True)
    mask = torch.zeros(3, dtype=torch.bool)
    out = completion_log_probs(policy_hidden[mask], w, b, torch.zeros(0, dtype=torch.long), 1.0, 64, None, 1.0, ALL)
    assert out[0].shape == (0,)
    per_row = out[0].new_zeros(mask.shape).masked_scatter(mask, out[0])
    per_row.sum().backward()
    assert torch.equal(policy_hidden.grad, torch.zeros_like(policy_hidden))


def test_trls_head_function_is_faithforges_only_inside_score_completions_only():
    import trl.trainer.utils as trl_utils

    from faithforge.training.log_prob_head import CompletionLogProbs
    from faithforge.training.modeling import score_completions_only

    before = trl_utils._ChunkedLogProbFunction
    with score_completions_only():
        assert trl_utils._ChunkedLogProbFunction is CompletionLogProbs
    assert trl_utils._ChunkedLogProbFunction is before
    with pytest.raises(RuntimeError), score_completions_only():
        raise RuntimeError("a step that fails")
    assert trl_utils._ChunkedLogProbFunction is before
