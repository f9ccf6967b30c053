"""One generation run from one parameter model: validate → plan → generate → export → release the GPU.

The Prefect flow (`flows/generate.py`, one task per step), `faithforge generate --no-prefect` and the
standalone worker all call these functions with a `GenerateParameters`, so a run means the same thing
however it is started. No Prefect here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, PlainSerializer, PlainValidator, WithJsonSchema

from faithforge.core.backend_registry import BACKENDS
from faithforge.core.errors import UserError
from faithforge.core.registry import load_attribute
from faithforge.backends import ChatBackend, HttpOptions, check_backend_options, make_backend
from faithforge.generation.coverage_db import CoverageDB, another_schema_message, examples_of_another_schema
from faithforge.generation.model_tiers import GateDecision, decide
from faithforge.generation.parameters import GenerateParameters
from faithforge.generation.runner import GenerationOptions, LogCallback, ProgressCallback, default_worker_id, run_generation
from faithforge.generation.spec import GenerationSpec, load_spec
from faithforge.generation.summary import GenerationSummary

PROGRESS_STAGE = "generate"
"""The stage a run's progress and news are reported under in `faithforge.core.progress` (flow and CLI)."""


class GenerationPlan(BaseModel):
    """What `plan` decided for a run: the spec, the model and its settings, and where everything goes.

    Handed from the plan task to the generate and export tasks (JSON-able: `model_dump(mode="json")`)."""

    model_config = ConfigDict(frozen=True)

    spec: str
    """The spec's name (`GenerationSpec.name`)."""
    fingerprint: str
    """The spec's content fingerprint (`GenerationSpec.fingerprint()`), recorded with the export."""
    targets: dict[str, int]
    """Examples wanted per category."""
    decision: GateDecision
    """Model, parallel requests and max tokens (the GPU gate's or the configured ones)."""
    workspace: str
    """The workspace root; empty for a worker given both its database and its examples folder."""
    database_url: str
    """The coverage database (also the run store the export is recorded in)."""
    examples_dir: str
    """The folder the example files are written to."""
    export: str
    """The JSONL file `export` writes."""


class ExportedExamples(BaseModel):
    """The export of a run: one JSONL file with every stored example of the spec."""

    model_config = ConfigDict(frozen=True)

    path: str
    """The JSONL file."""
    examples: int
    """Lines (examples) in it."""
    sha256: Optional[str] = None
    """The file's SHA-256, when the export was recorded in the run store (the flow's export task)."""
    artifact_id: Optional[str] = None
    """The run store's `generated-examples` artifact of the file, when recorded (the flow's export task)."""


def _summary_of(value: Any) -> GenerationSummary:
    return value if isinstance(value, GenerationSummary) else GenerationSummary.from_dict(value)


#: A `GenerationSummary` field: validated from its `to_dict()` form and dumped as it.
SummaryField = Annotated[GenerationSummary, PlainValidator(_summary_of),
                         PlainSerializer(lambda summary: summary.to_dict(), return_type=dict),
                         WithJsonSchema({"type": "object"})]


class GenerationResult(BaseModel):
    """What a whole run returns, the flow and `run` alike."""

    model_config = ConfigDict(frozen=True)

    plan: GenerationPlan
    """The run's plan."""
    summary: SummaryField
    """What was generated, what failed and why, and why the run stopped (dumped as `GenerationSummary.to_dict()`)."""
    export: ExportedExamples
    """The exported JSONL file."""
    unloaded: list[str] = []
    """Ollama models unloaded after the run (`unload_after`)."""


class GenerationFailed(UserError):
    """A run that stored none of the examples it still had to make (the message names the top reasons);
    `result` is the run's result (plan, summary, export) for printing."""

    exit_code = 1

    def __init__(self, message: str, result: GenerationResult | None = None):
        super().__init__(message)
        self.result = result


def load(params: GenerateParameters) -> GenerationSpec:
    return load_spec(params.spec, documents=params.documents)


def validate(params: GenerateParameters) -> GenerationSpec:
    """Everything that can be checked before a run starts; raises a one-line `UserError` saying what to fix."""
    spec = load(params)
    kind = BACKENDS.get(params.backend)
    if kind.server and params.base_url is not None:
        url = urlparse(params.base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise UserError(f"--base-url {params.base_url!r} is not an http(s) URL; give the server root, e.g. "
                            "http://127.0.0.1:11434 (Ollama) or http://127.0.0.1:8000 (OpenAI-compatible)")
    if not (params.database_url and params.examples_dir):
        if not params.workspace.strip():
            raise UserError("--workspace is empty; give a folder for FaithForge's files (e.g. .faithforge), never the "
                            "current directory by omission")
        from faithforge.core.workspace import Workspace

        Workspace.check(params.workspace)  # a file, an unwritable parent: now, not after Prefect has started
    from faithforge.gpu.profiles import known_profiles

    if params.gpu_profile and params.gpu_profile.strip().lower() not in known_profiles():
        raise UserError(f"unknown GPU profile {params.gpu_profile!r}; known profiles: {', '.join(known_profiles())} "
                        "(or leave --gpu-profile out to read the real GPU)")
    if kind.needs_url and not params.base_url:
        raise UserError(f"the {kind.name} backend needs --base-url (the server root it talks to)")
    if kind.model_is_folder and not (Path(params.model).expanduser() / "config.json").is_file():
        raise UserError(f"--model {params.model!r} is not a model folder with a config.json; the {kind.name} backend "
                        "takes the path of a folder written by save_pretrained")
    check_spec = load_attribute(kind, "check_spec", None)  # a backend that writes only some specs refuses others
    if check_spec is not None:
        check_spec(spec)
    # Both were found only after Prefect's server had started and the progress bar was drawn (an attack, 2026-12-07)
    if params.database_url:
        from faithforge.generation.database import make_coverage_engine

        make_coverage_engine(params.database_url).dispose()  # a garbled URL or a missing driver; connects to nothing
    _refuse_another_schema(params, spec)
    check_backend_options(params.backend_options, params.backend)
    return spec


def _refuse_another_schema(params: GenerateParameters, spec: GenerationSpec) -> None:
    """A category edited under its old names with another output schema: its new examples would join the old ones in
    one dataset and count toward the same target (an attack, 2026-12-07). Edits to prompts, axes or quality, and
    new categories, keep the examples made so far, as a rerun after tuning expects. `CoverageDB.sync` checks again
    under the plan's lock (another worker may record a schema meanwhile)."""
    from faithforge.core.store import sqlite_file_missing
    from faithforge.core.workspace import sqlite_url

    url = params.database_url or sqlite_url(Path(params.workspace).expanduser().resolve() / "faithforge.db")
    if sqlite_file_missing(url):
        return  # a new store: nothing made yet (and nothing is created to find that out)
    changes = examples_of_another_schema(url, spec)
    if changes:
        raise UserError(another_schema_message(spec.name, changes))


def resolve_paths(params: GenerateParameters, spec_name: str) -> dict[str, str]:
    """Workspace, database URL, examples folder and export file of a run. A run given both its database and
    its examples folder (a worker) opens no workspace."""
    if params.database_url and params.examples_dir:
        return {"workspace": "", "database_url": params.database_url, "examples_dir": params.examples_dir,
                "export": str(Path(params.examples_dir) / f"{spec_name}.jsonl")}
    from faithforge.core.workspace import Workspace, refuse_links_out

    ws = Workspace.open(params.workspace)
    if not params.examples_dir:
        refuse_links_out(ws.root, f"datasets/generated/{spec_name}")
    return {"workspace": str(ws.root), "database_url": params.database_url or ws.database_url,
            "examples_dir": params.examples_dir or str(ws.dir("datasets") / "generated" / spec_name),
            "export": str(ws.dir("datasets") / f"generated-{spec_name}.jsonl")}


def estimate_prompt_tokens(spec: GenerationSpec) -> int:
    """A rough prompt size for the gate: the longest rendered first prompt, ~3.5 characters per token."""
    longest = max(sum(len(m["content"]) for m in spec.messages_for(c, next(spec.combinations(c))))
                  for c in spec.categories)
    return int(longest / 3.5) + 64


def plan(params: GenerateParameters, spec: GenerationSpec | None = None) -> GenerationPlan:
    """Validate, then decide model, parallel requests and max tokens (GPU gate or configured) and the paths."""
    spec = spec or validate(params)
    if params.use_gpu_gate:
        decision = decide(params.backend, [params.model, *params.fallback_models], batch_size=params.batch_size,
                          max_tokens=params.max_tokens, prompt_tokens=estimate_prompt_tokens(spec),
                          base_url=params.base_url, gpu_profile=params.gpu_profile)
    else:
        decision = GateDecision(model=params.model, batch_size=params.batch_size, max_tokens=params.max_tokens,
                                source="configured", reason="gate turned off")
    return GenerationPlan(spec=spec.name, fingerprint=spec.fingerprint(), targets=spec.targets(params.target),
                          decision=decision, **resolve_paths(params, spec.name))


def planned_num_ctx(params: GenerateParameters, decision: GateDecision) -> int:
    """The context the request sends: the gate's when it sized the server (its KV cache is planned for exactly
    that many tokens, and a different `num_ctx` makes Ollama reload the model, ollama#9977), else the option."""
    return int((decision.plan.num_ctx if decision.plan is not None else None) or params.num_ctx)


def build_backend(params: GenerateParameters, model: str, num_ctx: int | None = None) -> ChatBackend:
    return make_backend(params.backend, model, base_url=params.base_url, num_ctx=num_ctx or params.num_ctx,
                        http=HttpOptions(read_timeout_s=params.read_timeout_s),
                        settings=params.backend_options.get(params.backend))


def build_options(params: GenerateParameters, decision: GateDecision) -> GenerationOptions:
    return GenerationOptions(target=params.target, batch_size=decision.batch_size,
                             max_tokens=decision.max_tokens, temperature=params.temperature, seed=params.seed,
                             claim_ttl_s=params.claim_ttl_s, max_failures=params.max_failures, limit=params.limit,
                             poll_s=params.poll_s, worker_id=params.worker_id or default_worker_id())


def generate(params: GenerateParameters, plan_: GenerationPlan, on_progress: ProgressCallback | None = None,
             log: LogCallback | None = None) -> GenerationSummary:
    """The run itself: fill the targets, then close the backend and the database."""
    spec = load(params)
    backend = build_backend(params, plan_.decision.model, planned_num_ctx(params, plan_.decision))
    db = CoverageDB(plan_.database_url)
    try:
        return run_generation(spec, backend, db, Path(plan_.examples_dir), build_options(params, plan_.decision),
                              on_progress, log)
    finally:
        close = getattr(backend, "close", None)
        if close is not None:
            close()
        db.close()


def export(plan_: GenerationPlan) -> ExportedExamples:
    """Write every stored example of the spec as one JSONL file; returns its path and line count."""
    from faithforge.generation.files import export_jsonl

    db = CoverageDB(plan_.database_url)
    try:
        count = export_jsonl(db, plan_.spec, Path(plan_.export))
    finally:
        db.close()
    return ExportedExamples(path=plan_.export, examples=count)


def releases_gpu(params: GenerateParameters) -> bool:
    """Whether `release` unloads anything: asked to (`unload_after`), by a backend that can."""
    return params.unload_after and BACKENDS.get(params.backend).releases_gpu


def release(params: GenerateParameters, plan_: GenerationPlan) -> list[str]:
    """Unload the run's model from the server's GPU when asked to and the backend can (frees VRAM for a GPU stage:
    the backend module's `release_gpu`); the names unloaded."""
    if not releases_gpu(params):
        return []
    kind = BACKENDS.get(params.backend)
    return load_attribute(kind, "release_gpu")(params.base_url or kind.default_url, [plan_.decision.model])


def failure_of(result: GenerationResult) -> GenerationFailed | None:
    """The failure of a run that stored nothing although examples were still wanted, else None."""
    summary = result.summary
    return GenerationFailed(summary.failure_message(), result) if summary.stored_nothing else None


def run(params: GenerateParameters, on_progress: ProgressCallback | None = None,
        log: LogCallback | None = None) -> GenerationResult:
    """The whole run without Prefect (the CLI's `--no-prefect`); the same result as the flow, and the
    same `GenerationFailed` when nothing was stored."""
    plan_ = plan(params)
    summary = generate(params, plan_, on_progress, log)
    exported = export(plan_)
    unloaded = release(params, plan_)
    result = GenerationResult(plan=plan_, summary=summary, export=exported, unloaded=unloaded)
    failure = failure_of(result)
    if failure is not None:
        raise failure
    return result

