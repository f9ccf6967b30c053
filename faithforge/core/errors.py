"""Errors a user can act on.

A `UserError` carries a one-line message that says what to fix. The CLI prints it and exits with a
non-zero status instead of showing a traceback. The GPU gate (`gpu/`, which imports nothing of the application)
has its own `GpuGateError`; `USER_ERRORS` is both, and every place that turns an error into one line for a person
(the CLI, a flow run's problem line, the generation worker) catches `USER_ERRORS`.
"""

from __future__ import annotations

import re

from faithforge.gpu.errors import GpuGateError

__all__ = ["USER_ERRORS", "UserError", "ConfigError", "SHOWN_PROBLEMS", "bad_rows_message", "redact_credentials",
           "validation_message"]

#: `scheme://user:password@` in a URL: the password is never printed, logged or stored in a message.
_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/\s:@'\"]*):(?P<password>[^/\s@'\"]*)@")


def redact_credentials(text: str) -> str:
    """`text` with the password of every `scheme://user:password@host` URL in it replaced by `***`."""
    return _CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)


class UserError(Exception):
    """Bad input or environment the user can fix; the message says how (one line; the CLI exits with 2).

    A password inside a URL in the message is redacted when the error is made, so no log or store keeps it."""

    exit_code = 2

    def __init__(self, *args: object) -> None:
        super().__init__(*(redact_credentials(a) if isinstance(a, str) else a for a in args))


#: What is the user's to fix: the application's errors and the GPU gate's own type (translated where a person
#: reads it: one line, exit status 2).
USER_ERRORS: tuple[type[Exception], ...] = (UserError, GpuGateError)


#: How many problems a message lists before it says "… and N more" (the message stays one readable line).
SHOWN_PROBLEMS = 10


class ConfigError(UserError):
    """Configuration that failed validation; `problems` lists every problem found, not just the first."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        # One line, every problem in it: a terminal shows it whole, a log keeps it as one record.
        super().__init__(f"invalid configuration in {source} ({len(problems)} problem(s)): " + "; ".join(problems))


def bad_rows_message(source: object, problems: list[str], what: str = "row") -> str:
    """One line for a file with bad rows: `source: N bad <what>(s): ` and the first `SHOWN_PROBLEMS` problems
    (each already naming its row and the fix), then `; … and M more` for the rest. Rows with the same problem are
    said once, with their lines (`source:2, 3, 4 (3 rows): …`): 50 copies of one document made a line of 1,600
    characters that said the same thing ten times (an attack, 2026-12-07)."""
    groups = _same_problem_groups(str(source), problems)
    shown = "; ".join(groups[:SHOWN_PROBLEMS])
    more = f"; … and {len(groups) - SHOWN_PROBLEMS} more" if len(groups) > SHOWN_PROBLEMS else ""
    return f"{source}: {len(problems)} bad {what}(s): {shown}{more}"


def _same_problem_groups(source: str, problems: list[str], lines_shown: int = 5) -> list[str]:
    """`problems` with those of one text on several lines of `source` (`{source}:{line}: {text}`) merged, in the
    order each text first appears; any other problem is kept as it is."""
    import re

    pattern = re.compile(rf"^{re.escape(source)}:(\d+): (.*)$", re.S)
    lines: dict[str, list[str]] = {}  # problem text → its lines, in the order the texts first appear
    for problem in problems:
        match = pattern.match(problem)
        found = lines.setdefault(match[2] if match else problem, [])
        if match:
            found.append(match[1])
    merged = []
    for key, found in lines.items():
        if len(found) <= 1:
            merged.append(f"{source}:{found[0]}: {key}" if found else key)
        else:
            listed = ", ".join(found[:lines_shown]) + (", …" if len(found) > lines_shown else "")
            merged.append(f"{source}:{listed} ({len(found)} rows): {key}")
    return merged


#: The longest text `clip` lets through: error messages quote at most this much of a bad value.
QUOTE_LIMIT_CHARS = 120


def clip(value: object, limit: int = QUOTE_LIMIT_CHARS) -> str:
    """`repr(value)`, cut to `limit` characters with how long it was (a bad value is quoted, never dumped)."""
    if isinstance(value, str) and len(value) > 4 * limit:
        text = repr(value[: 4 * limit])  # never repr a huge string whole
        size = len(value)
    else:
        text = repr(value)
        size = len(text)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({size:,} characters)"


def given_input(error: dict) -> str:
    """" (got X)" for a pydantic error, the input clipped; nothing for a value among an entry's own settings (a
    field named `*_options`: `judge_options`, `backend_options`, `llm_backend_options`, …), where a value may be a
    secret (a key pasted where a variable's name goes, a third-party backend's token)."""
    if any(str(part).endswith("_options") for part in error.get("loc", ())):
        return ""
    return f" (got {clip(error.get('input'))})"


def validation_message(error: dict) -> str:
    """One pydantic error's message for a person: a validator's own words (which say what to fix) without
    pydantic's "Value error, " prefix."""
    return str(error.get("msg") or "invalid").removeprefix("Value error, ")
