"""Errors a user can act on.

A `UserError` carries a one-line message that says what to fix. The CLI prints it and exits with a
non-zero status instead of showing a traceback.

The class itself is defined in `gpu/errors.py` (the GPU gate's errors derive from it, and `gpu/` imports nothing
from this package); this module is where the rest of FaithForge takes it from.
"""

from gpu.errors import UserError

__all__ = ["UserError", "ConfigError", "SHOWN_PROBLEMS", "bad_rows_message", "validation_message"]

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
    (each already naming its row and the fix), then `; … and M more` for the rest."""
    shown = "; ".join(problems[:SHOWN_PROBLEMS])
    more = f"; … and {len(problems) - SHOWN_PROBLEMS} more" if len(problems) > SHOWN_PROBLEMS else ""
    return f"{source}: {len(problems)} bad {what}(s): {shown}{more}"


def validation_message(error: dict) -> str:
    """One pydantic error's message for a person: a validator's own words (which say what to fix) without
    pydantic's "Value error, " prefix."""
    return str(error.get("msg") or "invalid").removeprefix("Value error, ")
