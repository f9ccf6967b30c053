"""A registered entry's own settings (a judge's, a chat backend's): the user's dict checked against the `Options`
model its module declares, every problem in one line, before any work.

One room for both kinds, so a judge and a backend refuse a typo, read the UI form's masked secret and accept a
field's alias the same way; each kind names its config field in `where` (`evaluate.judge_options.NAME`).
"""

from __future__ import annotations

from typing import Any

from faithforge.core.errors import UserError, validation_message


class SettingsError(UserError):
    """A bad setting of an entry with settings of its own, named as the config does (`where`: `evaluate.judge_options.
    my-judge`); `entry` and `problem` let the CLI name it as the flag that set it (`--judge-option NAME: …`)."""

    def __init__(self, where: str, entry: str, problem: str):
        super().__init__(f"{where}: {problem}")
        self.where, self.entry, self.problem = where, entry, problem


def validated_settings(model, given: dict | None, *, where: str, entry: str, kind: str) -> dict:
    """`given` checked against `model` (a pydantic `Options`): its keywords (every field by its name, defaults filled
    in, excluded fields too), or a `SettingsError` naming every bad field (`validated_model`)."""
    validated = validated_model(model, given, where=where, entry=entry, kind=kind)
    settings = validated.model_dump()
    settings.update({f: getattr(validated, f) for f, info in model.model_fields.items() if info.exclude})
    return settings


def validated_model(model, given: dict | None, *, where: str, entry: str, kind: str):
    """`given` checked against `model` (a pydantic `Options`), validated once: the instance, or a `SettingsError`
    naming every bad field. A field may be given by its name or its alias (the UI form writes the alias); a secret
    left as the form shows it (its mask) is not set. `kind` and `entry` word the message ("the my-judge judge
    takes …")."""
    from pydantic import ValidationError

    names = _field_names(model)
    given = {k: v for k, v in (given or {}).items() if not _masked_secret(model, names.get(k), v)}
    unknown = sorted(set(given) - set(names))  # a typo never passes silently, whatever the model says
    if unknown:
        raise SettingsError(where, entry, f"unknown setting {', '.join(unknown)}; the {entry} {kind} takes "
                                          f"{', '.join(model.model_fields) or 'none'}")
    try:
        validated = model.model_validate(given, by_alias=True, by_name=True)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(options)'}: {validation_message(e)}"
                             for e in exc.errors())
        raise SettingsError(where, entry, problems) from None
    kept = {**validated.model_dump(), **{f: None for f, info in model.model_fields.items() if info.exclude}}
    dropped = _dropped_keys({names[k]: v for k, v in given.items()}, kept)  # a nested model that ignores unknown
    if dropped:                                                            # keys: a typo would pass
        raise SettingsError(where, entry, f"unknown setting {', '.join(dropped)}; the {entry} {kind}'s Options has "
                                          "no such field")
    return validated


def _masked_secret(model, field: str | None, value: Any) -> bool:
    """The UI form's value of a secret left as shown: pydantic's mask of its default, which means "not set" (the
    default then applies), never the secret itself."""
    from pydantic import SecretBytes, SecretStr

    annotation = model.model_fields[field].annotation if field else None
    return value == "**********" and annotation in (SecretStr, SecretBytes)


def _field_names(model) -> dict[str, str]:
    """Every key that sets a field of `model` (its name, its alias) → the field's name."""
    keys = {}
    for field, info in model.model_fields.items():
        keys[field] = field
        for alias in (info.alias, info.validation_alias):
            if isinstance(alias, str):
                keys[alias] = field
    return keys


def _dropped_keys(given: Any, kept: Any, where: str = "") -> list[str]:
    """Keys of `given` (nested dicts) that validation did not keep, as dotted paths."""
    if not (isinstance(given, dict) and isinstance(kept, dict)):
        return []
    dropped = []
    for key, value in given.items():
        path = f"{where}{key}"
        dropped += [path] if key not in kept else _dropped_keys(value, kept[key], f"{path}.")
    return dropped
