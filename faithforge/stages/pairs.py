"""Stage: preference pairs from the generated training examples, split train/validation by source."""

from __future__ import annotations

import json

from faithforge.pairs import build_synthetic_pairs, split_by_source, validate_pairs
from faithforge.stages.context import StageContext, content_key
from faithforge.stages.generate import load_split
from faithforge.workspace import atomic_write_json, atomic_write_jsonl, read_jsonl, sha256_file


def build_pairs(ctx: StageContext, dataset: dict) -> dict:
    cfg = ctx.config.pairs
    out = ctx.workspace.dir("pairs") / f"pairs-{content_key('pairs', dataset['key'], cfg.model_dump(), ctx.config.seed)}"
    manifest = out / "manifest.json"
    if manifest.exists():
        return {**json.loads(manifest.read_text()), "reused": True}
    pairs, report = build_synthetic_pairs(load_split(dataset, "train"), cfg.omission_share, ctx.config.seed)
    validate_pairs(pairs, "generated pairs")
    train, val = split_by_source(pairs, cfg.val_fraction, ctx.config.seed)
    train_path = atomic_write_jsonl(out / "train.jsonl", train)
    val_path = atomic_write_jsonl(out / "val.jsonl", val)
    artifact_id = ctx.store.add_artifact(
        "pairs", str(out), content_key(sha256_file(train_path), sha256_file(val_path)), run_id=ctx.run_id,
        meta=report.to_dict(), parents=[dataset["artifact_id"]] if dataset.get("artifact_id") else [])
    info = {"path": str(out), "train": str(train_path), "val": str(val_path), "counts": {"train": len(train),
            "val": len(val)}, "report": report.to_dict(), "artifact_id": artifact_id}
    atomic_write_json(manifest, info)
    return {**info, "reused": False}


def load_pairs(path: str) -> list[dict]:
    pairs = read_jsonl(path)
    validate_pairs(pairs, path)
    return pairs
