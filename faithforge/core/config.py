"""Typed configuration for every stage.

One pydantic model per stage, composed into `PipelineConfig`. The same models are the Prefect flows'
parameters, so the UI renders them as forms: the docstring under each field becomes its description,
`Literal` becomes a drop-down, and bounds become limits.

Loading order (later wins): the model defaults → a YAML file (`configs/*.yaml`) → environment
variables `FAITHFORGE_<FIELD>` or `FAITHFORGE_<SECTION>__<FIELD>` (e.g. `FAITHFORGE_TRAIN__STEPS=64`)
→ explicit overrides from the CLI. Validation reports every problem at once, before any work starts.
"""

from __future__ import annotations

import os
import re
import types
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from faithforge.core import strict_yaml
from faithforge.core.backend_registry import (BACKENDS, PLAIN_SAMPLING, BackendName, FlowBackendSettingsByName,
                                              ServerBackendName, ServerBackendSettingsByName)
from faithforge.core.judge_registry import (DEFAULT_JUDGE, JUDGE_RULES, JUDGES, JudgeName, JudgeSettingsByName,
                                            SampleJudgeName)
from faithforge.core.errors import ConfigError, UserError, given_input, validation_message
from faithforge.core.registry import choices_described

#: The largest config file read (a configuration is a few kilobytes).
MAX_CONFIG_BYTES = 1 << 20


def clip_text(text: str, limit: int) -> str:
    """`text` on one line, cut to `limit` characters."""
    text = " ".join(text[: 4 * limit].split())
    return text if len(text) <= limit else text[:limit] + "…"

ENV_PREFIX = "FAITHFORGE_"

#: `FAITHFORGE_*` variables that are not configuration options: each is read by one tool.
TOOL_VARIABLES = {
    "FAITHFORGE_CONFIG": "the CLI's config file when --config is not given",
    "FAITHFORGE_GPU_PROFILE": "the GPU probe's named card in place of NVML (gpu/profiles.py)",
}
#: Variables of the test suite and benchmarks (e.g. FAITHFORGE_TEST_POSTGRES_URL): never configuration.
TEST_VARIABLE_PREFIX = "FAITHFORGE_TEST_"


def _number(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


def _limits(prop: dict[str, Any]) -> str:
    """`≥ 1, ≤ 1,000,000` from a JSON-schema property (also inside `anyOf`, as for optional fields)."""
    signs = (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<"))
    for option in [prop, *prop.get("anyOf", [])]:
        found = [f"{sign} {_number(option[key])}" for key, sign in signs if key in option]
        if found:
            return ", ".join(found)
    return ""


def _limits_in_descriptions(schema: dict[str, Any], _model: type) -> None:
    """The Prefect UI's form shows a field's description but not its bounds: write the bounds into it."""
    for prop in schema.get("properties", {}).values():
        limits = _limits(prop)
        if limits and prop.get("description") and "Limits:" not in prop["description"]:
            prop["description"] = f"{prop['description']} Limits: {limits}."


class Section(BaseModel):
    """Base for every config section: unknown options are errors, attribute docstrings are descriptions (with
    the field's bounds added in the JSON schema, which is what the Prefect UI's form shows)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True,
                              json_schema_extra=_limits_in_descriptions)

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_are_numbers(cls, value: Any, info) -> Any:
        # pydantic's lax mode turns `true` into 1 and the string "1_0" into 10 (YAML 1.1 habits): a number
        # option takes a number, written plainly.
        field = cls.model_fields.get(info.field_name)
        if field is None or not _numeric(field.annotation):
            return value
        if isinstance(value, bool):
            raise ValueError("takes a number, not a boolean (yes/no/true/false)")
        if isinstance(value, str) and not _PLAIN_NUMBER.fullmatch(value.strip()):
            raise ValueError("takes a plain number, not text or 1_000-style underscores")
        return value


_UnionType = types.UnionType
_PLAIN_NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?")


def _numeric(annotation: Any) -> bool:
    """Whether a field holds an int or a float (alone or optional), not a bool."""
    import typing

    options = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, _UnionType) else (annotation,)
    return any(option in (int, float) for option in options)


class TinyModelConfig(Section):
    """Shape of the random-init Llama that `faithforge tiny-model` builds for offline runs and tests."""

    hidden_size: int = Field(128, ge=8, le=4096)
    """Width of the residual stream."""
    num_layers: int = Field(2, ge=1, le=64)
    """Number of decoder layers."""
    num_heads: int = Field(4, ge=1, le=64)
    """Attention heads (also key/value heads: no grouped-query attention in the tiny model)."""
    intermediate_size: int = Field(256, ge=8, le=65536)
    """Width of the MLP."""
    max_position_embeddings: int = Field(128, ge=16, le=131072)
    """Longest sequence, in tokens, the model is built for."""

    @model_validator(mode="after")
    def _heads_divide_width(self) -> "TinyModelConfig":
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be a multiple of num_heads ({self.num_heads})")
        return self


class ModelConfig(Section):
    """The model that is trained and evaluated."""

    path: str | None = None
    """A local folder with `config.json` and weights (your own SFT model). Empty: build and use the tiny
    offline model in the workspace (`models/tiny`)."""
    tiny: TinyModelConfig = TinyModelConfig()
    """Shape of the tiny model, used only when `path` is empty."""


class GenerateConfig(Section):
    """Data generation: where source documents and reference summaries come from."""

    task: Literal["summaries", "grounded-qa"] = "summaries"
    """The `template` backend's task. `summaries`: one-event documents whose day is sometimes missing (the tiny
    demo). `grounded-qa`: questions about three-person documents, 70% of which ask for a fact the document
    does not state (the real-model demo, `faithforge demo --real`: SmolLM2 answers them anyway)."""
    backend: BackendName = Field("template", json_schema_extra=choices_described(BACKENDS))
    """Who writes the data. The built-in offline teacher (`template`: deterministic, no model needed; the demo)
    writes the built-in task in process; any other backend runs the spec-driven generation flow as a subflow, and
    its examples are split into train / validation / test by content hash."""
    spec: str = "configs/specs/grounded-summaries.yaml"
    """Generation spec for LLM backends (must produce source_document, summary, key_facts and, for pairs,
    hallucinated_summary)."""
    model: str = "qwen3:8b"
    """LLM backends: the model (Ollama tag, server model id, or for `transformers` a model folder)."""
    fallback_models: list[str] = []
    """Smaller tiers the GPU gate may pick when `model` does not fit (e.g. `qwen3:8b` after `qwen3:30b-a3b`)."""
    base_url: str | None = None
    """LLM backends: the server root (Ollama default http://127.0.0.1:11434; required for `openai`)."""
    backend_options: FlowBackendSettingsByName = {}
    """LLM backends: settings of a backend that declares its own, by backend name: `{openai: {api_key_env:
    OPENAI_API_KEY}}`, `{ollama: {keep_alive: 1h}}`. Checked against that backend's `Options` before any work (an
    empty entry: its defaults); not part of the dataset's identity (where a key is kept does not change the
    examples)."""
    target: int = Field(1000, ge=10, le=10_000_000)
    """LLM backends: total examples to generate (a rerun tops up to this)."""
    val_share: float = Field(0.1, ge=0.0, lt=0.5)
    """LLM backends: share of examples held out for validation."""
    test_share: float = Field(0.2, gt=0.0, lt=0.5)
    """LLM backends: share of examples held out for the final evaluation."""
    train_sources: int = Field(2000, ge=10, le=1_000_000)
    """Source documents for warm-start and preference training."""
    val_sources: int = Field(300, ge=10, le=100_000)
    """Source documents held out for choosing hyperparameters."""
    test_sources: int = Field(500, ge=10, le=100_000)
    """Source documents held out for the final before/after evaluation (never used in training)."""
    omitted_fact_share: float = Field(0.5, ge=0.0, le=1.0)
    """Share of sources that do not state the day. Their warm-start reference summary still states one,
    as in XSum, which is what teaches a summarizer to invent facts."""


class PairsConfig(Section):
    """Preference pairs built from the generated examples."""

    builder: Literal["synthetic", "on-policy"] = "synthetic"
    """`synthetic`: chosen = faithful summary, rejected = the generator's hallucinated variant (plus the
    omission variants below). `on-policy`: sample `samples_per_source` outputs (summaries, or answers on a
    question-answering task) from the warm-started model, judge them, and pair the most faithful against the least
    faithful when their scores differ by `margin`."""
    samples_per_source: int = Field(4, ge=2, le=64)
    """`on-policy`: outputs (summaries or answers) sampled per source."""
    temperature: float = Field(1.0, gt=0.0, le=5.0)
    """`on-policy`: sampling temperature."""
    sample_seed: int | None = Field(None, ge=0, le=2**32 - 1)
    """`on-policy`: seed of the samples (None: the run's `seed`). Another value draws other pairs from the same
    policy and data, to see how far one draw moves the rates (BENCHMARKS.md: further than their interval)."""
    score_by: Literal["verdict", "judge-score"] = "verdict"
    """`on-policy`: what ranks a source's samples. `verdict`: 1 when the judge flags nothing, else 0; `judge-score`:
    the judge's own support score (a graded judge: `likelihood` — weakest sentence's log-probability per token,
    nats — or `trained` / `nli` — support probability), so samples the judge flags alike still rank. Either way
    plus key-fact recall. On real news `likelihood` flags most long summaries: by verdict 30 of 31 sources gave
    no pair (BENCHMARKS.md)."""
    margin: float = Field(0.5, ge=0.0, le=100.0)
    """`on-policy`: smallest score difference (judge verdict + key-fact recall) that makes a pair."""
    min_chosen_recall: float = Field(0.0, ge=0.0, le=1.0)
    """`on-policy`: on a source with key facts (e.g. an answerable question), the chosen sample must recall at least
    this share of them; 1.0 keeps a faithful non-answer from being chosen over a wrong answer, which teaches the
    model to stop answering. Sources without key facts are unaffected."""
    omission_pairs: bool = False
    """`on-policy`: on a source with key facts, also pair the chosen sample against the faithful sample that
    recalls least (an evasive non-answer), so saying less loses where there is an answer to give."""
    faithful_chosen: bool = False
    """`on-policy`: the chosen sample must be one the judge flags nothing in; otherwise a sample that states the
    answer and invents a detail can win over a wrong answer, and training raises the invention with it."""
    judge: SampleJudgeName | None = Field(None, json_schema_extra=choices_described(JUDGES, lambda k: k.scores_samples))
    """`on-policy`: the judge that scores the samples; empty uses `evaluate.judge`. `grounded-qa` also flags a value
    given to the wrong person ("Nia sold 5 books." when Wim sold them), which `grounding` lets through.
    `likelihood` scores with the policy being sampled (or `evaluate.likelihood_model`) and its `evaluate.likelihood_*`
    settings: on real text it scores in degrees where `grounding` rarely flags anything. Choose a judge of another
    family for `evaluate.judge`, or the rate measures what DPO was trained to please."""
    omission_share: float = Field(1.0, ge=0.0, le=1.0)
    """Share of the sources that state a day which also get a pair whose rejected summary drops that day, so
    that the model cannot lower its hallucination rate by saying less."""
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    """Share of training sources whose pairs are kept for validation (split by source)."""
    path: str | None = None
    """Existing preference pairs to train on instead of building them: TRL's standard or conversational format
    or plain `{prompt, chosen, rejected}` triplets, as JSONL, JSON, CSV, Parquet or a `save_to_disk` folder.
    Missing ids and source ids are derived from the content; pairs are split by source (`val_fraction`)."""
    path_split: str | None = None
    """`path` is a `DatasetDict` folder: the split to read (e.g. `train`)."""
    sampler: Literal["auto", "engine", "engine-bf16", "served"] = "auto"
    """`on-policy`: what samples the outputs. `auto`: llama.cpp when the stage runs on the CPU and the policy (a
    llama-family folder) is written as an f16 GGUF from its own weights into the workspace's `cache/gguf` (or was
    imported from a GGUF), the prefix-cached engine otherwise;
    `engine`: always the prefix-cached engine; `engine-bf16`: the engine with the weights in bfloat16 on a CPU
    plan (about 2× the tokens/s where the CPU has native bfloat16; the samples move slightly). The choice is
    recorded in the pairs report. `served`: the policy as an OpenAI-compatible server serves it (`served_model`:
    vLLM on a GPU, llama.cpp's server), `served_concurrency` requests in flight, with the fields that turn the
    server's own sampling defaults off; its greedy answers to 8 sources are compared with the local model's
    first, and a server whose answers are not the policy's is refused."""
    served_model: str | None = None
    """`sampler: served`: the model name the OpenAI-compatible server answers to, serving exactly the policy's
    weights (e.g. `vllm serve MODEL_PATH --served-model-name NAME` on `model.path`)."""
    served_base_url: str | None = None
    """`sampler: served`: the server root (e.g. http://127.0.0.1:8000/v1 for vLLM)."""
    served_server: Literal[tuple(PLAIN_SAMPLING)] = "vllm"  # type: ignore[valid-type]
    """`sampler: served`: which server it is, for the fields that turn its own sampling defaults off
    (llama-cpp-python's server: top-k 40, top-p 0.95, min-p 0.05, repeat penalty 1.1; vLLM: the model's
    generation_config) so the samples are the policy's distribution at `temperature`."""
    served_concurrency: int = Field(16, ge=1, le=1024)
    """`sampler: served`: requests in flight (vLLM batches them). llama-cpp-python's server interrupts a running
    request when another arrives and returns the interrupted one empty: such answers are asked again alone, but 1
    (or `--interrupt_requests False` on the server) wastes nothing there."""

    @model_validator(mode="after")
    def _served_needs_a_server(self) -> "PairsConfig":
        missing = [name for name in ("served_model", "served_base_url") if not getattr(self, name)]
        if self.sampler == "served" and missing:
            raise ValueError(f"pairs.sampler is served but pairs.{missing[0]} is empty: name the model the server "
                             "serves (the policy's weights) and the server root (e.g. http://127.0.0.1:8000/v1)")
        return self


class DataConfig(Section):
    """Your own documents as the sources the pipeline trains and evaluates on (instead of generated ones)."""

    documents_path: str | None = None
    """JSONL, JSON, CSV or Parquet file or `save_to_disk` folder of documents. Split by document id into train /
    validation / test (`generate.val_share`, `generate.test_share`) unless `eval_path` holds the test set.
    Pairs come from your model's own samples (`pairs.builder: on-policy`) or from `pairs.path`."""
    eval_path: str | None = None
    """A held-out evaluation file (same columns): the before/after rates are measured on it, and the overlap
    guard refuses it if any of its documents also occurs in the training data."""
    text_column: str = "document"
    """The column that holds the document text (the user message the model answers)."""
    id_column: str | None = None
    """The column that holds a document id. Empty: ids are derived from the text (SHA-256)."""
    key_facts_column: str | None = None
    """A column of facts a good answer keeps (a list, or text separated by `;`), for recall. Empty: content
    retention is reported instead."""
    split: str | None = None
    """The split to read when a path is a `DatasetDict` folder."""
    max_document_chars: int = Field(100_000, ge=100, le=100_000_000)
    """The longest document, in characters, refused with its file and line before any work: a prompt must fit the
    model's context (SmolLM2: 8,192 tokens, ~32,000 characters of English), and a 47 MB document was tokenized for
    minutes before the run failed. Raise it for a long-context model."""
    system_prompt: str | None = None
    """The instruction every stage gives the model with each document (sampling, evaluation). Empty: "Summarize
    the document. State only facts the document states." (`demo --real --documents` asks for at most three
    sentences)."""


class WarmStartConfig(Section):
    """A short supervised fine-tune so the tiny model can summarize at all (skip it for your own SFT model)."""

    enabled: bool = True
    """Run the warm start. Turn off when `model.path` already points at an SFT model."""
    steps: int = Field(600, ge=1, le=1_000_000)
    """Optimizer steps."""
    batch_size: int = Field(32, ge=1, le=4096)
    """Examples per step."""
    learning_rate: float = Field(1e-3, gt=0, le=1.0)
    """AdamW learning rate."""
    checkpoint_every: int = Field(100, ge=1, le=1_000_000)
    """Save a resumable checkpoint (weights, optimizer, step, RNG) every this many steps; a killed warm start
    resumes from the newest one. Not part of the output's key: it does not change the result."""


class ReferenceConfig(Section):
    """The reference log-prob pass: run once, stored on disk, consumed by training."""

    batch_size: int = Field(64, ge=1, le=4096)
    """Pairs per forward pass (the GPU gate may lower it)."""
    max_length: int = Field(128, ge=8, le=131072)
    """Prompt + completion tokens kept per sequence; longer pairs are truncated from the prompt's start."""
    shard_size: int = Field(512, ge=1, le=1_000_000)
    """Pairs per cache shard; a killed run resumes from the last complete shard."""


class TrainConfig(Section):
    """DPO training of LoRA adapters on top of the (4-bit where supported) policy."""

    steps: int = Field(128, ge=1, le=1_000_000)
    """Optimizer steps."""
    batch_size: int = Field(16, ge=1, le=4096)
    """Effective batch in pairs per optimizer step (micro-batch × gradient accumulation, set by the gate)."""
    learning_rate: float = Field(1e-3, gt=0, le=1.0)
    """AdamW learning rate for the LoRA weights."""
    beta: float = Field(0.1, gt=0, le=10.0)
    """DPO temperature β: how far the policy may move from the reference."""
    sft_weight: float = Field(0.5, ge=0.0, le=100.0)
    """Weight of an NLL term on the chosen summary added to the DPO loss (TRL `loss_type=["sigmoid", "sft"]`,
    the RPO objective). Without it, DPO on the demo task lowered the likelihood of faithful summaries too and
    dropped facts (validation recall 0.94); 0 gives pure DPO."""
    lora_r: int = Field(16, ge=1, le=1024)
    """LoRA rank."""
    lora_alpha: int = Field(16, ge=1, le=65536)
    """LoRA scaling numerator (scale = alpha / r)."""
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout on the LoRA input."""
    checkpoint_every: int = Field(32, ge=1, le=1_000_000)
    """Save a resumable checkpoint every this many steps."""
    save_merged: bool = False
    """Also save a standalone model with the adapter folded into the 16-bit base (`<adapter>/merged`), e.g. to
    import into Ollama; the adapter in peft's format is always saved."""
    quantization: Literal["auto", "nf4", "none"] = "auto"
    """`nf4`: load the policy in 4-bit NF4 with double quantization (bitsandbytes). `auto`: NF4 on a CUDA
    GPU, full precision on CPU. `none`: never quantize."""
    report_to: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(default_factory=list)
    """Send the training curves (DPO through TRL's own reporting callbacks, the warm start, the SFT control) and
    the run's results (rates with intervals, the judge and its accuracy, GPU plans and measured peaks) to these
    trackers, one tracker run per FaithForge run: TensorBoard under `<workspace>/tracking/tensorboard`, MLflow at
    `MLFLOW_TRACKING_URI` or `<workspace>/tracking/mlflow.db`, W&B offline unless `WANDB_MODE` says otherwise.
    Empty: none. Install with `pip install 'faithforge[track]'`."""


class ControlConfig(Section):
    """An honest baseline trained beside DPO."""

    sft_on_chosen: bool = True
    """Also train a LoRA SFT on the chosen summaries with the same steps, batch and rank, and report it."""


class EvaluateConfig(Section):
    """Before/after hallucination evaluation on held-out sources."""

    judge: JudgeName | list[JudgeName] = Field(DEFAULT_JUDGE, json_schema_extra=choices_described(JUDGES))
    """How a summary is judged: one registered judge, or a list (`[grounding, nli]`) combined by `judge_rule`,
    each judge's rate reported beside the combined one. Measured: `grounding` is a cheap filter (balanced
    accuracy 0.60 on human-labeled news summaries; it misses changed relations, negations, invented events);
    `grounded-qa` has precision 0.91, recall 0.97 on 60 held-out labeled SmolLM2 answers. Judges that need a
    model or a server read the settings below named after them."""
    nli_checkpoint: str | None = None
    """`nli`: folder or hub id of a sequence-classification model or a seq2seq yes/no checker (required for `nli`)."""
    nli_trust_remote_code: bool = False
    """`nli`: allow a checkpoint that ships its own Python code (HHEM-2.1-open); it runs that code: read it first."""
    nli_threshold: float = Field(0.5, ge=0.0, le=1.0)
    """`nli`: a sentence is supported when its best-chunk support probability reaches this (calibrate it with
    `faithforge eval calibrate`)."""
    nli_supported_label: int | None = Field(None, ge=0, le=1000)
    """`nli`: index of the label that means "supported" (empty: read from the checkpoint's labels)."""
    llm_backend: ServerBackendName = Field("ollama", json_schema_extra=choices_described(BACKENDS, lambda k: k.server))
    """`llm`: which server the judge model runs on."""
    llm_model: str = "qwen3:8b"
    """`llm`: the judge model."""
    llm_base_url: str | None = None
    """`llm`: the server root (Ollama default http://127.0.0.1:11434; required for `openai`)."""
    served_model: str | None = None
    """Also evaluate a model served by Ollama or an OpenAI-compatible server (e.g. your merged model after
    `ollama create`), with the same fixed prompt at temperature 0, compared against the model before DPO."""
    served_backend: ServerBackendName = Field("ollama", json_schema_extra=choices_described(BACKENDS, lambda k: k.server))
    """Where `served_model` runs."""
    served_base_url: str | None = None
    """The server root for `served_model` (Ollama default http://127.0.0.1:11434; required for `openai`)."""
    llm_backend_options: ServerBackendSettingsByName = {}
    """`llm`: settings of `llm_backend` when it declares its own, by backend name: `{openai: {api_key_env:
    OPENAI_API_KEY}}` for a judge model behind a cloud API. Checked before any model runs; not part of a verdict's
    identity (where a key is kept does not change what the model says)."""
    served_backend_options: ServerBackendSettingsByName = {}
    """Settings of `served_backend` when it declares its own, by backend name (`{ollama: {keep_alive: 5m}}`): its
    own, never the judge's (a cloud key must not reach a local server)."""
    split: Literal["test", "val"] = "test"
    """Which held-out split is evaluated. `test` for the figures you report; `val` while choosing settings
    (training steps, learning rate, β, a prompt), so the test split never chooses anything."""
    likelihood_model: str | None = None
    """`likelihood`: the folder of the causal LM that scores summaries (empty: the run's base model)."""
    likelihood_feature: Literal["cond", "pmi"] = "cond"
    """`likelihood`: a sentence's score: `cond`, mean log p(token | source), or `pmi`, what the source adds over
    the same tokens without it (nats per token)."""
    likelihood_threshold: float | None = Field(None, ge=-100.0, le=100.0)
    """`likelihood`: a sentence scoring below this is flagged (nats per token; empty: the value chosen for
    SmolLM2-135M on the development half of the QAGS human labels). Calibrate it for your model and text."""
    likelihood_window_tokens: int = Field(1024, ge=16, le=131072)
    """`likelihood`: a source longer than this many tokens is read in overlapping windows; each sentence keeps
    the window that makes it most likely."""
    likelihood_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """`likelihood`: the scoring model's weights on CPU. `auto`: bfloat16 where the CPU has it natively (about
    1.8× faster, scores within 0.04 nats of float32), else float32. A GPU always scores in bfloat16."""
    trained_judge_path: str | None = None
    """`trained`: the folder `faithforge judge train --documents FILE` wrote (MiniLM features and a head trained on
    corruptions of your own documents, with its lineage)."""
    judge_options: JudgeSettingsByName = {}
    """Settings of a judge whose module declares its own (`Options`), by judge name: `{my-judge: {threshold: 0.3}}`.
    Checked against that model before any model runs (an empty entry: its defaults); the built-in judges read the
    fields above instead."""
    judge_rule: Literal[tuple(JUDGE_RULES)] = "any"  # type: ignore[valid-type]
    """How a judge list decides: `any` flags what any judge flags; `all` what every judge flags; `logistic`
    applies the combination fitted on labels in `judge_combination`."""
    judge_combination: str | None = None
    """`logistic`: the JSON file of a combination fitted on development labels (`faithforge eval
    fit-combination --labels FILE --judge ... --out FILE`, or bench/judges_real_text.py)."""
    worst_examples: int = Field(5, ge=0, le=100)
    """Flagged summaries shown per model in the report."""
    max_new_tokens: int = Field(32, ge=1, le=32768)
    """Longest summary generated, in tokens."""
    batch_size: int = Field(128, ge=1, le=4096)
    """Summaries generated per batch."""
    bootstrap_samples: int = Field(2000, ge=100, le=1_000_000)
    """Resamples for the paired bootstrap confidence interval."""
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    """Confidence level of the interval."""
    sampler: Literal["auto", "engine", "engine-bf16"] = "auto"
    """What writes the models' answers. `auto`: llama.cpp when the stage runs on the CPU and *every* evaluated model
    (base + adapter, merged in float32) is written as an f16 GGUF (the base into the workspace's `cache/gguf`, the
    trained models into a folder removed after the stage): one engine for all, so the models differ only by their
    weights; 1.53x the float32 engine's speed at 64 new tokens, no faster at 40 once the files are written; 196 of
    200 greedy answers token-identical to it (bench/sampler_gguf.py). The prefix-cached engine otherwise.
    `engine-bf16`: the engine with every model's (merged) weights in bfloat16 on a CPU plan: about 2× faster where
    the CPU has native bfloat16, 56 of 64 greedy answers token-identical to float32 (bench/engine_bf16.py). Recorded in the output."""

    @field_validator("judge")
    @classmethod
    def _judge_list(cls, value: Any) -> Any:
        if isinstance(value, list) and (not value or len(set(value)) != len(value)):
            raise ValueError("list each judge once, at least one (e.g. [grounding, nli])")
        return value[0] if isinstance(value, list) and len(value) == 1 else value


class GpuConfig(Section):
    """The GPU gate in front of every stage."""

    profile: str | None = None
    """Replace the NVML reading with a named simulated GPU (`faithforge gpu --help` lists them). Empty: read
    the real GPU; no GPU means CPU placement."""
    policy: Literal["stay-local", "keep-model"] = "stay-local"
    """When the preferred model does not fit here: `stay-local` takes the largest candidate that fits;
    `keep-model` offloads the preferred model to the A100 pool."""
    offload_pool: str | None = None
    """Prefect work pool that runs offloaded stages (e.g. `a100`). Empty: offloading is not configured."""
    offload_stages: list[Literal["reference", "train", "evaluate"]] = []
    """Stages that always run on `offload_pool`, whatever fits here (e.g. `[train]` when you rent a GPU for
    training only). Empty: the gate offloads only what does not fit."""
    offload_timeout_s: float = Field(600.0, gt=0, le=86400)
    """Seconds to wait for a worker of the offload pool to start an offloaded stage before failing with how to
    start one (once a worker has started it, the pipeline waits for it to finish)."""
    concurrency_limit: str = "gpu"
    """Prefect global concurrency limit a local GPU stage holds one slot of (one GPU job at a time per worker;
    give each machine its own, e.g. `gpu-a100`)."""
    require_concurrency_limit: bool = False
    """Take the GPU slot strictly (a missing limit is an error) even outside deployed runs; deployed runs are
    always strict."""
    offload_profile: str = "a100-40gb"
    """What the offload pool's GPU looks like (a profile name), for planning the offloaded stage."""
    generation_models: list[str] = []
    """Ollama tags the generate stage may use, preferred first (e.g. `qwen3:30b-a3b`, `qwen3:8b`). Empty: the
    offline template teacher, which needs no GPU."""
    generation_batch_size: int = Field(8, ge=1, le=1024)
    """Examples per generation call the user asks for; the gate lowers it (1 = single-example mode)."""
    generation_max_tokens: int = Field(4096, ge=1, le=262144)
    """Max new tokens per generated example the user asks for."""
    generation_min_max_tokens: int = Field(4096, ge=1, le=262144)
    """The gate may cut max new tokens down to this, not further."""
    generation_prompt_tokens: int = Field(2048, ge=1, le=262144)
    """Prompt tokens per generation request (system prompt + parameters), for the KV-cache estimate."""
    sizing_model: str | None = None
    """Plan with this model's shape (a config.json folder or a shipped name such as `qwen2.5-7b`) instead of
    `model.path` — for "what if" planning."""
    cpu_max_params: int = Field(1_000_000_000, ge=0, le=10**13)
    """Models up to this many parameters may run on the CPU when no GPU fits them."""
    ref_strategy: Literal["auto", "cached", "live"] = "cached"
    """How training gets reference log-probs. `cached`: the reference stage computes them once (FaithForge's
    pipeline always does); `live`/`auto` only matter for planning other trainers."""
    calibration_file: str | None = None
    """Measured correction factors (`faithforge gpu calibrate`). Empty: `<workspace>/gpu_calibration.json`."""

    @model_validator(mode="after")
    def _offload_stages_need_a_pool(self) -> "GpuConfig":
        if self.offload_stages and not self.offload_pool:
            raise ValueError(f"offload_stages {self.offload_stages} needs offload_pool (e.g. a100): the work pool "
                             "that runs them")
        return self


class DistributedConfig(Section):
    """More than one process for a stage: DDP / FSDP training and the sharded reference pass under torchrun, and the
    judging of evaluation answers fanned out as mapped Prefect tasks."""

    max_gpus: int = Field(0, ge=0, le=1024)
    """GPUs a node plan may use for train and reference (0: every visible GPU; 1: always one process). The gate
    chooses DDP when each GPU holds the one-GPU plan, FSDP when only several together hold the model."""
    cpu_processes: int = Field(1, ge=1, le=64)
    """Without a GPU, train and the reference pass run as this many gloo DDP processes (1: one process). It proves
    the multi-process path on any machine; it speeds nothing up on a few cores. `train.batch_size` must divide by
    it (the global batch is kept)."""
    rank_callbacks: list[str] = Field(default_factory=list)
    """`module:factory` names; each rank of a training group calls `factory(spec)` and adds the returned
    transformers `TrainerCallback` to its trainer (custom logging, fault drills). Empty: none."""
    judge_runner: Literal["serial", "threads", "dask"] = "serial"
    """How evaluation judges the answers: `serial` in the stage's process; `threads` as mapped Prefect tasks on a
    thread pool (judges that wait on a server: `llm`); `dask` as mapped Prefect tasks on a Dask LocalCluster of
    `judge_workers` processes (CPU-bound judges: `nli`, `likelihood`, `trained`). Results are identical to `serial`:
    each item is judged alone and the reports are built in item order. `dask` needs `pip install
    'faithforge[distributed]'`."""
    judge_workers: int = Field(2, ge=1, le=1024)
    """Threads or Dask worker processes for `judge_runner`."""
    judge_chunk: int = Field(32, ge=1, le=100_000)
    """Answers per mapped judging task (one task per chunk keeps Prefect's overhead per item small)."""

    @field_validator("rank_callbacks")
    @classmethod
    def _callbacks_are_module_attr(cls, value: list[str]) -> list[str]:
        bad = [v for v in value if not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", v)]
        if bad:
            raise ValueError(f"each callback is `module:factory` (e.g. mypkg.hooks:make_callback), got {bad[0]!r}")
        return value


class LabelConfig(Section):
    """People's labels on the run's outputs, asked for in the Prefect UI after evaluate (off by default)."""

    enabled: bool = False
    """After evaluate, pause the run and show outputs as a form in the Prefect UI (source excerpt, output, the
    judge's flagged spans, a choice per output); submitted labels are saved in the workspace, the judge is
    re-calibrated on them and the report gains "judge accuracy on your labels"."""
    items: int = Field(20, ge=1, le=10_000)
    """Outputs to ask about, drawn shuffled from every evaluated model (which model wrote each is not shown)."""
    batch_size: int = Field(10, ge=1, le=100)
    """Outputs per form: the run pauses once per batch."""
    timeout_s: int = Field(3600, ge=1, le=7 * 24 * 3600)
    """Seconds a form waits for someone; then the run continues, "unlabeled" (it never hangs)."""
    poll_s: int = Field(5, ge=1, le=600)
    """How often the paused run checks for a submitted form, in seconds."""


class ExportConfig(Section):
    """Ship the trained model at the end of the run (`faithforge model export` as a pipeline stage)."""

    enabled: bool = False
    """Export the DPO adapter merged into its base, verified by serving it, into `<workspace>/exports/<run id>`."""
    format: Literal["hf", "gguf", "ollama"] = "ollama"
    """`hf`: merged safetensors for transformers; `gguf`: llama.cpp's format; `ollama`: GGUF + Modelfile."""
    quant: list[Literal["f16", "q8_0", "q4_k_m"]] = Field(default_factory=lambda: ["f16", "q4_k_m"])
    """GGUF types to write (f16 is always written and verified; the others are quantized from it)."""


class PipelineConfig(Section):
    """Everything one FaithForge run needs."""

    # minLength/pattern in the schema: the Prefect API (enforce_parameter_schema) and the UI's form refuse an empty
    # or blank workspace before a run is created; the validator below says the same in words to the CLI.
    workspace: str = Field(".faithforge", json_schema_extra={"minLength": 1, "pattern": r"\S"})
    """Directory for datasets, caches, checkpoints, adapters, reports and the SQLite database."""

    @field_validator("workspace")
    @classmethod
    def _workspace_is_named(cls, value: str) -> str:
        # An empty name would silently mean the current directory, which FaithForge does not own.
        if not value.strip():
            raise ValueError("must name a directory, not be empty (an empty workspace would be the current "
                             "directory); e.g. .faithforge")
        from faithforge.core.workspace import name_problem

        problem = name_problem(value)
        if problem:
            raise ValueError(problem)
        return value
    database_url: str | None = None
    """SQLAlchemy URL of the run store (e.g. `postgresql+psycopg://...`). Empty: SQLite in the workspace."""
    storage_url: str | None = None
    """Where stage inputs and outputs are shared with other machines (fsspec URL). Empty: the workspace."""
    seed: int = Field(0, ge=0, le=2**32 - 1)
    """Seed for data, initialization, training and bootstrap."""
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    generate: GenerateConfig = GenerateConfig()
    pairs: PairsConfig = PairsConfig()
    warm_start: WarmStartConfig = WarmStartConfig()
    reference: ReferenceConfig = ReferenceConfig()
    train: TrainConfig = TrainConfig()
    control: ControlConfig = ControlConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    gpu: GpuConfig = GpuConfig()
    distributed: DistributedConfig = DistributedConfig()
    label: LabelConfig = LabelConfig()
    export: ExportConfig = ExportConfig()

    @model_validator(mode="after")
    def _batch_splits_over_cpu_processes(self) -> "PipelineConfig":
        n = self.distributed.cpu_processes
        if self.train.batch_size % n:
            raise ValueError(f"train.batch_size {self.train.batch_size} does not split over distributed.cpu_processes "
                             f"{n}: choose a batch divisible by {n} (the global batch is kept across processes)")
        return self

    @model_validator(mode="after")
    def _own_documents_need_pairs_from_somewhere(self) -> "PipelineConfig":
        # The user's documents come without reference answers: nothing to warm-start on, no synthetic variants.
        if self.data.documents_path:
            if self.warm_start.enabled:
                raise ValueError("data.documents_path has no reference answers to warm-start on; set "
                                 "warm_start.enabled: false (and model.path to your SFT model)")
            if self.pairs.builder == "synthetic" and not self.pairs.path:
                raise ValueError("data.documents_path needs pairs from your model's own samples or a file: set "
                                 "pairs.builder: on-policy, or pairs.path")
        if self.data.eval_path and not self.data.documents_path:
            raise ValueError("data.eval_path is the held-out file for data.documents_path; set documents_path too")
        if self.data.key_facts_column and not self.data.documents_path:
            raise ValueError("data.key_facts_column names a column of data.documents_path; set documents_path too "
                             "(generated sources carry their own key facts)")
        return self


def _set_path(tree: dict[str, Any], dotted: list[str], value: Any) -> None:
    node = tree
    for key in dotted[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[dotted[-1]] = value


def _option_value(dotted: list[str], raw: str, source: str) -> Any:
    """A command-line or environment value for the option at `dotted`: text options literally (`run #2` is not a
    YAML comment, a newline stays), anything else as one strict YAML scalar (the empty string is null)."""
    if raw != "" and _is_text(dotted):
        return raw
    try:
        return strict_yaml.load(raw, source) if raw != "" else None
    except yaml.YAMLError:
        return raw  # validation then names the option and what it expects


def assignment_overrides(assignments: list[str], flag: str = "--set") -> dict[str, Any]:
    """`["train.steps=64", "evaluate.judge=[grounding]"]` → `{"train": {"steps": 64}, "evaluate": {...}}`, by the
    same value rules as the `FAITHFORGE_SECTION__FIELD` variables. An unknown option is reported by validation
    with the others; a malformed assignment is refused here in one line."""
    tree: dict[str, Any] = {}
    for assignment in assignments:
        key, sign, raw = assignment.partition("=")
        dotted = [part.strip() for part in key.split(".")]
        if not sign or not all(dotted):
            raise UserError(f"{flag} {clip_text(assignment, 80)!r}: write it as section.field=value (e.g. "
                            "train.steps=64 or evaluate.judge=[grounding])")
        _set_path(tree, dotted, _option_value(dotted, raw, f"{flag} {dotted[-1]}"))
    return tree


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """`FAITHFORGE_TRAIN__STEPS=64` → `{"train": {"steps": 64}}`; values are parsed as YAML scalars.

    Only variables whose first part names a config field are configuration; other `FAITHFORGE_*` variables
    belong to tools (`FAITHFORGE_GPU_PROFILE` for the probe, `FAITHFORGE_CONFIG` for the CLI, test settings).
    An unknown option *inside* a section (`FAITHFORGE_TRAIN__EPOCHS`) is still an error, and so is an unknown
    section before a `__` (`FAITHFORGE_TRAINN__STEPS`): no tool's variable has one, so it can only be a typo. So is
    any other `FAITHFORGE_*` name that is neither an option, a tool's (`TOOL_VARIABLES`) nor a test's: a misspelled
    `FAITHFORGE_WORKSPAC=/data/ff` once left the default workspace in use without a word.
    """
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name in TOOL_VARIABLES or name.startswith(TEST_VARIABLE_PREFIX):
            continue
        dotted = [part.lower() for part in name[len(ENV_PREFIX):].split("__") if part]
        if len(dotted) > 1 and dotted[0] not in PipelineConfig.model_fields:
            sections = sorted(k for k, f in PipelineConfig.model_fields.items() if hasattr(f.annotation, "model_fields"))
            raise UserError(f"{name}: no config section {dotted[0]!r}; write FAITHFORGE_SECTION__FIELD with one of "
                            f"{', '.join(s.upper() for s in sections)} (or unset it)")
        if not dotted or dotted[0] not in PipelineConfig.model_fields:
            raise UserError(_unknown_variable(name))
        _set_path(tree, dotted, _option_value(dotted, raw, name))
    return tree


def _unknown_variable(name: str) -> str:
    """The one line for a `FAITHFORGE_*` variable nobody reads, with the closest known name."""
    import difflib

    known = [ENV_PREFIX + field.upper() for field in PipelineConfig.model_fields] + list(TOOL_VARIABLES)
    for section, info in PipelineConfig.model_fields.items():  # FAITHFORGE_TRAIN_STEPS: one underscore short
        known += [f"{ENV_PREFIX}{section.upper()}__{field.upper()}"
                  for field in getattr(info.annotation, "model_fields", {})]
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
    if close:
        return f"{name}: FaithForge reads no such variable; did you mean {close[0]}? (or unset it)"
    plain = [ENV_PREFIX + field.upper() for field, info in PipelineConfig.model_fields.items()
             if not hasattr(info.annotation, "model_fields")]
    return (f"{name}: FaithForge reads no such variable; it reads FAITHFORGE_SECTION__FIELD (e.g. "
            f"FAITHFORGE_TRAIN__STEPS), {', '.join(plain + list(TOOL_VARIABLES))} (or unset it)")


def _is_text(dotted: list[str]) -> bool:
    """Whether the option at `dotted` holds text (`str` or `str | None`), not a number, list or choice."""
    import typing

    model: Any = PipelineConfig
    for part in dotted:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return False
        model = field.annotation
    options = typing.get_args(model) if typing.get_origin(model) in (typing.Union, _UnionType) else (model,)
    return str in options and all(option in (str, type(None)) for option in options)


def deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _known_fields(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The option names valid at `loc` (for 'unknown option' messages)."""
    current: Any = model
    for part in loc[:-1]:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = field.annotation
    return sorted(getattr(current, "model_fields", {}))


def format_validation_error(model: type[BaseModel], exc: ValidationError) -> list[str]:
    problems = []
    seen: set[tuple] = set()
    for err in exc.errors():
        # A union field (`judge: name | list[name]`) fails once per branch, each tagged `literal[...]` /
        # `list[...]` in its location: report the field once, with the first branch's message.
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
        if loc in seen:
            continue
        seen.add(loc)
        where = ".".join(str(p) for p in loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            known = _known_fields(model, loc)
            problems.append(f"{where}: unknown option; known options here: {', '.join(known)}")
        else:
            problems.append(f"{where}: {validation_message(err)}{given_input(err)}")
    return problems


def validate_config(data: Mapping[str, Any], source: str = "configuration") -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(source, format_validation_error(PipelineConfig, exc)) from None


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    base: Mapping[str, Any] | None = None,
) -> PipelineConfig:
    """Defaults ← `base` (a preset, e.g. `demo --real`) ← YAML file ← `FAITHFORGE_*` environment ← `overrides`,
    validated all at once."""
    data: dict[str, Any] = deep_merge({}, base or {})
    source = "defaults"
    if path is not None:
        file = Path(path)
        if file.is_dir():
            raise UserError(f"config file {file} is a directory; pass a YAML file (see configs/demo.yaml)")
        if not file.exists():
            raise UserError(f"config file {file} not found; pass an existing YAML file (see configs/demo.yaml)")
        try:
            # Read at most one byte past the limit, from a regular file or a pipe alike (`-c <(…)` works): a
            # device such as /dev/zero, or a huge file, is refused without reading it whole.
            with open(file, "rb") as handle:
                raw = handle.read(MAX_CONFIG_BYTES + 1)
            if len(raw) > MAX_CONFIG_BYTES:
                kind = "a regular file" if file.is_file() else "not a regular file"
                raise UserError(f"config file {file} ({kind}) holds over {MAX_CONFIG_BYTES:,} bytes; a configuration "
                                "is a few kilobytes: pass the right YAML file")
            loaded = strict_yaml.load(raw.decode("utf-8"), f"config file {file}") or {}
        except UnicodeDecodeError as exc:
            raise UserError(f"config file {file} is not UTF-8 text (byte {exc.object[exc.start:exc.start + 1]!r} at "
                            f"position {exc.start}); save it as UTF-8") from None
        except OSError as exc:
            raise UserError(f"cannot read config file {file} ({exc.strerror or exc}); check its permissions") from None
        except yaml.YAMLError as exc:
            raise UserError(f"config file {file} is not valid YAML: {clip_text(str(exc), 300)}") from None
        if not isinstance(loaded, dict):
            raise UserError(f"config file {file} must hold a mapping of options, not {type(loaded).__name__}")
        data = deep_merge(data, loaded)
        source = str(file)
    env = env_overrides(os.environ if environ is None else environ)
    if env:
        data = deep_merge(data, env)
        source += " + FAITHFORGE_* environment"
    if overrides:
        data = deep_merge(data, overrides)
        source += " + command-line options"
    return validate_config(data, source)
