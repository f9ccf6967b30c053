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

import contextlib
import math
from dataclasses import dataclass, replace
from typing import Any

from faithforge.core.errors import UserError
from faithforge.training.modeling import score_completions_only
from faithforge.training.reference_cache import ReferenceLogpsByPair
from faithforge.training.real_tokens import mlp_on_real_tokens
from faithforge.training.shared_prefix import share_pair_prefixes

LN2 = math.log(2.0)


@dataclass(frozen=True)
class DpoArguments:
    """How one DPO run trains: everything `run_dpo` and `dpo_config` need besides the model and the data.

    The batch is `micro_batch` pairs per forward × `grad_accum` forwards per optimizer step; `effective_batch`
    (their product) is what one step sees, and what the OOM back-off keeps (`with_micro_batch`).
    """

    output_dir: str
    """Where checkpoints go (`checkpoint-N`); a rerun resumes from the newest complete one."""
    steps: int
    """Optimizer steps."""
    micro_batch: int
    """Pairs per forward/backward pass (`per_device_train_batch_size`)."""
    grad_accum: int
    """Forward/backward passes per optimizer step (`gradient_accumulation_steps`)."""
    learning_rate: float
    beta: float
    """DPO's β: how far the policy may move from the reference."""
    max_length: int | None
    """Prompt + completion tokens per sequence (TRL cuts with `keep_start`); None: no cut."""
    seed: int
    checkpoint_every: int
    """Steps between checkpoints (`save_steps`)."""
    gradient_checkpointing: bool = False
    optimizer: str = "adamw_torch"
    """A transformers `optim` name (`paged_adamw_8bit` on a GPU)."""
    bf16: bool = False
    """Train under bf16 autocast: the GPU default. On the CPU it runs, but the stages leave it off: with the reference
    in bf16 too it moved the demo's losses by up to 0.092 and was 1.29× faster (`bench/dpo_cpu_autocast.py`)."""
    sft_weight: float = 0.0
    """> 0 adds an NLL term on the chosen completions (TRL's `loss_type=["sigmoid", "sft"]`, the RPO objective)."""

    on_cpu: bool | None = None
    """Train on the CPU: the stage passes where its plan placed it, so a CPU plan on a host with a GPU stays off the
    GPU (the Trainer would move the model to `cuda:0`, outside the gate and the `gpu` slot). None: the CPU only
    where the host has no CUDA device."""

    share_prompt: bool = True
    """Encode each pair's prompt once for both answers (`training.shared_prefix`; same loss and gradients up to
    float rounding). False runs TRL's single pass over both full rows, for comparison. With any dropout > 0 (LoRA's
    or the model's own; the defaults here are 0) the two rows then share one dropout mask on the prompt instead of
    drawing two: their noise is correlated, not cancelled (the answers' log-probs depend on the prompt's states
    non-linearly), so training is not the same draw as without sharing."""

    mlp_real_tokens: bool = True
    """Run each layer's MLP on the batch's real tokens only, not its padding (`training.real_tokens`; with no
    dropout, the default, the same loss and gradients up to float rounding). False computes the padding too, for
    comparison."""

    ddp_backend: str | None = None
    """torch.distributed backend when the run is one rank of a torchrun group (`gloo` on the CPU; None: the
    Trainer's default, NCCL on GPUs). Ignored in a single process."""
    fsdp: bool = False
    """Shard the model over the group with FSDP (QLoRA needs the 4-bit weights stored in the compute dtype,
    `bnb_4bit_quant_storage`, which the FSDP plan's load sets)."""

    @property
    def effective_batch(self) -> int:
        """Pairs per optimizer step of one process: `micro_batch` × `grad_accum` (× ranks for the global batch)."""
        return self.micro_batch * self.grad_accum

    def with_micro_batch(self, micro_batch: int, grad_accum: int) -> "DpoArguments":
        """A copy with another micro-batch × accumulation (the plan a stage starts with, or the OOM back-off's)."""
        return replace(self, micro_batch=micro_batch, grad_accum=grad_accum)


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

        def __init__(self, *args: Any, reference_logps: ReferenceLogpsByPair, share_prompt: bool = True,
                     mlp_real_tokens: bool = True, **kwargs: Any):
            self._cached_reference = reference_logps
            self._share_prompt = share_prompt
            self._mlp_real_tokens = mlp_real_tokens
            model = kwargs.get("model")
            # TRL adds a frozen copy of the adapter named `ref` to a PeftModel passed without a peft_config
            # (dpo_trainer.py ~666-694). Our reference comes from the cache, so that copy is never read: a second
            # trainer on the same model (the OOM back-off's retry) would fail with "Adapter with name 'ref'
            # already exists", and it would cost VRAM and be saved beside the adapter. Drop it before and after.
            drop_reference_adapter(model)
            # TRL fingerprints its own reference-cache file by hashing every tensor of the model on the CPU in
            # fp32 (dpo_trainer.py ~980, utils.hash_module: ~7.7 GB for a 7B NF4 model). Our
            # `_precompute_ref_logps` never reads that file, so the hash is skipped.
            with _no_model_hash():
                super().__init__(*args, **kwargs)
            drop_reference_adapter(self.model)

        def compute_loss(self, model, *args: Any, **kwargs: Any):
            # Each pair's prompt goes through the backbone once, not once per answer (`shared_prefix`); FSDP
            # gathers a layer's shards per call, so a sharded model keeps TRL's single pass.
            sharing = (share_pair_prefixes(model) if self._share_prompt and not self.is_fsdp_enabled
                       else contextlib.nullcontext())
            # The MLPs skip the padding (`real_tokens`); entered first, so each of the shared pass's two backbone
            # calls is seen with its own mask.
            real_tokens = mlp_on_real_tokens(model, enabled=self._mlp_real_tokens and not self.is_fsdp_enabled)
            with score_completions_only(), real_tokens, sharing:
                return super().compute_loss(model, *args, **kwargs)

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
                cached = self._cached_reference[pair_id]
                chosen_tokens, rejected_tokens = cached.chosen_tokens, cached.rejected_tokens
                prompt_len = len(dataset[row]["prompt_ids"])
                want = (expected_completion_tokens(prompt_len, len(dataset[row]["chosen_ids"]), max_length, mode),
                        expected_completion_tokens(prompt_len, len(dataset[row]["rejected_ids"]), max_length, mode))
                if want != (chosen_tokens, rejected_tokens):
                    raise ReferenceMismatchError(
                        f"pair {pair_id}: the cache scored {chosen_tokens}/{rejected_tokens} completion tokens but "
                        f"training tokenizes {want[0]}/{want[1]}: the cache was built with another tokenizer, chat "
                        "template or max length; rerun the reference stage")
            chosen = [float(self._cached_reference[i].chosen_logps) for i in ids]
            rejected = [float(self._cached_reference[i].rejected_logps) for i in ids]
            return dataset.add_column("ref_chosen_logps", chosen).add_column("ref_rejected_logps", rejected)

    return CachedReferenceDPOTrainer


REFERENCE_ADAPTER = "ref"


def drop_reference_adapter(model) -> None:
    """Delete TRL's `ref` adapter copy from a PeftModel (no-op for anything else)."""
    peft_config = getattr(model, "peft_config", None)
    if isinstance(peft_config, dict) and REFERENCE_ADAPTER in peft_config:
        model.delete_adapter(REFERENCE_ADAPTER)


class _no_model_hash:
    """Replace TRL's `hash_module` in `trl.trainer.dpo_trainer` with a constant while a trainer is built."""

    def __enter__(self):
        import trl.trainer.dpo_trainer as dpo_module

        self._module, self._saved = dpo_module, dpo_module.hash_module
        dpo_module.hash_module = lambda module: "faithforge-reference-cache"  # noqa: ARG005 - never read
        return self

    def __exit__(self, *exc) -> None:
        self._module.hash_module = self._saved


def step0_tolerance(compute_dtype: str, beta: float, completion_tokens: float) -> float:
    """How far the step-0 loss and rewards may stray from ln 2 and 0 before the reference is called wrong.

    The cache is computed with the head training uses (`log_prob_head`) in the training dtype, so step 0
    reproduces it up to the backbone's run-to-run noise. In fp32 that is ~1e-6 nats per sequence: 1e-3 is
    generous. In bf16 the noise is per token (0.007-0.022 nats measured between fp32 and bf16 tiles on the 7B
    head shape) and adds up over the completion like a random walk, so the reward noise is β × 0.022 × √tokens
    (plus the fp32 floor).
    A wrong cache (another model, another tokenizer) is off by whole nats per token.
    """
    if compute_dtype == "float32":
        return 1e-3
    return 1e-3 + beta * 0.022 * math.sqrt(max(1.0, completion_tokens))


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
            values = {k: float(v) for k, v in logs.items() if k == "loss" or k.startswith("rewards/")}
            broken = {k: v for k, v in values.items() if not math.isfinite(v)}
            if broken:  # every comparison with NaN is false: test it explicitly, at every step
                raise ReferenceMismatchError(
                    f"DPO step {state.global_step}: non-finite {', '.join(f'{k}={v}' for k, v in broken.items())} — "
                    "the reference log-probs or the policy produced NaN/inf; check the reference cache and the "
                    "learning rate (faithforge demo --fresh rebuilds the cache)")
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


def run_dpo(model, tokenizer, train_pairs: list[dict], reference_logps: ReferenceLogpsByPair, args: DpoArguments, *,
            guard_tolerance: float | None = None, extra_callbacks: list | None = None) -> dict[str, Any]:
    """Train LoRA adapters already attached to `model` (a peft model) with cached reference log-probs.

    Resumes from the newest checkpoint in `args.output_dir` if there is one; a checkpoint that already holds
    `args.steps` steps is loaded, not trained further (the adapter has exactly `steps` steps). Returns the step log
    and flags. `guard_tolerance=None` scales the step-0 check to the compute dtype and completion length
    (`step0_tolerance`). `args.sft_weight` > 0 adds an NLL term on the chosen completions, which keeps DPO from
    lowering the likelihood of the faithful summary itself.

    Steps: set up the trainer (with the reference guard) → train (or load the finished run) → the step log.
    """
    remember_or_restore_initial_adapter(model, args.output_dir)
    trainer, guard = _setup_trainer(model, tokenizer, train_pairs, reference_logps, args, guard_tolerance,
                                    extra_callbacks)
    last = _train_or_load(trainer, tokenizer, args)
    return _training_result(trainer, guard, last)


def _setup_trainer(model, tokenizer, train_pairs: list[dict], reference_logps: ReferenceLogpsByPair,
                   args: DpoArguments, guard_tolerance: float | None, extra_callbacks: list | None):
    """The cached-reference trainer over `train_pairs` and its step-0 / stuck-at-ln 2 guard."""
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback

    columns = ["id", "prompt", "chosen", "rejected"]
    dataset = Dataset.from_list([{k: p[k] for k in columns} for p in train_pairs])
    if guard_tolerance is None:
        guard_tolerance = step0_tolerance(training_dtype(model, args.bf16), args.beta,
                                          mean_completion_tokens(reference_logps))
    guard = make_guard_callback(guard_tolerance, stuck_after_steps=max(10, args.steps // 5),
                                pure_dpo=args.sft_weight == 0)
    trainer = make_trainer_class()(
        model=model, args=dpo_config(args), train_dataset=dataset, processing_class=tokenizer,
        reference_logps=reference_logps, share_prompt=args.share_prompt, mlp_real_tokens=args.mlp_real_tokens,
        callbacks=[guard, make_checksum_callback(), *(extra_callbacks or [])],
    )
    trainer.remove_callback(PrinterCallback)  # metrics go to our log and artifacts, not raw dicts on stdout
    return trainer, guard


def _train_or_load(trainer, tokenizer, args: DpoArguments) -> str | None:
    """Train to `args.steps`, resuming from the newest complete checkpoint; returns that checkpoint (or None)."""
    last = last_complete_checkpoint(args.output_dir)
    padding_side = tokenizer.padding_side
    try:
        if last is not None and checkpoint_step(last) >= args.steps:
            # Resuming a finished run would train one step past the end (the Trainer starts a new epoch);
            # the finished checkpoint is the result.
            load_finished_checkpoint(trainer, last)
        else:
            trainer.train(resume_from_checkpoint=last)
    finally:
        tokenizer.padding_side = padding_side  # TRL pads on the right; generation afterwards needs our side
    return last


def _training_result(trainer, guard, resumed_from: str | None) -> dict[str, Any]:
    history = [h for h in trainer.state.log_history if "loss" in h]
    return {
        "steps": trainer.state.global_step,
        "resumed_from": resumed_from,
        "history": [{"step": h["step"], "loss": h["loss"], "margin": h.get("rewards/margins"),
                     "accuracy": h.get("rewards/accuracies")} for h in history],
        "stuck_at_ln2": guard.stuck,
        "trainer": trainer,
    }


def dpo_config(args: DpoArguments, *, precompute_ref_log_probs: bool = True):
    """The `DPOConfig` FaithForge trains with (constant learning rate, a log line and a loss every step).

    `precompute_ref_log_probs=False` gives the same settings with TRL computing the reference live, which is
    what the equivalence test and the benchmark compare against.
    """
    from trl import DPOConfig

    return DPOConfig(
        output_dir=args.output_dir,
        max_steps=args.steps,
        per_device_train_batch_size=args.micro_batch,
        gradient_accumulation_steps=args.grad_accum,
        learning_rate=args.learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0,
        beta=args.beta,
        loss_type=["sigmoid", "sft"] if args.sft_weight > 0 else ["sigmoid"],
        loss_weights=[1.0, args.sft_weight] if args.sft_weight > 0 else None,
        max_length=args.max_length,
        truncation_mode="keep_start",
        precompute_ref_log_probs=precompute_ref_log_probs,
        logging_steps=1,
        save_strategy="steps",
        save_steps=args.checkpoint_every,
        save_total_limit=2,
        report_to="none",
        seed=args.seed,
        data_seed=args.seed,
        bf16=args.bf16,
        gradient_checkpointing=args.gradient_checkpointing,
        optim=args.optimizer,
        disable_tqdm=True,
        dataloader_num_workers=0,
        # bf16 on the CPU is autocast too (transformers refuses it without use_cpu)
        use_cpu=(not _cuda_available()) if args.on_cpu is None else args.on_cpu,
        ddp_backend=args.ddp_backend,
        # FSDP-QLoRA (PEFT's recipe): full sharding per decoder layer; use_orig_params keeps frozen 4-bit and trainable
        # LoRA weights in one flat parameter; rank 0 loads, the others receive its weights.
        **({"fsdp": True, "fsdp_config": {"auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "use_orig_params": True,
                                          "cpu_ram_efficient_loading": True, "sync_module_states": True}}
           if args.fsdp else {}),
    )


_INITIAL_ADAPTER = "_faithforge_initial_adapter"


def remember_or_restore_initial_adapter(model, output_dir: str) -> None:
    """Keep a CPU copy of the adapter as first given; when a later call finds no checkpoint to resume from (an OOM
    before the first save), put it back, so the retry starts from the reference again and the step-0 check holds.
    With a checkpoint, the Trainer loads the adapter from it."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    saved = getattr(model, _INITIAL_ADAPTER, None)
    if saved is None:
        state = {k: v.detach().to("cpu", copy=True) for k, v in get_peft_model_state_dict(model).items()}
        object.__setattr__(model, _INITIAL_ADAPTER, state)
    elif last_complete_checkpoint(output_dir) is None:
        set_peft_model_state_dict(model, saved)


def training_dtype(model, bf16: bool) -> str:
    """The dtype TRL's log-prob tiles run in: bf16 under the Trainer's bf16 autocast, else the hidden states'
    dtype (the input embeddings' weight dtype: bf16 for NF4 and bf16 loads, fp32 for fp32 loads)."""
    if bf16:
        return "bfloat16"
    embeddings = model.get_input_embeddings()
    return str(embeddings.weight.dtype).replace("torch.", "") if embeddings is not None else "float32"


def mean_completion_tokens(reference_logps: ReferenceLogpsByPair) -> float:
    """Mean over pairs of the longer completion's token count (what one reward sums over)."""
    if not reference_logps:
        return 1.0
    return (sum(max(r.chosen_tokens, r.rejected_tokens) for r in reference_logps.values())
            / len(reference_logps))


def checkpoint_step(path: str) -> int:
    """The global step a complete checkpoint folder recorded."""
    import json
    from pathlib import Path

    return int(json.loads((Path(path) / "trainer_state.json").read_text()).get("global_step", 0))


def load_finished_checkpoint(trainer, path: str) -> None:
    """Load a finished run's adapter weights and trainer state (history) from `path` without training."""
    from pathlib import Path

    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import TrainerState

    weights = Path(path) / "adapter_model.safetensors"
    set_peft_model_state_dict(trainer.model, load_file(str(weights)))
    trainer.state = TrainerState.load_from_json(str(Path(path) / "trainer_state.json"))


#: Written into each checkpoint folder after the Trainer saved it: file name → SHA-256 of its bytes.
CHECKSUMS = "faithforge-checksums.json"


def _checksummed_files(folder) -> list:
    """The files a checkpoint's checksums cover: all but other ranks' RNG states (`rng_state_1.pth`, ...), which
    those ranks may still be writing when rank 0 lists the folder."""
    import re

    return sorted(p for p in folder.iterdir() if p.is_file() and p.name != CHECKSUMS
                  and not re.fullmatch(r"rng_state_[1-9]\d*\.pth", p.name))


def make_checksum_callback():
    """A `TrainerCallback` that writes `CHECKSUMS` into each checkpoint the Trainer saves (rank 0 only), so a
    checkpoint damaged on disk is never resumed from (an attack garbled 16 bytes of one: the rerun loaded it
    without a word and evaluated an adapter that wrote empty answers). The checkpoint's files get the modes the
    umask allows first: safetensors writes `adapter_model.safetensors` 0o600 whatever the umask."""
    from pathlib import Path

    from transformers import TrainerCallback

    from faithforge.core.workspace import atomic_write_json, give_umask_modes, sha256_file

    class ChecksumCheckpoints(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):  # noqa: ARG002
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if state.is_world_process_zero and folder.is_dir():
                give_umask_modes(folder)
                atomic_write_json(folder / CHECKSUMS, {p.name: sha256_file(p) for p in _checksummed_files(folder)})

    return ChecksumCheckpoints()


def _finished(path) -> bool:
    """The Trainer wrote the checkpoint to the end: it writes `trainer_state.json` last."""
    import json

    try:
        json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return True


def checksum_problem(path) -> str | None:
    """Why a finished checkpoint folder cannot be resumed from (None: it can): its checksums are missing (killed
    before they were written, or an older FaithForge's) or a file no longer matches them."""
    import json

    from faithforge.core.workspace import sha256_file

    try:
        sums = json.loads((path / CHECKSUMS).read_text())
    except (OSError, ValueError):
        return f"no readable {CHECKSUMS} (killed before it was written, or written by an older FaithForge)"
    for name, digest in sums.items():
        try:
            if sha256_file(path / name) != digest:
                return f"{name} no longer matches its checksum (damaged on disk)"
        except OSError:
            return f"{name} is missing"
    return None


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest `checkpoint-N` in `output_dir` that was written to the end and is intact, or None.

    transformers' `get_last_checkpoint` returns the highest-numbered folder even when the process was killed
    while writing it, and trusts whatever bytes are there. Unfinished folders are skipped quietly, finished ones
    with a `checksum_problem` with a log line (both are left in place for inspection).
    """
    import logging
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
        if not _finished(path):
            continue
        problem = checksum_problem(path)
        if problem is None:
            return str(path)
        logging.getLogger(__name__).warning("not resuming from %s: %s", path, problem)
    return None


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
