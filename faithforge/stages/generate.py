"""Stage: source documents and reference summaries (train / validation / test) from the template teacher."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from faithforge.stages.context import StageContext, content_key, reads
from faithforge.stages.outputs import DatasetOutput
from faithforge.stages.reuse import claim_output
from faithforge.data.sources import document_splits, task_examples
from faithforge.data.teacher import Example
from faithforge.core.workspace import atomic_directory, atomic_write_jsonl, read_jsonl, sha256_file, sha256_tree

SPLITS = ("train", "val", "test")
TEACHER_VERSION = 1

if TYPE_CHECKING:
    from faithforge.core.config import PipelineConfig
    from faithforge.generation.job import ExportedExamples
    from faithforge.generation.parameters import GenerateParameters


@reads("generate", "data", "seed")
def dataset_dir(ctx: StageContext) -> Path:
    cfg = ctx.config
    key = content_key("dataset", TEACHER_VERSION, cfg.generate.model_dump(exclude={"backend_options"}), cfg.seed,
                      *_documents_key(cfg))
    from faithforge.evaluation.wording import task_words

    return ctx.workspace.dir("datasets") / f"{task_words(cfg).dataset}-{key}"  # e.g. questions-… for grounded-qa


@reads("generate", "data", "seed")
def generate_examples(ctx: StageContext) -> DatasetOutput:
    cfg = ctx.config.generate
    out = dataset_dir(ctx)
    with claim_output("generate", out, "manifest.json", ctx.progress) as claim:
        if claim.reused is not None:
            return DatasetOutput.model_validate(claim.reused)
        documents = document_splits(ctx.config) if ctx.config.data.documents_path else None
        counts = ({s: len(documents[s]) for s in SPLITS} if documents else
                  {"train": cfg.train_sources, "val": cfg.val_sources, "test": cfg.test_sources})
        total = sum(counts.values())
        done = 0
        files = {}
        with atomic_directory(out) as tmp:
            for split in SPLITS:
                rows = []
                examples = documents[split] if documents else task_examples(ctx.config, split, counts[split])
                for example in examples:
                    rows.append(example.to_dict())
                    done += 1
                    if done % 500 == 0 or done == total:
                        ctx.progress("generate", done, total, f"{done}/{total} examples")
                atomic_write_jsonl(tmp / f"{split}.jsonl", rows)
                files[split] = str(out / f"{split}.jsonl")
            digest = content_key(*(sha256_file(tmp / f"{s}.jsonl") for s in SPLITS))
            artifact_id = ctx.store.add_artifact("dataset", str(out), digest, run_id=ctx.run_id,
                                                 meta={"counts": counts, "backend": cfg.backend})
            info = {"path": str(out), "files": files, "counts": counts, "artifact_id": artifact_id, "key": out.name}
            return DatasetOutput.model_validate(claim.finish(tmp, info))


def _documents_key(cfg) -> list:
    """What a dataset built from the user's documents depends on (nothing extra for generated data)."""
    if not cfg.data.documents_path:
        return []
    paths = [cfg.data.documents_path] + ([cfg.data.eval_path] if cfg.data.eval_path else [])
    return [cfg.data.model_dump()] + [(sha256_tree if Path(p).is_dir() else sha256_file)(p) for p in paths]


def load_split(dataset: DatasetOutput, split: str) -> list[Example]:
    return [Example.from_dict(row) for row in read_jsonl(dataset.files[split])]


def generation_parameters(ctx_config: PipelineConfig) -> GenerateParameters:
    """The spec-driven generation flow's parameters for the pipeline's LLM backends."""
    from faithforge.generation.parameters import GenerateParameters

    cfg = ctx_config.generate
    return GenerateParameters(
        spec=cfg.spec, backend=cfg.backend, model=cfg.model, fallback_models=cfg.fallback_models, target=cfg.target,
        base_url=cfg.base_url, backend_options=cfg.backend_options, seed=ctx_config.seed,
        gpu_profile=ctx_config.gpu.profile,
        workspace=ctx_config.workspace, database_url=ctx_config.database_url,
        unload_after=True,  # free the GPU for the training stages that follow
    )


def _split_of(content_hash: str, seed: int, val_share: float, test_share: float) -> str:
    import hashlib

    position = int.from_bytes(hashlib.sha256(f"split:{seed}:{content_hash}".encode()).digest()[:8], "big") / 2**64
    if position < test_share:
        return "test"
    return "val" if position < test_share + val_share else "train"


@reads("generate", "seed")
def import_generated(ctx: StageContext, export: "ExportedExamples") -> DatasetOutput:
    """Turn the generation flow's export (one JSON object per line) into the pipeline's three splits.

    A row becomes an example with the generated `summary` as its faithful summary and its
    `hallucinated_summary` (when present) as the rejected candidate. The split is a deterministic function
    of the content hash, so a later top-up never moves an example from test into training.
    """
    from faithforge.core.errors import UserError

    cfg = ctx.config.generate
    rows = read_jsonl(export.path)
    key = content_key("imported", export.sha256 or sha256_file(export.path), cfg.val_share,
                      cfg.test_share, ctx.config.seed)
    out = ctx.workspace.dir("datasets") / f"generated-{key}"
    with claim_output("generate", out, "manifest.json", ctx.progress) as claim:
        if claim.reused is not None:
            return DatasetOutput.model_validate(claim.reused)
        splits: dict[str, list[dict]] = {s: [] for s in SPLITS}
        for number, row in enumerate(rows, start=1):
            data = row.get("data") or {}
            missing = [f for f in ("source_document", "summary", "key_facts") if not data.get(f)]
            if missing:
                raise UserError(f"{export.path}: line {number} lacks {', '.join(missing)}; the pipeline needs a "
                                "spec whose schema has source_document, summary and key_facts "
                                "(see grounded-summaries.yaml)")
            split = _split_of(row["content_hash"], ctx.config.seed, cfg.val_share, cfg.test_share)
            example = Example(id=row["content_hash"][:16], split=split, category=row.get("category", "all"),
                              source=data["source_document"], faithful=data["summary"],
                              warm_start_reference=data["summary"], facts=None,
                              hallucinated=data.get("hallucinated_summary") or "",
                              key_facts=tuple(data["key_facts"]),
                              extra={"params": row.get("params"), "model": row.get("model")})
            splits[split].append(example.to_dict())
        if not splits["train"] or not splits["test"]:
            raise UserError(f"{export.path} has {len(rows)} examples: too few to split into train and test; "
                            "raise generate.target")
        with atomic_directory(out) as tmp:
            for split, items in splits.items():
                atomic_write_jsonl(tmp / f"{split}.jsonl", items)
            files = {split: str(out / f"{split}.jsonl") for split in splits}
            counts = {split: len(items) for split, items in splits.items()}
            parents = [export.artifact_id] if export.artifact_id else []
            artifact_id = ctx.store.add_artifact("dataset", str(out), key, run_id=ctx.run_id,
                                                 meta={"counts": counts, "backend": cfg.backend}, parents=parents)
            info = {"path": str(out), "files": files, "counts": counts, "artifact_id": artifact_id, "key": out.name}
            return DatasetOutput.model_validate(claim.finish(tmp, info))
