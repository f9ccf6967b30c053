"""Generation specs: named categories, each with parameter axes, a prompt template, an output schema and a
target count. Loaded from YAML and validated by pydantic; every problem is reported at once.

A prompt template uses `{axis}` placeholders (Python `str.format`; write `{{`/`}}` for literal braces).
The schema is inline JSON Schema (`schema:`) or a pydantic model reference (`schema_model: module:Class`),
set once for the spec or per category. Schemas are closed by default: an object that does not say otherwise
gets `additionalProperties: false`, so a reply that wraps the answer with extra keys (`{"thought": ...,
"summary": ...}`) never reaches stored data (`open_schema: true` turns this off).

`quality:` names the gates run after the schema (`quality.py`). `documents:` takes the sources from the
user's own file instead of asking the teacher to invent them: every document becomes one parameter
combination (`document_id`), the prompt's `{document}` is its text, and the stored example gets the text
in `documents.field` (the teacher never rewrites the source).
"""

from __future__ import annotations

import hashlib
import importlib
import itertools
import json
import math
import string
from pathlib import Path
from typing import Any, Iterator

import yaml

from faithforge.core import strict_yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from faithforge.core.errors import ConfigError, UserError, validation_message
from faithforge.generation.quality import QualityRules

#: Most parameter combinations one category may have (each gets a coverage row).
MAX_COMBINATIONS = 100_000

Scalar = str | int | float | bool

#: Prompt placeholders a documents spec fills itself (not axes).
DOCUMENT_PLACEHOLDERS = frozenset({"document", "document_id"})


def close_schema(schema: Any) -> Any:
    """`schema` with `additionalProperties: false` on every object schema that does not set it (any depth)."""
    if isinstance(schema, list):
        return [close_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: close_schema(value) if key not in ("enum", "const", "default", "examples") else value
           for key, value in schema.items()}
    if (out.get("type") == "object" or "properties" in out) and "additionalProperties" not in out \
            and "patternProperties" not in out:
        out["additionalProperties"] = False
    return out


def load_schema_model(reference: str) -> dict[str, Any]:
    """The JSON Schema of the pydantic model named `module:Class`."""
    module_name, _, class_name = reference.partition(":")
    if not module_name or not class_name:
        raise ValueError(f"schema_model {reference!r} must look like 'package.module:ClassName'")
    try:
        model = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"schema_model {reference!r} cannot be imported ({exc})") from None
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise ValueError(f"schema_model {reference!r} is not a pydantic model class")
    return model.model_json_schema()


def schema_problems(schema: dict[str, Any]) -> list[str]:
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        return [f"schema is not valid JSON Schema: {exc.message}"]
    if schema.get("type") != "object":
        return ["schema must describe a JSON object (type: object)"]
    return []


def placeholders(template: str) -> set[str]:
    """Names used as `{name}` in `template` (raises ValueError on unbalanced braces)."""
    return {field.split(".")[0].split("[")[0] for _, field, _, _ in string.Formatter().parse(template) if field}


def _fill_once_per_value(prompt: str, axes: dict[str, list[Scalar]]) -> None:
    """Fill `prompt` with every value of every axis (the others at their first): `{}`, `{x.attr}`, `{x[key]}`,
    `{x!z}` or a format spec a value does not take passed the name check and failed at the first request, as a
    traceback (an attack, 2026-12-07). One line: the message may not hold "; " (problems are joined by it)."""
    for _, field, _, _ in string.Formatter().parse(prompt):
        if field is not None and (not field or field.isdigit() or "." in field or "[" in field):  # `{}`, `{0}`,
            # `{x.attr}`, `{x[key]}`: what str.format cannot look up by an axis name (`{tone-of-voice}` it can)
            raise ValueError(f"prompt has {{{field}}}: write {{axis}} with an axis name only (no index, attribute "
                             "or position), and {{ }} for a literal brace")
    first = {name: values[0] for name, values in axes.items() if values}
    first.update({name: "text" for name in DOCUMENT_PLACEHOLDERS})
    for name, value in [(None, None)] + [(n, v) for n, values in axes.items() for v in values[1:]]:
        try:
            prompt.format(**(first if name is None else {**first, name: value}))
        except (IndexError, KeyError, AttributeError, TypeError, ValueError) as exc:
            with_value = "" if name is None else f" with {name}={value!r}"
            raise ValueError(f"prompt cannot be filled{with_value} ({type(exc).__name__}: {exc}): write {{axis}} "
                             "with an axis name only (no index, attribute or conversion), and {{ }} for a literal "
                             "brace") from None


class Category(BaseModel):
    """One kind of example: the axes its parameter combinations are drawn from, its prompt and target."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, use_attribute_docstrings=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    """Identifier, also the sub-folder the category's examples are written to."""
    target: int | None = Field(None, ge=0, le=10_000_000)
    """Examples wanted in this category (a documents spec may leave it out: one per document)."""
    axes: dict[str, list[Scalar]] = Field(default_factory=dict)
    """Parameter axes: name → values. Every combination of one value per axis is a coverage cell."""
    prompt: str = Field(min_length=1)
    """User message template; `{axis}` is replaced by the combination's value."""
    system_prompt: str | None = None
    """System message for this category (default: the spec's)."""
    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    """Output JSON Schema for this category (default: the spec's)."""
    schema_model: str | None = None
    """Output schema as a pydantic model `module:Class` (default: the spec's)."""

    @field_validator("axes")
    @classmethod
    def _axes(cls, axes: dict[str, list[Scalar]]) -> dict[str, list[Scalar]]:
        problems = []
        for axis, values in axes.items():
            if not values:
                problems.append(f"axis {axis!r} has no values")
            elif len({json.dumps(v) for v in values}) != len(values):
                problems.append(f"axis {axis!r} repeats a value")
        size = math.prod(len(v) for v in axes.values()) if axes else 1
        if size > MAX_COMBINATIONS:
            problems.append(f"{size} parameter combinations exceed {MAX_COMBINATIONS}; use fewer axis values")
        if problems:
            raise ValueError("; ".join(problems))
        return axes

    @field_validator("json_schema")
    @classmethod
    def _schema(cls, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        problems = schema_problems(schema) if schema is not None else []
        if problems:
            raise ValueError("; ".join(problems))
        return schema

    @field_validator("schema_model")
    @classmethod
    def _schema_model(cls, reference: str | None) -> str | None:
        if reference is not None:
            load_schema_model(reference)
        return reference

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, prompt: str, info: ValidationInfo) -> str:
        try:
            used = placeholders(prompt)
        except ValueError as exc:
            raise ValueError(f"prompt is not a valid template ({exc}); write {{{{ and }}}} for literal braces") from None
        axes = info.data.get("axes")
        if axes is not None and used - set(axes) - DOCUMENT_PLACEHOLDERS:
            raise ValueError(f"prompt uses {', '.join(sorted(used - set(axes) - DOCUMENT_PLACEHOLDERS))} but the axes are "
                             f"{', '.join(sorted(axes)) or '(none)'}; add the axis or write {{{{ }}}} for a brace")
        if axes is not None:
            _fill_once_per_value(prompt, axes)
        return prompt

    @model_validator(mode="after")
    def _one_schema(self) -> "Category":
        if self.json_schema is not None and self.schema_model is not None:
            raise ValueError("give schema or schema_model, not both")
        return self

    def combinations(self) -> Iterator[dict[str, Scalar]]:
        """Every parameter combination, axes in declared order."""
        names = list(self.axes)
        for values in itertools.product(*(self.axes[n] for n in names)):
            yield dict(zip(names, values))


class DocumentsSource(BaseModel):
    """Sources from the user's own file: the teacher writes summaries of real documents."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    path: str = Field(min_length=1)
    """JSONL, JSON, CSV/TSV or Parquet file, or a `datasets.save_to_disk` folder (relative to the spec file)."""
    text_column: str = "document"
    """Column holding the document text."""
    id_column: str | None = None
    """Column holding a stable id (default: a hash of the text)."""
    field: str = "source_document"
    """Field of the stored example that receives the document text (the teacher is not asked for it)."""
    max_words: int = Field(1500, ge=10, le=200_000)
    """Longest document sent to the teacher, words; a longer one is cut at a sentence end before it (a small
    context window would otherwise truncate the prompt silently)."""


class GenerationSpec(BaseModel):
    """What to generate: categories with axes, prompts, schemas and targets."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, use_attribute_docstrings=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    """Identifier of the dataset; coverage rows and the output folder are keyed by it."""
    description: str = ""
    """What the examples are for."""
    system_prompt: str | None = None
    """Default system message."""
    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    """Default output JSON Schema."""
    schema_model: str | None = None
    """Default output schema as a pydantic model `module:Class`."""
    schema_in_prompt: bool = True
    """Append the schema to every prompt (backends without constrained decoding need it)."""
    open_schema: bool = False
    """Keep object schemas open (extra keys allowed). Off by default: extra keys such as a model's `thought`
    would otherwise be stored as data."""
    quality: QualityRules = Field(default_factory=QualityRules)
    """Content checks after the schema (placeholders, URLs, repeats, lengths, grounding)."""
    documents: DocumentsSource | None = None
    """Take the sources from your own documents file instead of having the teacher invent them."""
    categories: list[Category] = Field(min_length=1)
    """The categories, each with its own target."""

    _documents: dict[str, Any] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> "GenerationSpec":
        problems = []
        names = [c.name for c in self.categories]
        for dup in sorted({n for n in names if names.count(n) > 1}):
            problems.append(f"category name {dup!r} is used twice")
        if self.json_schema is not None and self.schema_model is not None:
            problems.append("give schema or schema_model, not both")
        if self.json_schema is not None:
            problems += schema_problems(self.json_schema)
        if self.schema_model is not None:
            try:
                load_schema_model(self.schema_model)
            except ValueError as exc:
                problems.append(str(exc))
        spec_has_schema = self.json_schema is not None or self.schema_model is not None
        for category in self.categories:
            if not spec_has_schema and category.json_schema is None and category.schema_model is None:
                problems.append(f"category {category.name!r} has no output schema; set schema or schema_model "
                                "on the spec or the category")
            if category.target is None and self.documents is None:
                problems.append(f"category {category.name!r} has no target; give the number of examples wanted")
            try:
                used = placeholders(category.prompt) - set(category.axes)
            except ValueError:
                used = set()
            if self.documents is None and used & DOCUMENT_PLACEHOLDERS:
                problems.append(f"category {category.name!r}: prompt uses {{document}} but the spec has no "
                                "documents; add documents: {path: FILE} or remove the placeholder")
            if self.documents is not None and "document" not in used:
                problems.append(f"category {category.name!r}: a documents spec needs {{document}} in the prompt "
                                "(where the document text goes)")
        if not problems:
            problems += self._quality_field_problems()
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _quality_field_problems(self) -> list[str]:
        """`quality:` names fields of the output schema; one it lacks turned a gate off without a word (a typo in
        `summary: sumary` stored ungrounded summaries as training data: an attack, 2026-12-07)."""
        named = {f"quality.{key}": getattr(self.quality, key) for key in ("source", "summary", "hallucinated",
                                                                         "key_facts")}
        named.update({f"quality.min_words.{key}": key for key in self.quality.min_words})
        fields: set[str] = set()
        for category in self.categories:
            named_here = set(self.declared_schema(category).get("properties") or {})
            if not named_here:
                return []  # a schema without named properties: nothing to check the names against
            fields |= named_here
        fields |= {self.documents.field} if self.documents is not None else set()
        # A name in some categories' schemas only is fine: the gates run where the field exists (a spec of summaries
        # beside questions names `summary` once).
        return [f"{where}: {name!r} is not a field of any category's output schema (fields: "
                f"{', '.join(sorted(fields))})" for where, name in named.items() if name is not None
                and name not in fields]

    # derived ------------------------------------------------------------------------------------
    def category(self, name: str) -> Category:
        for category in self.categories:
            if category.name == name:
                return category
        raise KeyError(name)

    def declared_schema(self, category: Category) -> dict[str, Any]:
        """The category's schema as written (inline or from its pydantic model)."""
        if category.json_schema is not None:
            return category.json_schema
        if category.schema_model is not None:
            return load_schema_model(category.schema_model)
        if self.json_schema is not None:
            return self.json_schema
        return load_schema_model(self.schema_model or "")

    def schema_for(self, category: Category) -> dict[str, Any]:
        """The schema the teacher answers: closed unless `open_schema`; without the documents field."""
        schema = self.declared_schema(category)
        if self.documents is not None:
            name = self.documents.field
            schema = {**schema, "properties": {k: v for k, v in (schema.get("properties") or {}).items() if k != name},
                      "required": [r for r in schema.get("required") or [] if r != name]}
        return schema if self.open_schema else close_schema(schema)

    # documents ------------------------------------------------------------------------------------
    def attach_documents(self, base_dir: Path) -> None:
        """Read the documents file (relative to `base_dir`); raises a `UserError` naming what to fix."""
        if self.documents is None:
            return
        from faithforge.data.documents import read_documents

        path = Path(self.documents.path).expanduser()
        if not path.is_absolute():
            path = base_dir / path
        where = f"spec {self.name}'s documents"  # `generate` has no data.* options (an attack, 2026-12-07)
        docs = read_documents(path, text_column=self.documents.text_column, id_column=self.documents.id_column,
                              allow_duplicates=True,
                              settings={"path": f"{where}.path (or --documents)",
                                        "text_column": f"{where}.text_column", "id_column": f"{where}.id_column"})
        self._documents = {doc.id: doc for doc in docs}

    def document_ids(self) -> list[str]:
        if self.documents is not None and not self._documents:
            raise UserError(f"spec {self.name} takes its sources from {self.documents.path}, which was not read; "
                            "load the spec with load_spec(path)")
        return list(self._documents)

    def document_text(self, document_id: str) -> str:
        """The document's text, cut at a sentence end within `documents.max_words` words."""
        text = self._documents[document_id].text.strip()
        words = text.split()
        limit = self.documents.max_words if self.documents else len(words)
        if len(words) <= limit:
            return text
        cut = " ".join(words[:limit])
        end = max(cut.rfind(". "), cut.rfind("! "), cut.rfind("? "))
        return cut[:end + 1] if end > 0 else cut

    def combinations(self, category: Category) -> Iterator[dict[str, Scalar]]:
        """Every parameter combination of `category` (a documents spec adds one per document)."""
        if self.documents is None:
            yield from category.combinations()
            return
        for params in category.combinations():
            for document_id in self.document_ids():
                yield {**params, "document_id": document_id}

    def complete_payload(self, params: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
        """The stored example: the teacher's answer, plus the real document for a documents spec."""
        if self.documents is None or "document_id" not in params:
            return payload
        return {self.documents.field: self.document_text(str(params["document_id"])), **payload}

    def messages_for(self, category: Category, params: dict[str, Scalar]) -> list[dict[str, str]]:
        """The chat messages for one combination of `category`."""
        values = dict(params)
        if self.documents is not None and "document_id" in params:
            values["document"] = self.document_text(str(params["document_id"]))
        prompt = category.prompt.format(**values)
        if self.schema_in_prompt:
            schema = json.dumps(self.schema_for(category), ensure_ascii=False, sort_keys=True)
            prompt += f"\n\nReply with only one JSON object that matches this JSON Schema:\n{schema}"
        messages = []
        system = category.system_prompt or self.system_prompt
        if system:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": prompt})
        return messages

    def targets(self, total: int | None = None) -> dict[str, int]:
        """Target per category: the spec's, or `total` split in proportion to them (largest remainder)."""
        per_document = len(self._documents) if self.documents is not None else 0
        own = {c.name: c.target if c.target is not None else per_document for c in self.categories}
        if total is None:
            return own
        weights = own if sum(own.values()) > 0 else {name: 1 for name in own}
        whole = sum(weights.values())
        exact = {name: total * w / whole for name, w in weights.items()}
        out = {name: math.floor(v) for name, v in exact.items()}
        left = total - sum(out.values())
        for name in sorted(exact, key=lambda n: (out[n] - exact[n], list(own).index(n)))[:left]:
            out[name] += 1
        return out

    def schema_fingerprints(self) -> dict[str, str]:
        """Per category, a hash of the shape the teacher is asked to answer (sha256 hex): examples made under another
        are of another dataset, even when the spec kept its name. Titles, descriptions and examples are left out:
        a docstring edit of a `schema_model` (or a pydantic upgrade) changes no example's shape."""
        return {c.name: hashlib.sha256(json.dumps(_shape(self.schema_for(c)), sort_keys=True).encode()).hexdigest()
                for c in self.categories}

    def fingerprint(self) -> str:
        """A content hash of the spec (sha256 hex), recorded with the generated examples."""
        body = json.dumps(self.model_dump(mode="json", by_alias=True), sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()


def _shape(schema: Any) -> Any:
    """`schema` without the words that describe it (`title`, `description`, `examples`), at every depth."""
    if isinstance(schema, dict):
        return {k: _shape(v) for k, v in schema.items() if k not in ("title", "description", "examples")}
    if isinstance(schema, list):
        return [_shape(v) for v in schema]
    return schema


def spec_problems(data: dict[str, Any], exc: ValidationError) -> list[str]:
    """One line per problem, located by category name where possible (`categories[dialogue].prompt`)."""
    problems = []
    categories = data.get("categories") if isinstance(data.get("categories"), list) else []
    for err in exc.errors():
        loc = list(err["loc"])
        if len(loc) >= 2 and loc[0] == "categories" and isinstance(loc[1], int) and loc[1] < len(categories):
            entry = categories[loc[1]]
            if isinstance(entry, dict) and entry.get("name"):
                loc[1] = f"[{entry['name']}]"
        where = ".".join(str(p) for p in loc).replace(".[", "[") or "(top level)"
        if err["type"] == "value_error":
            problems.extend(f"{where}: {part}" for part in str(err["ctx"]["error"]).split("; "))
        elif err["type"] == "extra_forbidden":
            nested = {"categories": Category, "quality": QualityRules, "documents": DocumentsSource}
            model = nested.get(str(loc[0]), GenerationSpec) if len(loc) > 1 else GenerationSpec
            known = sorted(f.alias or name for name, f in model.model_fields.items())
            problems.append(f"{where}: unknown option; known options here: {', '.join(known)}")
        else:
            problems.append(f"{where}: {validation_message(err)} (got {err.get('input')!r})"[:300])
    return problems


def parse_spec(data: Any, source: str, base_dir: Path | None = None) -> GenerationSpec:
    """Validate `data`; a documents spec reads its documents (paths relative to `base_dir`, default: cwd)."""
    if not isinstance(data, dict):
        raise UserError(f"spec {source} must hold a mapping (name, categories, ...), not {type(data).__name__}")
    try:
        spec = GenerationSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, spec_problems(data, exc)) from None
    spec.attach_documents(base_dir or Path.cwd())
    return spec


def _bundled_dir() -> Path:
    """The specs FaithForge ships: `configs/specs/` of a checkout (and an editable install), installed by a wheel
    as `faithforge/specs/` (pyproject's package-dir)."""
    package = Path(__file__).resolve().parents[1]
    installed = package / "specs"
    return installed if installed.is_dir() else package.parent / "configs" / "specs"


def bundled_spec(path: Path) -> Path | None:
    """A shipped spec named like `configs/specs/NAME.yaml` (the default `generate.spec`) or `NAME.yaml`, for a run
    started outside a checkout, where the relative path finds nothing; None when there is none of that name."""
    if path.is_absolute() or path.parts[:-1] not in ((), ("configs", "specs")):
        return None
    candidate = _bundled_dir() / path.name
    return candidate if candidate.is_file() else None


def load_spec(path: str | Path, *, documents: str | None = None) -> GenerationSpec:
    """Read and validate a spec YAML file, reporting every problem at once (`ConfigError`). `documents`
    replaces the spec's documents file (relative to the current directory)."""
    file = Path(path)
    if not file.is_file():
        file = bundled_spec(file) or file
    if not file.is_file():
        raise UserError(f"spec file {file} not found; pass a YAML spec such as configs/specs/grounded-summaries.yaml "
                        f"(bundled: {', '.join(p.name for p in sorted(_bundled_dir().glob('*.yaml')))})")
    try:
        # YAML 1.2 scalars, duplicate keys refused, alias expansion bounded (a "billion laughs" spec hung for minutes)
        data = strict_yaml.load(file.read_text(encoding="utf-8"), f"spec file {file}")
    except yaml.YAMLError as exc:
        raise UserError(f"spec file {file} is not valid YAML: {exc}".replace("\n", " ")) from None
    if documents:
        if not isinstance(data, dict) or not isinstance(data.get("documents"), dict):
            raise UserError(f"--documents was given but spec {file} does not take its sources from documents; use a "
                            "spec with a documents: section, such as configs/specs/own-documents.yaml")
        data = {**data, "documents": {**data["documents"], "path": str(Path(documents).expanduser().resolve())}}
    return parse_spec(data, str(file), file.parent)
