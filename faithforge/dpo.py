"""DPO training with TRL's `DPOTrainer`, fed from the reference log-prob cache.

With `precompute_ref_log_probs=True`, TRL asks `_precompute_ref_logps` for the reference numbers once,
in `__init__`; its loss then reads them from each batch and never runs a reference forward. We take
control of exactly that step: the numbers come from our cache (computed earlier, possibly on another
machine), matched by pair id and checked against TRL's own tokenization. The policy is the only model in
memory; with LoRA the reference is the same base weights, so there is no second copy.

Guards for the silent bugs users report (trl#1962 and the like): at step 0 the policy equals the reference,
so the loss must be ln 2 and the reward margin 0 — otherwise the cached numbers do not belong to this model
and the run stops. A loss stuck at ln 2 after warm-up is flagged.
"""

from __future__ import annotations

import math
from typing import Any

from faithforge.errors import UserError

LN2 = math.log(2.0)


class ReferenceMismatchError(UserError):
    """The cached reference log-probs do not belong to this model, tokenizer or data."""


def expected_completion_tokens(prompt_len: int, completion_len: int, max_length: int | None, mode: str) -> int:
    """Completion tokens left after TRL's collator cuts prompt+completion to `max_length`."""
    total = prompt_len + completion_len
    if max_length is None or total <= max_length:
        return completion_len
    if mode == "keep_start":
        return max(0, max_length - prompt_len)
    return min(completion_len, max_length)


def make_trainer_class():
    """Build the trainer subclass lazily so importing this module does not import TRL (slow)."""
    from trl import DPOTrainer

    class CachedReferenceDPOTrainer(DPOTrainer):
        """`DPOTrainer` whose reference log-probs come from a `ReferenceCache`, never from a forward pass."""

        def __init__(self, *args: Any, reference_logps: dict[str, tuple[float, float, int, int]], **kwargs: Any):
            self._cached_reference = reference_logps
            super().__init__(*args, **kwargs)

        def _precompute_ref_logps(self, dataset, name, batch_size):  # noqa: ARG002 - TRL's signature
            if "id" not in dataset.column_names:
                raise ReferenceMismatchError(f"the {name} pairs have no 'id' column; rebuild them with the pairs stage")
            ids = dataset["id"]
            missing = [i for i in ids if i not in self._cached_reference]
            if missing:
                raise ReferenceMismatchError(
                    f"the reference cache has no entry for {len(missing)} {name} pair(s) (e.g. {missing[0]}): it was "
                    "built for other pairs; run the reference stage for these pairs")
            mode, max_length = self.args.truncation_mode, self.args.max_length
            for row, pair_id in enumerate(ids):
                _, _, chosen_tokens, rejected_tokens = self._cached_reference[pair_id]
                prompt_len = len(dataset[row]["prompt_ids"])
                want = (expected_completion_tokens(prompt_len, len(dataset[row]["chosen_ids"]), max_length, mode),
                        expected_completion_tokens(prompt_len, len(dataset[row]["rejected_ids"]), max_length, mode))
                if want != (chosen_tokens, rejected_tokens):
                    raise ReferenceMismatchError(
                        f"pair {pair_id}: the cache scored {chosen_tokens}/{rejected_tokens} completion tokens but "
                        f"training tokenizes {want[0]}/{want[1]}: the cache was built with another tokenizer, chat "
                        "template or max length; rerun the reference stage")
            chosen = [float(self._cached_reference[i][0]) for i in ids]
            rejected = [float(self._cached_reference[i][1]) for i in ids]
            return dataset.add_column("ref_chosen_logps", chosen).add_column("ref_rejected_logps", rejected)

    return CachedReferenceDPOTrainer


def make_guard_callback(tolerance: float, stuck_after_steps: int, stuck_tolerance: float = 1e-4,
                        pure_dpo: bool = True):
    """A `TrainerCallback` that checks the step-0 identity and flags a loss stuck at ln 2.

    At step 0 both implicit rewards are 0 whatever the loss; the loss itself equals ln 2 only for the pure
    sigmoid DPO loss (an added NLL term shifts it), so `pure_dpo=False` checks the rewards alone.
    """
    from transformers import TrainerCallback

    class ReferenceGuard(TrainerCallback):
        def __init__(self) -> None:
            self.losses: list[float] = []
            self.checked_start = False
            self.stuck = False

        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ARG002
            # A resumed run does not start at the reference; only a fresh run can be checked.
            self.checked_start = state.global_step > 0

        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ARG002
            if not logs or "loss" not in logs:
                return
            loss = float(logs["loss"])
            self.losses.append(loss)
            if not self.checked_start:
                self.checked_start = True
                margin = float(logs.get("rewards/margins", 0.0))
                rewards = max(abs(float(logs.get("rewards/chosen", 0.0))), abs(float(logs.get("rewards/rejected", 0.0))))
                if (pure_dpo and abs(loss - LN2) > tolerance) or abs(margin) > tolerance or rewards > tolerance:
                    raise ReferenceMismatchError(
                        f"DPO step-0 check failed: loss {loss:.6f} (expected ln 2 = {LN2:.6f}) and reward margin "
                        f"{margin:.6f} (expected 0) — the reference log-probs do not match this policy's starting "
                        "weights. Rebuild the reference cache for this model (faithforge demo --fresh)")
            if pure_dpo and len(self.losses) >= stuck_after_steps and not self.stuck:
                if all(abs(x - LN2) < stuck_tolerance for x in self.losses):
                    self.stuck = True

    return ReferenceGuard()


def run_dpo(
    model,
    tokenizer,
    train_pairs: list[dict],
    reference_logps: dict[str, tuple[float, float, int, int]],
    *,
    output_dir: str,
    steps: int,
    micro_batch: int,
    grad_accum: int,
    learning_rate: float,
    beta: float,
    max_length: int | None,
    seed: int,
    checkpoint_every: int,
    gradient_checkpointing: bool = False,
    optimizer: str = "adamw_torch",
    bf16: bool = False,
    guard_tolerance: float = 1e-3,
    sft_weight: float = 0.0,
    extra_callbacks: list | None = None,
) -> dict[str, Any]:
    """Train LoRA adapters already attached to `model` (a peft model) with cached reference log-probs.

    Resumes from the newest checkpoint in `output_dir` if there is one. Returns the step log and flags.
    `sft_weight` > 0 adds an NLL term on the chosen completions (TRL's `loss_type=["sigmoid", "sft"]`, the
    RPO objective), which keeps DPO from lowering the likelihood of the faithful summary itself.
    """
    from datasets import Dataset

    args = dpo_config(
        output_dir=output_dir, steps=steps, micro_batch=micro_batch, grad_accum=grad_accum,
        learning_rate=learning_rate, beta=beta, max_length=max_length, seed=seed, checkpoint_every=checkpoint_every,
        gradient_checkpointing=gradient_checkpointing, optimizer=optimizer, bf16=bf16, sft_weight=sft_weight,
    )
    columns = ["id", "prompt", "chosen", "rejected"]
    dataset = Dataset.from_list([{k: p[k] for k in columns} for p in train_pairs])
    guard = make_guard_callback(guard_tolerance, stuck_after_steps=max(10, steps // 5), pure_dpo=sft_weight == 0)
    trainer_cls = make_trainer_class()
    trainer = trainer_cls(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
        reference_logps=reference_logps, callbacks=[guard, *(extra_callbacks or [])],
    )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # metrics go to our log and artifacts, not raw dicts on stdout
    last = last_complete_checkpoint(output_dir)
    padding_side = tokenizer.padding_side
    try:
        trainer.train(resume_from_checkpoint=last)
    finally:
        tokenizer.padding_side = padding_side  # TRL pads on the right; generation afterwards needs our side
    history = [h for h in trainer.state.log_history if "loss" in h]
    return {
        "steps": trainer.state.global_step,
        "resumed_from": last,
        "history": [{"step": h["step"], "loss": h["loss"], "margin": h.get("rewards/margins"),
                     "accuracy": h.get("rewards/accuracies")} for h in history],
        "stuck_at_ln2": guard.stuck,
        "trainer": trainer,
    }


def dpo_config(
    *,
    output_dir: str,
    steps: int,
    micro_batch: int,
    grad_accum: int,
    learning_rate: float,
    beta: float,
    max_length: int | None,
    seed: int,
    checkpoint_every: int,
    gradient_checkpointing: bool = False,
    optimizer: str = "adamw_torch",
    bf16: bool = False,
    sft_weight: float = 0.0,
    precompute_ref_log_probs: bool = True,
):
    """The `DPOConfig` FaithForge trains with (constant learning rate, a log line and a loss every step).

    `precompute_ref_log_probs=False` gives the same settings with TRL computing the reference live, which is
    what the equivalence test and the benchmark compare against.
    """
    from trl import DPOConfig

    return DPOConfig(
        output_dir=output_dir,
        max_steps=steps,
        per_device_train_batch_size=micro_batch,
        gradient_accumulation_steps=grad_accum,
        learning_rate=learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0,
        beta=beta,
        loss_type=["sigmoid", "sft"] if sft_weight > 0 else ["sigmoid"],
        loss_weights=[1.0, sft_weight] if sft_weight > 0 else None,
        max_length=max_length,
        truncation_mode="keep_start",
        precompute_ref_log_probs=precompute_ref_log_probs,
        logging_steps=1,
        save_strategy="steps",
        save_steps=checkpoint_every,
        save_total_limit=2,
        report_to="none",
        seed=seed,
        data_seed=seed,
        bf16=bf16,
        gradient_checkpointing=gradient_checkpointing,
        optim=optimizer,
        disable_tqdm=True,
        dataloader_num_workers=0,
        use_cpu=not bf16 and not _cuda_available(),
    )


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest `checkpoint-N` in `output_dir` that was written to the end, or None.

    transformers' `get_last_checkpoint` returns the highest-numbered folder even when the process was killed
    while writing it; the Trainer writes `trainer_state.json` last, so a folder whose state file parses is
    complete. Incomplete ones are skipped (and left in place for inspection).
    """
    import json
    import re
    from pathlib import Path

    root = Path(output_dir)
    if not root.is_dir():
        return None
    numbered = []
    for path in root.iterdir():
        match = re.fullmatch(r"checkpoint-(\d+)", path.name)
        if match and path.is_dir():
            numbered.append((int(match.group(1)), path))
    for _, path in sorted(numbered, reverse=True):
        try:
            json.loads((path / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue
        return str(path)
    return None


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
