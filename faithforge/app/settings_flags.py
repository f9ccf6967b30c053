"""`--judge-option` and `--backend-option` flags (`NAME.FIELD=VALUE`, repeatable) as a config's settings by entry
name: one parser for both kinds, so a malformed flag, a field given twice, or an entry without settings of its own is
refused in the same words; the entry's `Options` then checks each value (`faithforge.core.settings`)."""

from __future__ import annotations

import json

from faithforge.core.errors import UserError
from faithforge.core.registry import Registry


def settings_flags(flags: list[str], *, flag: str, registry: Registry, chosen: list[str], chosen_flag: str,
                   example: str) -> dict[str, dict]:
    """`flags` as `{name: {field: value}}`. A VALUE stays a string, which the entry's `Options` converts to its
    field's type (`0.3` to a float, `true` to a bool; `0123` stays 123, not octal), except one starting with `[` or
    `{`: JSON (a list or an object). Each flag must name one of `chosen` (the entries `chosen_flag` chose) that has
    settings of its own; `example` shows the form in the message of a malformed flag. A message names the flag's
    `NAME.FIELD`, never its value (which may be a secret)."""
    options: dict[str, dict] = {}
    for given in flags:
        target, equals, value = given.partition("=")
        name, dot, field = target.partition(".")
        if not (equals and dot and name and field):
            raise UserError(f"{flag} expects NAME.FIELD=VALUE (e.g. {example}), got {target!r}"
                            + ("" if equals else " with no =VALUE"))
        if name not in chosen:
            raise UserError(f"{flag} {target} names {name}, which is not among {chosen_flag} ({', '.join(chosen)})")
        if not registry.get(name).own_settings:
            raise UserError(f"{flag} {target}: the {name} {registry.kind} has no settings of its own; set it with "
                            "this command's own flags (--help lists them)")
        if field in options.get(name, {}):
            raise UserError(f"{flag} {name}.{field} is given twice; give each setting once")
        if value.lstrip().startswith(("[", "{")):
            try:
                value = json.loads(value)
            except ValueError as exc:
                raise UserError(f"{flag} {target}: the value is not JSON ({exc}); write a list as [1, 2] and an "
                                'object as {"key": 1}') from None
        options.setdefault(name, {})[field] = value
    return options
