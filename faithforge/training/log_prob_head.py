"""The LM head's per-token log-probabilities of the scored (completion) tokens: the one place that computes them
for DPO, the SFT control and the reference pass.

TRL computes them with `trl.kernels.chunked_logprob.ChunkedLogProbFunction`: the vocabulary in 32,768-word tiles,
online log-sum-exp statistics, and a backward that recomputes each tile, so the tokens × vocabulary logits never
exist at once. On a GPU that is Triton kernels and the memory it saves is the point. On the CPU the tiles are
folded by a dozen torch ops each, every optional output (entropy, mean logit, top-1) is a further pass over the
tile, and the backward multiplies by the head a third time; for the real demo's DPO step (~260 completion
tokens × 49,152 words, 51 MB of fp32 logits) that took 2.2× the time of one matmul, a `log_softmax` and its
backward (bench/log_prob_head.py, BENCHMARKS.md, issue 28). So on the CPU, when the logits are small, they are
built whole; otherwise, and on every other device, TRL's kernel runs. Both give the same numbers to fp32
rounding (within 2e-5 nats a token; 1.7e-5 the largest measured).
"""

from __future__ import annotations

from typing import Any

#: Largest tokens × vocabulary fp32 logits built whole on the CPU, bytes. The materialized path keeps about three
#: such tensors alive through backward (the logits, the log-softmax and its gradient), so 256 MiB bounds the extra
#: memory near 0.75 GiB: 1,365 tokens of SmolLM2's 49,152 words, 436 of Qwen's 151,936.
MATERIALIZE_LIMIT_BYTES = 256 * 2**20
#: The optional per-token outputs TRL's kernel knows, in its order.
OPTIONAL_OUTPUTS = ("entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


def materializes(hidden, weight) -> bool:
    """Whether `completion_log_probs` builds the logits whole for these inputs (CPU, small enough)."""
    return hidden.device.type == "cpu" and hidden.shape[0] * weight.shape[0] * 4 <= MATERIALIZE_LIMIT_BYTES


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
    import torch
    import torch.nn.functional as F

    compute_dtype = (torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else hidden.dtype)
    with torch.autocast("cpu", enabled=False):
        logits = F.linear(hidden.to(compute_dtype), weight.to(compute_dtype),
                          None if bias is None else bias.to(compute_dtype)).float()
        z = logits * logit_scale
        if softcap is not None:
            z = softcap * torch.tanh(z / softcap)
        z = z / temperature
        log_p = torch.log_softmax(z, dim=-1)
        log_probs = log_p.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        entropy = -(log_p.exp() * log_p).sum(-1) if "entropy" in outputs else None
        with torch.no_grad():
            log_sum_sq = torch.logsumexp(2 * log_p, dim=-1) if "log_sum_sq_probs" in outputs else None
            mean_logits = z.mean(-1) if "mean_logits" in outputs else None
            # torch.argmax returns the first maximum, as TRL's "the target beats every earlier word" rule does
            is_top1 = z.argmax(-1) == targets if "is_top1" in outputs else None
    return log_probs, entropy, log_sum_sq, mean_logits, is_top1


class CompletionLogProbs:
    """`completion_log_probs` behind the `apply` of TRL's autograd function, for where TRL looks the function up
    (`trl.trainer.utils._ChunkedLogProbFunction`, read by its fused LM head at each call)."""

    @staticmethod
    def apply(*args: Any) -> tuple[Any, Any, Any, Any, Any]:
        import faithforge.training.log_prob_head as head  # looked up per call: tests spy on the module's function

        return head.completion_log_probs(*args)

