"""One registry per pluggable kind (judges, chat backends): a name is registered once, and everything that lists
names — config validation, the Prefect UI form's enum, the CLI's help and checks, preflight, the report — reads
the registry instead of keeping its own list.

A registry holds light entries (a name, where the implementation lives, what it needs); the implementation module is
imported only when an entry is built, so listing names never imports torch. `registered_name(registry)` is the
pydantic type of a config field that takes one of the registry's names: it is checked against the registry when a
value is validated, and its JSON-schema enum (the UI form's choices) is read from the registry when the schema is
made, so a name registered later is accepted and offered without touching the config class.
"""

from __future__ import annotations

import copy
import importlib
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Generic, Iterator, Protocol, TypeVar

from pydantic import AfterValidator

from faithforge.core.errors import UserError


class Entry(Protocol):
    name: str
    module: str


E = TypeVar("E", bound=Entry)


class Registry(Generic[E]):
    """Names → entries of one kind, in registration order (the order the help and the form list them in)."""

    def __init__(self, kind: str):
        self.kind = kind
        """What an entry is, in the words of an error message ("judge", "backend")."""
        self._entries: dict[str, E] = {}
        self.renamed: dict[str, str] = {}
        """Old name → the name that replaced it: written by a user, the old one is refused with the new one."""

    def register(self, entry: E) -> E:
        """Add `entry`; a second entry with the same name is a programming error (two rooms for one name)."""
        if entry.name in self._entries:
            raise ValueError(f"{self.kind} {entry.name!r} is registered twice")
        self._entries[entry.name] = entry
        return entry

    def unregister(self, name: str) -> None:
        """Remove `name` (tests that register a throwaway entry clean up with this)."""
        self._entries.pop(name, None)

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def get(self, name: str) -> E:
        """The entry called `name`, or a one-line `UserError` listing the choices (or naming the new name of a
        renamed one)."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise UserError(self.unknown(name)) from None

    def unknown(self, name: object, label: str = "", choices: str = "",
                allowed: Callable[[str], bool] | None = None) -> str:
        """What to say about `name`, which is not a registered `label` (default: the kind): its new name if it was
        renamed (and the new one is `allowed` where it was written), else the choices (default: every name)."""
        if isinstance(name, str) and name in self.renamed and (allowed is None or allowed(self.renamed[name])):
            return f"the {label or self.kind} {name!r} is now called {self.renamed[name]!r}; write {self.renamed[name]}"
        return f"unknown {label or self.kind} {name!r}; choose one of {choices or ', '.join(self._entries)}"

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[E]:
        return iter(tuple(self._entries.values()))

    def choices(self, where: Callable[[E], bool] | None = None) -> str:
        """The names (those `where` accepts), comma-separated, for a help text or a message."""
        return ", ".join(e.name for e in self if where is None or where(e))


def load_attribute(entry: Entry, attribute: str, default: Any = ...) -> Any:
    """`entry.module`'s `attribute` (the module is imported now, not when the registry is read); `default` when
    the module does not define it (an optional hook), an AttributeError without a default. A package the module
    needs that is not installed is a one-line `UserError` naming the entry; any other import error (the module
    itself missing, a name it imports from FaithForge) is a programming error and keeps its traceback."""
    try:
        module = importlib.import_module(entry.module)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        own = missing == entry.module or entry.module.startswith(missing + ".")  # the module or its package
        if not missing or own or missing.split(".")[0] == "faithforge":
            raise
        raise UserError(f"{entry.name!r} cannot be used: its module {entry.module} needs the package {missing}, "
                        "which is not installed; install it") from exc
    return getattr(module, attribute) if default is ... else getattr(module, attribute, default)


@dataclass(frozen=True)
class _EnumFromRegistry:
    """Pydantic JSON-schema hook: the field's enum is the registry's names (filtered) when the schema is made."""

    registry: Registry
    where: Callable[[Any], bool] | None

    def __get_pydantic_json_schema__(self, core_schema, handler):
        schema = handler(core_schema)
        schema["enum"] = [e.name for e in self.registry if self.where is None or self.where(e)]
        return schema


def choices_described(registry: Registry, where: Callable[[Any], bool] | None = None) -> Callable[[dict], None]:
    """A field's `json_schema_extra`: appends each registered name with its one-line summary to the field's
    description when the schema is made, so the UI form's help lists what the registry holds now (a hand-written
    list in a field's docstring had already left a judge out)."""
    def extend(schema: dict) -> None:
        listed = "; ".join(f"`{e.name}`: {e.summary}" for e in registry if where is None or where(e))
        schema["description"] = (schema.get("description", "").rstrip() + f"\n\nChoices: {listed}.").lstrip()

    return extend


def registered_name(registry: Registry, where: Callable[[Any], bool] | None = None, what: str = "",
                    when_none: str = "") -> Any:
    """The pydantic type of a field naming one entry of `registry` (those `where` accepts): a `str` checked
    against the registry at validation time, with the registry's names as its JSON-schema enum. `when_none`: what
    to do instead when no entry is accepted at all (an empty list of choices says nothing)."""
    label = what or registry.kind

    def check(value: str) -> str:
        if value not in registry or (where is not None and not where(registry.get(value))):
            if not any(where is None or where(entry) for entry in registry):
                raise ValueError(f"unknown {label} {value!r}: none is registered" + (f"; {when_none}" if when_none
                                                                                   else ""))
            raise ValueError(registry.unknown(value, label, registry.choices(where),
                                              allowed=lambda new: where is None or where(registry.get(new))))
        return value

    return Annotated[str, AfterValidator(check), _EnumFromRegistry(registry, where)]


@dataclass(frozen=True)
class SettingsForm:
    """Pydantic JSON-schema hook of a field holding settings by entry name (`evaluate.judge_options`): a property
    per entry `where` accepts, holding the fields of its module's `Options` model (types, limits, defaults,
    docstrings), read from the registry when the schema is made. The UI form then shows each entry's settings as
    fields instead of one JSON object; each starts at None (its defaults, checked only if the run uses it), so an
    untouched form submits nothing a run could trip on. A module that cannot give a schema keeps the plain object,
    and the run's preflight names its error."""

    registry: Registry
    where: Callable[[Any], bool]

    def __get_pydantic_json_schema__(self, core_schema, handler):
        schema = handler(core_schema)
        entries = {}
        for entry in self.registry:
            form = _options_form(entry) if self.where(entry) else None
            if form is not None:
                entries[entry.name] = {"anyOf": [form, {"type": "null"}], "default": None, "title": entry.name,
                                       "description": getattr(entry, "summary", "")}
        if entries:
            schema["properties"] = entries
        return schema


def _options_form(entry: Entry) -> dict[str, Any] | None:
    """The form of `entry`'s `Options` (inlined), or None when its module does not import or its `Options` is not a
    pydantic model with a JSON schema. A secret keeps its masked default (`**********`): Prefect's UI fails the
    whole form on a secret field without one; `evaluation.judge_options` reads the mask back as "not set"."""
    try:
        raw = load_attribute(entry, "Options").model_json_schema()
    except (ImportError, UserError, AttributeError, TypeError, ValueError):
        return None
    form = _inlined(raw)
    form["title"] = "settings"  # the form's toggle: settings | None
    return form


def _inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with each `{"$ref": "#/$defs/X"}` replaced by X itself: an `Options` schema placed inside the
    config's, whose own definitions do not hold X. A model that refers to itself becomes a plain object where it
    recurs (a JSON field in the form), and a discriminator keeps only its property name (its mapping pointed into
    the dropped definitions)."""
    definitions = schema.get("$defs", {})

    def resolve(node: Any, seen: tuple[str, ...]) -> Any:
        if isinstance(node, list):
            return [resolve(item, seen) for item in node]
        if not isinstance(node, dict):
            return node
        reference = node.get("$ref", "")
        name = reference.removeprefix("#/$defs/")
        rest = {k: v for k, v in node.items() if k != "$ref"}
        if reference.startswith("#/$defs/") and name in definitions and name not in seen:
            return {**resolve(copy.deepcopy(definitions[name]), (*seen, name)), **resolve(rest, seen)}
        if reference.startswith("#/$defs/"):
            return resolve(rest, seen) or {"type": "object"}
        out = {k: resolve(v, seen) for k, v in node.items() if k != "$defs"}
        if isinstance(out.get("discriminator"), dict):
            out["discriminator"] = {k: v for k, v in out["discriminator"].items() if k != "mapping"}
        return out

    return resolve(schema, ())

