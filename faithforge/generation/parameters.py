"""The parameters of a generation run (one pydantic model: the Prefect UI renders it as a form).

The Prefect flow, `faithforge generate` (with and without Prefect) and the standalone worker all take this
model and hand it to `faithforge.generation.job`; their options take their defaults from here.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from faithforge.core.backend_registry import BACKENDS, BackendName, BackendSettingsByName
from faithforge.core.registry import choices_described


class GenerateParameters(BaseModel):
    """Generate examples from a spec with a local LLM, resumably."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, allow_inf_nan=False)

    spec: str
    """Path of the generation spec YAML (e.g. configs/specs/grounded-summaries.yaml)."""
    backend: BackendName = Field("ollama", json_schema_extra=choices_described(BACKENDS))
    """Who writes the examples."""
    model: str = "qwen3:8b"
    """Model name (Ollama tag, server model id) or, for `transformers`, the model folder."""
    fallback_models: list[str] = Field(default_factory=list)
    """Smaller tiers the GPU gate may pick when `model` does not fit (e.g. qwen3:8b after qwen3:30b-a3b)."""
    target: int | None = Field(None, ge=0, le=10_000_000)
    """Total examples wanted, split over categories in proportion to the spec's targets. Empty: the spec's."""
    base_url: str | None = None
    """Server root (Ollama default http://127.0.0.1:11434; required for `openai`)."""
    backend_options: BackendSettingsByName = {}
    """Settings of a backend that declares its own, by backend name: `{openai: {api_key_env: OPENAI_API_KEY}}`,
    `{ollama: {keep_alive: 1h}}`. Checked against that backend's `Options` before any work (an empty entry: its
    defaults)."""
    batch_size: int = Field(1, ge=1, le=256)
    """Parallel requests wanted (1 = single-example mode); the GPU gate may lower it."""
    max_tokens: int = Field(4000, ge=16, le=262_144)
    """Longest answer per request, tokens; the GPU gate may lower it."""
    temperature: float = Field(0.8, ge=0.0, le=2.0)
    """Sampling temperature (sent explicitly: OpenAI-compatible servers default to 1.0)."""
    num_ctx: int = Field(8192, ge=512, le=1_048_576)
    """Ollama context window, tokens. Constant for the whole run (a change reloads the model)."""
    seed: int = Field(0, ge=0, le=2**32 - 1)
    """Base seed; each slot attempt derives its own."""
    use_gpu_gate: bool = True
    """Ask the GPU gate for model tier, parallel requests and max tokens (when it is installed)."""
    gpu_profile: str | None = None
    """Plan for a named simulated GPU instead of the real one (see `faithforge gpu`)."""
    workspace: str = ".faithforge"
    """Workspace directory; examples go to datasets/generated/<spec name>/."""
    database_url: str | None = None
    """Coverage database (SQLAlchemy URL). Empty: the workspace's SQLite database. Share one PostgreSQL
    URL between machines to split the work."""
    claim_ttl_s: float = Field(120.0, gt=0, le=86_400)
    """Lease of a claimed slot, seconds, renewed by the worker's heartbeat while it runs. A worker that dies on
    this machine loses its slots at once; one that dies elsewhere, when this lease runs out."""
    read_timeout_s: float = Field(300.0, gt=0, le=86_400)
    """Longest silence from the server before a request is retried, seconds (a stalled server is given up on
    after this; the first request may include loading the model). At most a day: the socket's timeout must be a
    finite time."""
    documents: str | None = None
    """A documents file that replaces the spec's `documents.path` (the spec must take its sources from
    documents)."""
    examples_dir: str | None = None
    """Folder the example files are written to. Empty: <workspace>/datasets/generated/<spec name>."""
    worker_id: str | None = None
    """Name of this worker in the coverage database. Empty: host:pid."""
    poll_s: float = Field(1.0, gt=0, le=3_600)
    """Wait between looks for free slots while other workers hold them, seconds."""
    max_failures: int = Field(200, ge=1, le=10_000_000)
    """Failed attempts after which the run stops."""
    limit: int | None = Field(None, ge=1, le=10_000_000)
    """Stop after storing this many new examples (the next run resumes)."""
    unload_after: bool = False
    """Unload the Ollama model when done (frees VRAM before a GPU training stage)."""

    @model_validator(mode="before")
    @classmethod
    def _moved_settings(cls, given: Any) -> Any:
        """What a deployment or a schedule made before 2026-12-07 still sends: the backend then called `local`
        (now `transformers`; the CLI tells a person the new name instead), and the fields that became a backend's own
        settings, each moved to `backend_options` when it belongs to the run's backend (the others were ignored
        then, and are dropped), its default dropped, so those runs keep working."""
        if not isinstance(given, dict):
            return given
        given = dict(given)
        if given.get("backend") in BACKENDS.renamed:
            given["backend"] = BACKENDS.renamed[given["backend"]]
        options = given.get("backend_options") or {}
        if not set(MOVED_TO_BACKEND) & set(given) or not isinstance(options, dict) or not all(
                isinstance(entry, dict) or entry is None for entry in options.values()):
            return given  # nothing moved, or settings pydantic refuses with its own message
        options = {name: dict(entry or {}) for name, entry in options.items()}
        for old, (backend, field) in MOVED_TO_BACKEND.items():
            value = given.pop(old, None)
            if value not in (None, 0, 0.0, "") and backend == given.get("backend"):
                options.setdefault(backend, {}).setdefault(field, value)
        return {**given, "backend_options": options}

    @field_validator("backend_options")
    @classmethod
    def _settings_checked(cls, options: dict) -> dict:
        """Each entry's fields checked against its backend's `Options` here, so a deployment is never made with
        settings every run would refuse (its key variable is checked where the run starts)."""
        from faithforge.backends import check_backend_options
        from faithforge.core.settings import SettingsError

        try:
            check_backend_options(options, ())
        except SettingsError as exc:
            raise ValueError(f"{exc.entry}: {exc.problem}") from None
        return options


#: Fields of these parameters that moved to a backend's own settings: old name → (backend, its setting).
MOVED_TO_BACKEND = {"api_key_env": ("openai", "api_key_env"), "api_key_secret": ("openai", "api_key_secret"),
                    "template_delay_s": ("template", "delay_s")}
