"""Reference log-prob cache: the DPO reference pass, run once, stored as a few bytes per pair.

For each pair: the reference model's summed log-prob of the chosen and the rejected completion and their
token counts. Tokenization and truncation follow TRL's DPO semantics exactly (prompt rendered with the
generation prompt; the completion starts where prompt and prompt+completion token ids diverge; the
collator's `keep_start`/`keep_end` cut), so TRL's loss can consume these numbers unchanged.

The cache is a directory of Parquet shards plus `manifest.json`. It is keyed by everything the numbers
depend on (weights, tokenizer, chat template, max length, truncation mode, quantization, pair content);
every shard carries a SHA-256; a killed run resumes after the last verified shard; a corrupt shard is
detected and recomputed, never used.

Log-probs come from TRL's chunked LM-head kernel in the dtype training uses (vocabulary tiles with a running
log-sum-exp), so the batch × seq × vocab logits tensor — 1.25 GB per pair at 2,048 tokens with a 152k vocabulary —
is never materialized, and the numbers are the ones the policy reproduces at step 0. The dtype is in the key.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

from faithforge.core.errors import UserError
from faithforge.core.workspace import atomic_write_bytes, atomic_write_json, sha256_file
from faithforge.training.real_tokens import mlp_on_real_tokens
from faithforge.training.shared_prefix import share_pair_prefixes

log = logging.getLogger(__name__)

TRUNCATION_MODES = ("keep_start", "keep_end")
MANIFEST = "manifest.json"
CACHE_FORMAT = 2  # 2: the training head (log_prob_head) in the training dtype; the dtype is part of the key.
# Not bumped when the CPU head began building whole logits: it gives TRL's kernel's numbers within 2e-5 nats
# a token (bench/log_prob_head.py), far inside the step-0 check's 1e-3, so earlier caches stay valid.


# --- tokenization (mirrors TRL 1.x DPO) -----------------------------------------------------------

def _ids(encoded: Any) -> list[int]:
    return list(encoded["input_ids"] if not isinstance(encoded, list) else encoded)


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def tokenize_pair(tokenizer, pair: dict) -> dict[str, list[int]]:
    """prompt_ids / chosen_ids / rejected_ids for one conversational pair."""
    prompt = tokenizer.apply_chat_template(pair["prompt"], add_generation_prompt=True, tokenize=True)
    with_chosen = tokenizer.apply_chat_template(pair["prompt"] + pair["chosen"], tokenize=True)
    with_rejected = tokenizer.apply_chat_template(pair["prompt"] + pair["rejected"], tokenize=True)
    prompt_ids, chosen_ids, rejected_ids = _ids(prompt), _ids(with_chosen), _ids(with_rejected)
    # A BPE merge or a template that renders the prompt differently can move the boundary: the completion
    # starts where the token ids diverge.
    start = min(common_prefix_length(prompt_ids, chosen_ids), common_prefix_length(prompt_ids, rejected_ids))
    return {"prompt_ids": prompt_ids[:start], "chosen_ids": chosen_ids[start:], "rejected_ids": rejected_ids[start:]}


def collate_pairs(tokenized: Sequence[dict[str, list[int]]], pad_id: int, max_length: int | None,
                  truncation_mode: str = "keep_start"):
    """Batch of 2B sequences — chosen first, then rejected — right-padded, with the completion mask.

    Args:
        tokenized: B pairs, each `prompt_ids`, `chosen_ids`, `rejected_ids` (token ids).
        pad_id: The id padding fills with.
        max_length: Longest sequence kept, tokens (None: no cut); `truncation_mode` says which end is kept.

    Returns:
        `(input_ids, attention_mask, completion_mask)`, each of shape (2 * B, width), dtype long; rows 0..B-1 are
        the chosen sequences, B..2B-1 the rejected ones; width is the longest kept sequence, tokens. The
        completion mask is 1 on the completion's tokens, 0 on the prompt and the padding.
    """
    import torch

    if truncation_mode not in TRUNCATION_MODES:
        raise ValueError(f"truncation_mode must be one of {TRUNCATION_MODES}, got {truncation_mode!r}")
    seqs, masks = [], []
    for side in ("chosen_ids", "rejected_ids"):
        for item in tokenized:
            ids = item["prompt_ids"] + item[side]
            mask = [0] * len(item["prompt_ids"]) + [1] * len(item[side])
            if max_length is not None:
                cut = slice(None, max_length) if truncation_mode == "keep_start" else slice(-max_length, None)
                ids, mask = ids[cut], mask[cut]
            seqs.append(ids)
            masks.append(mask)
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    completion = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, (ids, mask) in enumerate(zip(seqs, masks)):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention[row, : len(ids)] = 1
        completion[row, : len(mask)] = torch.tensor(mask, dtype=torch.long)
    return input_ids, attention, completion


# --- log-probs: the training head (log_prob_head), in the training dtype --------------------------------

def completion_logps(model, input_ids, attention_mask, completion_mask, autocast_bf16: bool = False,
                     vocab_chunk: int | None = None):
    """Summed log-prob of the completion tokens of each sequence, and their count.

    Shapes: `input_ids`, `attention_mask`, `completion_mask` (batch_size, seq_len), long. Returns `(sums, counts)`:
    `sums` (batch_size,) float32, nats (a sum of natural-log probabilities, ≤ 0); `counts` (batch_size,) long,
    tokens scored (the completion tokens after the first position, which has no prediction).

    The head is `faithforge.training.log_prob_head.completion_log_probs`, the code the DPO trainer's fused LM head
    and the SFT control score the policy with (TRL's chunked kernel on a GPU or for large logits, the whole logits
    on the CPU otherwise): the backbone runs once and the head projects only the scored positions, in the compute
    dtype with fp32 statistics. `autocast_bf16` reproduces the Trainer's bf16 autocast (GPU training with
    `bf16=True`); without it the head runs in the hidden states' dtype, as training on that device does. Same head,
    same dtype: at step 0 the policy reproduces these numbers.
    Models that scale their logits (Granite, Falcon-H1, ...) go through TRL's `add_fused_lm_head` instead.
    """
    import torch
    from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE, add_fused_lm_head

    from faithforge.training import log_prob_head
    from faithforge.training.modeling import score_completions_only

    labels = input_ids.masked_fill(completion_mask == 0, -100)
    mask = completion_mask[:, 1:]
    config = model.config.get_text_config()
    scaled = any(getattr(config, name, None) is not None
                 for name in ("logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling"))
    with torch.no_grad(), torch.autocast(input_ids.device.type, dtype=torch.bfloat16, enabled=autocast_bf16):
        if scaled:
            if not getattr(model, "_faithforge_fused_head", False):
                add_fused_lm_head(model)
                object.__setattr__(model, "_faithforge_fused_head", True)
            with mlp_on_real_tokens(model), share_pair_prefixes(model), score_completions_only():
                out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, fused_lm_head=True,
                            use_cache=False)
            return (out.log_probs.float() * mask).sum(-1), mask.sum(-1)
        # each pair's prompt through the backbone once and the MLPs on real tokens only, as training does
        with mlp_on_real_tokens(model), share_pair_prefixes(model):
            hidden = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                                         use_cache=False).last_hidden_state[:, :-1]
        head = model.get_output_embeddings()
        targets = labels[:, 1:]
        scored = targets != -100
        per_token = log_prob_head.completion_log_probs(
            hidden[scored], head.weight, getattr(head, "bias", None), targets[scored], 1.0,
            vocab_chunk or _CHUNKED_LOGPROB_CHUNK_SIZE, getattr(config, "final_logit_softcapping", None), 1.0,
            ("log_probs",))[0]
    sums = torch.zeros(input_ids.shape[0], dtype=torch.float32, device=input_ids.device)
    rows = scored.nonzero(as_tuple=True)[0]
    sums.index_add_(0, rows, per_token.float())
    return sums, mask.sum(-1)


# --- the cache key -----------------------------------------------------------------------------------

#: (folder, ((name, size, mtime_ns), ...)) → fingerprint. One pipeline run asks for the same model's fingerprint
#: in several stages (warm start, reference, on-policy pairs); a 7B folder is ~15 GB to read each time.
_FINGERPRINTS: dict[tuple, str] = {}


def weights_fingerprint(model_dir: str | Path) -> str:
    """SHA-256 over config.json and every weight file of a local model folder.

    Remembered for the life of the process while every file keeps its name, size and modification time; a
    rewritten file (new mtime) is hashed again.
    """
    root = Path(model_dir)
    files = sorted(p for p in root.iterdir() if p.suffix in {".safetensors", ".bin", ".pt"} or p.name == "config.json")
    if not files:
        raise UserError(f"{root} holds no model weights (*.safetensors or *.bin); point model.path at a model folder")
    signature = (str(root.resolve()), tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files))
    if signature not in _FINGERPRINTS:
        digest = hashlib.sha256()
        for file in files:
            digest.update(file.name.encode())
            digest.update(sha256_file(file).encode())
        _FINGERPRINTS[signature] = digest.hexdigest()
    return _FINGERPRINTS[signature]


#: The files a model folder's tokenizer and chat template are read from (`save_pretrained`'s names).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "chat_template.json", "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json")


def model_folder_fingerprint(model_dir: str | Path) -> str:
    """`weights_fingerprint` plus the tokenizer and chat-template files: what a stage that trains on a folder it
    does not own depends on (a user's `model.path` rewritten with new weights or a new template is another model)."""
    root = Path(model_dir)
    digest = hashlib.sha256(weights_fingerprint(root).encode())
    for name in TOKENIZER_FILES:
        if (root / name).is_file():
            digest.update(name.encode())
            digest.update(sha256_file(root / name).encode())
    return digest.hexdigest()


def sampling_fingerprint(model_dir: str | Path) -> str:
    """`model_folder_fingerprint` plus `generation_config.json`, whose EOS ids decide where a sampled answer stops:
    what a stage that samples from the folder depends on (the on-policy pairs, the evaluation's answers). An
    attack (2026-12-07) changed only those ids and got stale answers of one model beside fresh ones of another."""
    root = Path(model_dir)
    digest = hashlib.sha256(model_folder_fingerprint(root).encode())
    if (root / "generation_config.json").is_file():
        digest.update(sha256_file(root / "generation_config.json").encode())
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    digest.update((backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))).encode())
    digest.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def pairs_fingerprint(pairs: Sequence[dict]) -> str:
    digest = hashlib.sha256()
    for pair in pairs:
        digest.update(json.dumps({k: pair[k] for k in ("id", "prompt", "chosen", "rejected")}, sort_keys=True).encode())
    return digest.hexdigest()


def cache_key(*, weights: str, tokenizer, max_length: int | None, truncation_mode: str,
              quantization: dict | None, pairs: Sequence[dict],
              compute_dtype: str = "float32") -> tuple[str, dict[str, Any]]:
    components = {
        "compute_dtype": compute_dtype,
        "format": CACHE_FORMAT,
        "weights": weights,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "chat_template": hashlib.sha256((tokenizer.chat_template or "").encode()).hexdigest(),
        "max_length": max_length,
        "truncation_mode": truncation_mode,
        "quantization": quantization or {},
        "pairs": pairs_fingerprint(pairs),
        "num_pairs": len(pairs),
    }
    key = hashlib.sha256(json.dumps(components, sort_keys=True).encode()).hexdigest()
    return key, components


# --- the cache on disk -------------------------------------------------------------------------------

class ReferenceLogps(NamedTuple):
    """The reference model's numbers for one preference pair (what TRL's DPO loss reads as `ref_*_logps`).

    Log-probs are natural-log probabilities (nats) summed over the completion's tokens after TRL's truncation, as
    computed by the reference pass (`completion_logps`); scalars per pair, not per token. The token counts say how
    many completion tokens each sum covers, so training can check its own tokenization against the cache.
    """

    chosen_logps: float
    """log π_ref(chosen | prompt): summed log-prob of the chosen completion's tokens (nats, ≤ 0)."""
    rejected_logps: float
    """log π_ref(rejected | prompt): summed log-prob of the rejected completion's tokens (nats, ≤ 0)."""
    chosen_tokens: int
    """Completion tokens the chosen sum covers (after truncation to `max_length`)."""
    rejected_tokens: int
    """Completion tokens the rejected sum covers (after truncation to `max_length`)."""


#: pair id → its reference log-probs: what `ReferenceCache.load` returns and `run_dpo` consumes.
ReferenceLogpsByPair = dict[str, ReferenceLogps]


@dataclass
class ShardInfo:
    index: int
    file: str
    rows: int
    sha256: str


class ReferenceCache:
    """A directory of checksummed Parquet shards for one cache key."""

    def __init__(self, directory: str | Path, key: str, components: dict[str, Any], shard_size: int):
        self.directory = Path(directory)
        self.key = key
        self.components = components
        self.shard_size = shard_size
        #: What was found wrong with the cache on disk (a corrupt shard, an unreadable manifest): the stage reports
        #: it as why the cache was recomputed, like every other recomputed output.
        self.problems: list[str] = []

    def _problem(self, message: str) -> None:
        log.warning("%s", message)
        if message not in self.problems:
            self.problems.append(message)

    @property
    def manifest_path(self) -> Path:
        return self.directory / MANIFEST

    def _read_manifest(self) -> dict[str, Any] | None:
        if not self.manifest_path.exists():
            return None
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except (OSError, json.JSONDecodeError):
            self._problem(f"{self.manifest_path.name} is unreadable")
            return None
        if manifest.get("key") != self.key or manifest.get("shard_size") != self.shard_size:
            self._problem(f"{self.manifest_path.name} was written for another key or shard size")
            return None
        return manifest

    def verified_shards(self) -> list[ShardInfo]:
        """Shards whose file exists and matches its checksum, in order, stopping at the first bad one."""
        manifest = self._read_manifest()
        good: list[ShardInfo] = []
        for expected, entry in enumerate((manifest or {}).get("shards", [])):
            shard = ShardInfo(**entry)
            path = self.directory / shard.file
            if shard.index != expected or not path.exists() or sha256_file(path) != shard.sha256:
                self._problem(f"{shard.file} is {'missing' if not path.exists() else 'changed (checksum)'}")
                break
            good.append(shard)
        return good

    def is_complete(self) -> bool:
        manifest = self._read_manifest()
        if not manifest or not manifest.get("complete"):
            return False
        shards = self.verified_shards()
        return len(shards) == len(manifest["shards"]) and sum(s.rows for s in shards) == self.components["num_pairs"]

    def _write_manifest(self, shards: list[ShardInfo], complete: bool) -> None:
        atomic_write_json(self.manifest_path, {
            "key": self.key, "components": self.components, "shard_size": self.shard_size,
            "shards": [s.__dict__ for s in shards], "complete": complete,
        })

    def write_shard_file(self, index: int, rows: dict[str, list]) -> ShardInfo:
        """Write shard `index` atomically (Parquet) and return its entry; the manifest is not touched."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({
            "pair_id": pa.array(rows["pair_id"], pa.string()),
            "ref_chosen_logps": pa.array(rows["ref_chosen_logps"], pa.float64()),
            "ref_rejected_logps": pa.array(rows["ref_rejected_logps"], pa.float64()),
            "chosen_tokens": pa.array(rows["chosen_tokens"], pa.int32()),
            "rejected_tokens": pa.array(rows["rejected_tokens"], pa.int32()),
        })
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        data = buffer.getvalue()
        name = f"shard-{index:05d}.parquet"
        atomic_write_bytes(self.directory / name, data)
        return ShardInfo(index, name, table.num_rows, hashlib.sha256(data).hexdigest())

    def write_shard(self, shards: list[ShardInfo], index: int, rows: dict[str, list]) -> list[ShardInfo]:
        """One process: write shard `index` and record it in the manifest (resume point)."""
        shards = shards[:index] + [self.write_shard_file(index, rows)]
        self._write_manifest(shards, complete=False)
        return shards

    def sidecar_path(self, index: int) -> Path:
        """Where a rank records a shard it wrote (its entry), for rank 0's merge; removed by the merge."""
        return self.directory / f"shard-{index:05d}.parquet.entry.json"

    def verified_entry(self, index: int, known: dict[int, ShardInfo] | None = None) -> ShardInfo | None:
        """Shard `index`'s entry if its file matches the checksum recorded for it (manifest or sidecar)."""
        candidates = [known[index]] if known and index in known else []
        sidecar = self.sidecar_path(index)
        if sidecar.exists():
            try:
                candidates.append(ShardInfo(**json.loads(sidecar.read_text())))
            except (OSError, ValueError, TypeError):
                self._problem(f"{sidecar.name} is unreadable")
        for entry in candidates:
            path = self.directory / entry.file
            if entry.index == index and path.exists() and sha256_file(path) == entry.sha256:
                return entry
        return None

    def mark_complete(self, shards: list[ShardInfo]) -> None:
        self._write_manifest(shards, complete=True)

    def load(self) -> ReferenceLogpsByPair:
        """pair_id → its `ReferenceLogps` (chosen/rejected summed log-probs and token counts); verified.

        Each shard is read once and its bytes are checked against the manifest's SHA-256 before they are
        parsed, so a file that changes between the check and the read is never used.
        """
        import pyarrow.parquet as pq

        manifest = self._read_manifest()
        if not manifest or not manifest.get("complete"):
            raise UserError(f"reference cache {self.directory} is incomplete or was built for another key; "
                            "run the reference stage again (it resumes from the last good shard)")
        out: ReferenceLogpsByPair = {}
        for entry in manifest["shards"]:
            shard = ShardInfo(**entry)
            path = self.directory / shard.file
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise UserError(f"reference cache shard {path} is unreadable ({exc.strerror or exc}); run the "
                                "reference stage again (it recomputes missing shards)") from exc
            if hashlib.sha256(data).hexdigest() != shard.sha256:
                raise UserError(f"reference cache shard {path} does not match its checksum (corrupt or changed); "
                                "run the reference stage again (it recomputes it)")
            table = pq.read_table(io.BytesIO(data)).to_pydict()
            for i, pair_id in enumerate(table["pair_id"]):
                out[pair_id] = ReferenceLogps(chosen_logps=table["ref_chosen_logps"][i],
                                              rejected_logps=table["ref_rejected_logps"][i],
                                              chosen_tokens=table["chosen_tokens"][i],
                                              rejected_tokens=table["rejected_tokens"][i])
        if len(out) != self.components["num_pairs"]:
            raise UserError(f"reference cache {self.directory} holds {len(out)} pairs, its key says "
                            f"{self.components['num_pairs']}; run the reference stage again")
        return out


def compute_reference_cache(
    model,
    tokenizer,
    pairs: Sequence[dict],
    cache: ReferenceCache,
    *,
    batch_size: int,
    max_length: int | None,
    truncation_mode: str = "keep_start",
    on_shard: Callable[[int, int], None] | None = None,
    autocast_bf16: bool | None = None,
    vocab_chunk: int | None = None,
) -> dict[str, Any]:
    """Fill `cache` for `pairs`, resuming after the last verified shard. Returns a small summary."""
    import torch

    if not pairs:
        raise UserError("the reference pass got no preference pairs to score (the pairs output is empty); rerun "
                        "with --fresh, or give pairs.path a file with pairs")
    if cache.is_complete():
        return {"computed_pairs": 0, "reused": True, "shards": len(cache.verified_shards())}
    shards = cache.verified_shards()
    model.eval()
    device = next(model.parameters()).device
    if autocast_bf16 is None:  # GPU training runs under bf16 autocast (run_dpo's bf16=True on CUDA)
        autocast_bf16 = device.type == "cuda" and cache.components.get("compute_dtype") == "bfloat16"
    start_shard = len(shards)
    computed = 0
    total = shard_count(len(pairs), cache.shard_size)
    for index in range(start_shard, total):
        chunk = pairs[index * cache.shard_size: (index + 1) * cache.shard_size]
        rows = _score_shard(model, tokenizer, chunk, device, batch_size=batch_size, max_length=max_length,
                            truncation_mode=truncation_mode, autocast_bf16=autocast_bf16, vocab_chunk=vocab_chunk)
        shards = cache.write_shard(shards, index, rows)
        computed += len(chunk)
        if on_shard is not None:
            on_shard(index + 1, total)
    cache.mark_complete(shards)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"computed_pairs": computed, "reused": False, "shards": len(shards), "resumed_from_shard": start_shard}


def shard_count(pairs: int, shard_size: int) -> int:
    return (pairs + shard_size - 1) // shard_size


def _score_shard(model, tokenizer, chunk: Sequence[dict], device, *, batch_size: int, max_length: int | None,
                 truncation_mode: str, autocast_bf16: bool, vocab_chunk: int | None) -> dict[str, list]:
    """One shard's rows: the same batches in the same order whoever computes it, so the bytes are the same.

    Returns lists of length len(chunk): `pair_id`; `ref_chosen_logps`, `ref_rejected_logps` (float64, nats: the
    reference model's summed completion log-probs); `chosen_tokens`, `rejected_tokens` (tokens scored)."""
    rows: dict[str, list] = {k: [] for k in ("pair_id", "ref_chosen_logps", "ref_rejected_logps",
                                             "chosen_tokens", "rejected_tokens")}
    for b in range(0, len(chunk), batch_size):
        batch = chunk[b: b + batch_size]
        tokenized = [tokenize_pair(tokenizer, p) for p in batch]
        input_ids, attention, completion = collate_pairs(tokenized, tokenizer.pad_token_id, max_length,
                                                         truncation_mode)
        sums, counts = completion_logps(model, input_ids.to(device), attention.to(device),
                                        completion.to(device), autocast_bf16=autocast_bf16,
                                        vocab_chunk=vocab_chunk)
        n = len(batch)
        rows["pair_id"] += [p["id"] for p in batch]
        rows["ref_chosen_logps"] += sums[:n].double().tolist()
        rows["ref_rejected_logps"] += sums[n:].double().tolist()
        rows["chosen_tokens"] += counts[:n].tolist()
        rows["rejected_tokens"] += counts[n:].tolist()
        del sums, counts
    return rows


def compute_reference_shards(model, tokenizer, pairs: Sequence[dict], cache: ReferenceCache, *, rank: int,
                             world_size: int, batch_size: int, max_length: int | None,
                             truncation_mode: str = "keep_start", on_shard: Callable[[int, int], None] | None = None,
                             autocast_bf16: bool | None = None, vocab_chunk: int | None = None) -> dict[str, Any]:
    """Rank `rank` of `world_size`: compute the shards i with i % world_size == rank that are not already on disk
    and verified, each written atomically with its entry beside it (`sidecar_path`). Ranks (torchrun ranks or
    Prefect workers) share nothing but the folder; `merge_reference_shards` then writes the manifest.

    A shard's rows depend only on its pairs and the batch size, never on the rank, so the merged cache is
    byte-identical to the one `compute_reference_cache` writes in one process."""
    if not pairs:
        raise UserError("the reference pass got no preference pairs to score (the pairs output is empty); rerun "
                        "with --fresh, or give pairs.path a file with pairs")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    cache.directory.mkdir(parents=True, exist_ok=True)
    if cache.is_complete():
        return {"computed_pairs": 0, "reused": True, "shards": len(cache.verified_shards())}
    known = {s.index: s for s in cache.verified_shards()}
    model.eval()
    device = next(model.parameters()).device
    if autocast_bf16 is None:
        autocast_bf16 = device.type == "cuda" and cache.components.get("compute_dtype") == "bfloat16"
    total = shard_count(len(pairs), cache.shard_size)
    computed, reused = 0, 0
    for index in range(rank, total, world_size):
        if cache.verified_entry(index, known) is not None:
            reused += 1
            continue
        chunk = pairs[index * cache.shard_size: (index + 1) * cache.shard_size]
        rows = _score_shard(model, tokenizer, chunk, device, batch_size=batch_size, max_length=max_length,
                            truncation_mode=truncation_mode, autocast_bf16=autocast_bf16, vocab_chunk=vocab_chunk)
        entry = cache.write_shard_file(index, rows)
        atomic_write_json(cache.sidecar_path(index), entry.__dict__)  # after the shard: an entry means a whole file
        computed += len(chunk)
        if on_shard is not None:
            on_shard(index + 1, total)
    return {"computed_pairs": computed, "reused": False, "rank": rank, "world_size": world_size,
            "reused_shards": reused}


def merge_reference_shards(cache: ReferenceCache, pairs: Sequence[dict]) -> dict[str, Any]:
    """Check every shard against its recorded checksum and write the complete manifest (what one process writes);
    the ranks' entries are removed. A missing or changed shard is an error naming it (rerun: it is recomputed)."""
    known = {s.index: s for s in cache.verified_shards()}
    total = shard_count(len(pairs), cache.shard_size)
    entries, missing = [], []
    for index in range(total):
        entry = cache.verified_entry(index, known)
        if entry is None:
            missing.append(f"shard-{index:05d}.parquet")
        else:
            entries.append(entry)
    if missing:
        raise UserError(f"reference cache {cache.directory}: {len(missing)} shard(s) missing or changed after the "
                        f"ranks finished ({', '.join(missing[:3])}); run the reference stage again (it recomputes them)")
    if sum(e.rows for e in entries) != cache.components["num_pairs"]:
        raise UserError(f"reference cache {cache.directory}: the shards hold {sum(e.rows for e in entries)} pairs, "
                        f"the key says {cache.components['num_pairs']}; run the reference stage again")
    cache.mark_complete(entries)
    for index in range(total):
        cache.sidecar_path(index).unlink(missing_ok=True)
    return {"shards": total, "merged": True}
