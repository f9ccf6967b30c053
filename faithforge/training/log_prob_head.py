"""The LM head's per-token log-probabilities of the scored (completion) tokens: the one place that computes them
for DPO, the SFT control and the reference pass.

TRL computes them with `trl.kernels.chunked_logprob.ChunkedLogProbFunction`: the vocabulary in 32,768-word tiles,
online log-sum-exp statistics, and a backward that recomputes each tile, so the tokens × vocabulary logits never
exist at once. On a GPU that is Triton kernels and the memory it saves is the point. On the CPU the tiles are
folded by a dozen torch ops each, every optional output (entropy, mean logit, top-1) is a further pass over the
tile, and the backward multiplies by the head a third time; at a real demo DPO step's 310 completion tokens ×
49,152 words (61 MB of fp32 logits) that took 1.57× the time of one matmul, a `log_softmax` and its backward
(bench/log_prob_head.py, BENCHMARKS.md, issue 28). So on the CPU, in fp32, when the logits are small, they are
built whole; otherwise, and on every other device or under autocast, TRL's kernel runs. Both give the same
numbers to fp32 rounding (log-probs within 2e-5 nats a token, entropy within 4e-5; 1.7e-5 and 3.4e-5 the largest
measured).
"""

from __future__ import annotations

from typing import Any

#: Largest tokens × vocabulary fp32 logits built whole on the CPU, bytes: 1,365 tokens of SmolLM2's 49,152 words,
#: 441 of Qwen's 151,936. At most about five tensors of that size are alive at once (the logits, the log-softmax,
#: and with the entropy DPO logs the probabilities and their product with the log-softmax, then the gradient), so
#: the head's peak stays near 1.25 GiB at the limit: TRL's tiles save that memory, not time, on the CPU.
MATERIALIZE_LIMIT_BYTES = 256 * 2**20


def materializes(hidden, weight) -> bool:
    """Whether `completion_log_probs` builds the logits whole for these inputs: on the CPU, in fp32 without
    autocast (under bf16 autocast TRL's kernel adds the gradient tiles up in fp32, which autograd through a bf16
    matmul would not: 4e-3 apart, measured), and small enough. Shapes: `hidden` (tokens, hidden_size), `weight`
    (vocab_size, hidden_size); the logits would be tokens × vocab_size × 4 bytes."""
    import torch

    return (hidden.device.type == "cpu" and hidden.dtype == torch.float32 and weight.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu")
            and hidden.shape[0] * weight.shape[0] * 4 <= MATERIALIZE_LIMIT_BYTES)


def completion_log_probs(hidden, weight, bias, targets, temperature: float = 1.0, chunk_size: int = 32768,
                         final_logit_softcapping: float | None = None, logit_scale: float = 1.0,
                         outputs: tuple[str, ...] = ("log_probs",)) -> tuple[Any, Any, Any, Any, Any]:
    """Per-token `log p(target)` under `hidden @ weight.T (+ bias)`, with TRL's optional outputs.

    The arguments and results are those of TRL's `ChunkedLogProbFunction.apply`, so the two can stand in for each
    other. Shapes: `hidden` (tokens, hidden_size) float; `weight` (vocab_size, hidden_size); `bias` (vocab_size,)
    or None; `targets` (tokens,) long. Returns `(log_probs, entropy, log_sum_sq_probs, mean_logits, is_top1)`,
    each (tokens,): float32 nats, is_top1 bool; the optional ones None unless named in `outputs`. `log_probs` and
    `entropy` carry gradients to `hidden` (and to `weight`/`bias` where those require them); the other three do not.
    The logits are scaled by `logit_scale`, soft-capped by `final_logit_softcapping` and divided by `temperature`
    before the softmax, as TRL's kernel does.
    """
    if not materializes(hidden, weight):
        from trl.kernels.chunked_logprob import ChunkedLogProbFunction

        return ChunkedLogProbFunction.apply(hidden, weight, bias, targets, temperature, chunk_size,
                                            final_logit_softcapping, logit_scale, outputs)
    return _materialized(hidden, weight, bias, targets, temperature, final_logit_softcapping, logit_scale, outputs)


def _materialized(hidden, weight, bias, targets, temperature, softcap, logit_scale, outputs):
    """The whole-logits path of `completion_log_probs` (fp32 on the CPU, see `materializes`); the same shapes:
    `hidden` (tokens, hidden_size), `weight` (vocab_size, hidden_size), `targets` (tokens,) → five (tokens,) or
    None. Builds (tokens, vocab_size) logits, at most `MATERIALIZE_LIMIT_BYTES`."""
    import torch
    import torch.nn.functional as F

    z = F.linear(hidden, weight, bias)
    if logit_scale != 1.0:
        z = z * logit_scale
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    if temperature != 1.0:
        z = z / temperature
    with torch.no_grad():  # the metrics TRL marks non-differentiable, from z before it is let go
        mean_logits = z.mean(-1) if "mean_logits" in outputs else None
        # torch.argmax returns the first maximum, as TRL's "the target beats every earlier word" rule does
        is_top1 = z.argmax(-1) == targets if "is_top1" in outputs else None
    log_p = torch.log_softmax(z, dim=-1)
    del z  # log_softmax's backward needs only its output
    log_probs = log_p.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(log_p.exp() * log_p).sum(-1) if "entropy" in outputs else None
    with torch.no_grad():
        log_sum_sq = torch.logsumexp(2 * log_p, dim=-1) if "log_sum_sq_probs" in outputs else None
    return log_probs, entropy, log_sum_sq, mean_logits, is_top1


class CompletionLogProbs:
    """`completion_log_probs` behind the `apply` of TRL's autograd function, for where TRL looks the function up
    (`trl.trainer.utils._ChunkedLogProbFunction`, read by its fused LM head at each call)."""

    @staticmethod
    def apply(*args: Any) -> tuple[Any, Any, Any, Any, Any]:
        return completion_log_probs(*args)  # a module global, looked up per call: a spy set on the module is seen
