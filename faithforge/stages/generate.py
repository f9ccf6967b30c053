"""Stage: source documents and reference summaries (train / validation / test) from the template teacher."""

from __future__ import annotations

import json
from pathlib import Path

from faithforge.stages.context import StageContext, content_key
from faithforge.teacher import Example, generate_split
from faithforge.workspace import atomic_write_json, atomic_write_jsonl, read_jsonl, sha256_file

SPLITS = ("train", "val", "test")
TEACHER_VERSION = 1


def dataset_dir(ctx: StageContext) -> Path:
    cfg = ctx.config
    key = content_key("dataset", TEACHER_VERSION, cfg.generate.model_dump(), cfg.seed)
    return ctx.workspace.dir("datasets") / f"summaries-{key}"


def generate_examples(ctx: StageContext) -> dict:
    cfg = ctx.config.generate
    out = dataset_dir(ctx)
    manifest = out / "manifest.json"
    if manifest.exists():
        info = json.loads(manifest.read_text())
        info["reused"] = True
        return info
    counts = {"train": cfg.train_sources, "val": cfg.val_sources, "test": cfg.test_sources}
    total = sum(counts.values())
    done = 0
    files = {}
    for split in SPLITS:
        rows = []
        for example in generate_split(split, counts[split], ctx.config.seed, cfg.omitted_fact_share):
            rows.append(example.to_dict())
            done += 1
            if done % 500 == 0 or done == total:
                ctx.progress("generate", done, total, f"{done}/{total} examples")
        path = atomic_write_jsonl(out / f"{split}.jsonl", rows)
        files[split] = str(path)
    digest = content_key(*(sha256_file(files[s]) for s in SPLITS))
    artifact_id = ctx.store.add_artifact("dataset", str(out), digest, run_id=ctx.run_id,
                                         meta={"counts": counts, "backend": cfg.backend})
    info = {"path": str(out), "files": files, "counts": counts, "artifact_id": artifact_id, "key": out.name}
    atomic_write_json(manifest, info)
    info["reused"] = False
    return info


def load_split(dataset: dict, split: str) -> list[Example]:
    return [Example.from_dict(row) for row in read_jsonl(dataset["files"][split])]
