"""Checks of a pipeline configuration that need no model: the CLI runs them before Prefect starts, and a deployed
flow run before its first task (issue 29: the UI and the API skipped them), so bad input costs seconds.

Every check raises a `UserError` (one line, what to fix). A stage would find the same problems, but only
after the server started and earlier stages ran — with Prefect's logs in front of the message.
"""

from __future__ import annotations

from pathlib import Path

from faithforge.core.backend_registry import BACKENDS
from faithforge.core.config import PipelineConfig
from faithforge.core.errors import UserError
from faithforge.core.workspace import Workspace


def check_offload_storage(cfg: PipelineConfig) -> None:
    """Offloading's shared storage, before any stage runs: stages that always offload (`gpu.offload_stages`) need
    a storage URL, and a storage URL must name an fsspec protocol this machine can open. Both were found only at
    the offloaded stage, after generation, the pairs and the reference pass had run (an attack, 2026-12-07). A
    pool that takes only what does not fit here (`gpu.offload_pool` alone) needs storage only if it is used: the
    deployments name one by default, and a run that fits here must not need s3fs installed."""
    from faithforge.offload.dispatch import storage_root
    from faithforge.offload.storage import check_storage_url

    if cfg.gpu.offload_stages:  # a pool used only when a stage does not fit here is checked when it is used
        check_storage_url(storage_root(cfg))  # one line when there is none, or when its protocol cannot be opened


def check_pipeline_inputs(cfg: PipelineConfig, model_folder: bool = True) -> Workspace:
    """Open the workspace and the run store, and check the GPU profile, model folder, judge and data spec.

    `model_folder=False`: every check but the model folder's (`check_model_folder`), for a caller that imports the
    model next: `demo --real` imported SmolLM2 (517 MB, ~15 s) before it found an empty documents file or an nli
    judge without a checkpoint (an attack, 2026-12-07)."""
    from faithforge.evaluation.judge_options import declared_options

    # settings by name first: a typo there needs no workspace, and refused, leaves none behind (an attack, 2026-12-07)
    check_backend_settings(cfg)
    declared_options(cfg.evaluate)  # every judge_options entry, in use or not: a typo fails now
    workspace = Workspace.open(cfg.workspace)
    from faithforge.core.store import Store

    store = Store(cfg.database_url or workspace.database_url)  # a damaged or unreachable store fails here
    store.mark_crashed_runs()
    store.engine.dispose()
    from faithforge.gpu import read_snapshot

    read_snapshot(cfg.gpu.profile)  # an unknown profile name fails here, listing the known ones
    if model_folder:
        check_model_folder(cfg)
    from faithforge.evaluation.judges import judge_names

    if cfg.pairs.builder == "on-policy" and cfg.pairs.score_by == "judge-score":
        from faithforge.core.judge_registry import JUDGES

        chooser = judge_names(cfg.pairs.judge or cfg.evaluate.judge)
        if len(chooser) != 1 or not JUDGES.get(chooser[0]).graded:
            raise UserError(f"pairs.score_by is judge-score but the pairs judge ({', '.join(chooser)}) gives no support "
                            f"score; choose one of {JUDGES.choices(lambda kind: kind.graded)} as pairs.judge, or "
                            "pairs.score_by: verdict")
    from faithforge.evaluation.judge_options import judge_options, pairs_judge_settings

    judge_options(cfg.evaluate)  # nli without a checkpoint, llm without a model: before any training
    if cfg.pairs.builder == "on-policy" and cfg.pairs.judge:
        judge_options(pairs_judge_settings(cfg))  # the pairs judge's too: the pairs stage comes before training
    check_offload_storage(cfg)
    if cfg.train.report_to:
        from faithforge.training.tracking import check_trackers

        check_trackers(cfg.train.report_to)  # a tracker that is not installed: before any training
    ev, gen = cfg.evaluate, cfg.generate
    for option, url, used in (("evaluate.served_base_url", ev.served_base_url, bool(ev.served_model)),
                              ("evaluate.llm_base_url", ev.llm_base_url, "llm" in judge_names(ev.judge)),
                              ("pairs.served_base_url", cfg.pairs.served_base_url, cfg.pairs.sampler == "served"),
                              ("generate.base_url", gen.base_url, BACKENDS.get(gen.backend).server)):
        if used and url:
            from faithforge.backends.http import check_server_answers, check_server_url

            check_server_url(option, url)
            # A server only a late stage needs: asked now, not after the training. Not where the stage may run on
            # an offload pool's machine (its address may be that machine's), nor generation's (it runs first).
            if option != "generate.base_url" and not cfg.gpu.offload_pool:
                check_server_answers(option, url, "the " + option.split(".")[0] + " stage")
    check_data_files(cfg)
    if not BACKENDS.get(cfg.generate.backend).built_in_task:
        from faithforge.generation.spec import load_spec
        from faithforge.stages.generate import generation_parameters

        load_spec(cfg.generate.spec)
        generation_parameters(cfg)  # the generation flow's parameters, validated
    return workspace


def check_backend_settings(cfg: PipelineConfig) -> None:
    """Every `backend_options` entry of the run, in use or not, checked against its backend's `Options` (a typo
    fails before any work), with the key variables of the backends the run uses set on this machine; not the
    evaluate stage's where it may run on an offload pool's machine (its variables are set there, and checked when
    the first request is made). A served model's backend is built too (an openai one without a URL)."""
    from faithforge.backends import check_backend_options, make_backend
    from faithforge.evaluation.judges import judge_names

    ev, gen, here = cfg.evaluate, cfg.generate, not cfg.gpu.offload_pool
    check_backend_options(gen.backend_options, gen.backend, where="generate.backend_options")
    check_backend_options(ev.llm_backend_options, (ev.llm_backend,) if here and "llm" in judge_names(ev.judge) else (),
                          where="evaluate.llm_backend_options")
    check_backend_options(ev.served_backend_options, (ev.served_backend,) if here and ev.served_model else (),
                          where="evaluate.served_backend_options")
    if ev.served_model:
        make_backend(ev.served_backend, ev.served_model, base_url=ev.served_base_url,
                     settings=ev.served_backend_options.get(ev.served_backend), where="evaluate.served_backend_options")


def check_model_folder(cfg: PipelineConfig) -> None:
    """`model.path` is a saved model, and one the configured export can write."""
    if cfg.model.path and not (Path(cfg.model.path).expanduser() / "config.json").is_file():
        raise UserError(f"model.path {cfg.model.path} has no config.json; point it at a folder saved with "
                        "save_pretrained")
    check_export(cfg)


def check_export(cfg: PipelineConfig) -> None:
    """An export to GGUF (or Ollama) of a model llama.cpp cannot read, refused before the training: it failed after
    every other stage had run, and its fix named `model export`'s `--format hf` (an attack, 2026-12-07). The tiny
    model's word tokenizer is no llama.cpp pre-tokenizer; a model folder's type is read from its config.json (its
    tokenizer is checked when the export writes it)."""
    if not cfg.export.enabled or cfg.export.format == "hf":
        return
    fix = "set export.format: hf (merged safetensors for transformers), or export.enabled: false"
    if not cfg.model.path:
        raise UserError(f"export.format {cfg.export.format} needs a model llama.cpp can read; the tiny model's "
                        f"tokenizer is FaithForge's own: {fix} (`faithforge demo --real` trains SmolLM2, which exports "
                        "to GGUF)")
    import json

    from faithforge.training.gguf_writer import ARCHITECTURES

    config_file = Path(cfg.model.path).expanduser() / "config.json"
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (ValueError, AttributeError) as exc:  # not JSON, or JSON that is not an object
        raise UserError(f"model.path {config_file} is not a model's config (not a JSON object: {exc}); point "
                        "model.path at a folder saved with save_pretrained") from None
    if model_type not in ARCHITECTURES:
        raise UserError(f"export.format {cfg.export.format} writes GGUF for model types {', '.join(ARCHITECTURES)}; "
                        f"model.path is {model_type!r}: {fix}")


def check_data_files(cfg: PipelineConfig) -> None:
    """Read the user's documents and pairs files as the stages will (schema, every row, ids, splits), so a bad
    file is one line here instead of a failed stage after Prefect started."""
    if cfg.data.documents_path:
        from faithforge.data.sources import document_splits

        document_splits(cfg)
    if cfg.pairs.path:
        if not Path(cfg.pairs.path).exists():
            raise UserError(f"pairs.path {cfg.pairs.path} does not exist; point it at your pairs file or folder")
        from faithforge.data.pairs import import_pairs, validate_pairs

        validate_pairs(import_pairs(cfg.pairs.path, split=cfg.pairs.path_split), cfg.pairs.path)
