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
        """The entry called `name`, or a one-line `UserError` listing the choices."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise UserError(f"unknown {self.kind} {name!r}; choose one of {', '.join(self._entries)}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[E]:
        return iter(tuple(self._entries.values()))

    def choices(self, where: Callable[[E], bool] | None = None) -> str:
        """The names (those `where` accepts), comma-separated, for a help text or a message."""
        return ", ".join(e.name for e in self if where is None or where(e))


def load_attribute(entry: Entry, attribute: str, default: Any = ...) -> Any:
    """`entry.module`'s `attribute` (the module is imported now, not when the registry is read); `default` when
    the module does not define it (an optional hook), an AttributeError without a default. A module that does not
    import (a package it needs is missing) is a one-line `UserError` naming the entry."""
    try:
        module = importlib.import_module(entry.module)
    except ImportError as exc:
        raise UserError(f"{entry.name!r} cannot be used: its module {entry.module} does not import "
                        f"({' '.join(str(exc).split())}); install what it needs") from exc
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
            raise ValueError(f"unknown {label} {value!r}; choose one of {registry.choices(where)}")
        return value

    return Annotated[str, AfterValidator(check), _EnumFromRegistry(registry, where)]
