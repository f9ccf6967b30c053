"""What Prefect should be told about a run whose process is gone, and what a waiting run says (issue 29).

Plain Python (no Prefect): `tasks/supervision.py` reads the states and sets them; these functions decide.

- A run whose process died while Prefect still shows it Running (or Pending, Paused) is set **Crashed**, with
  where it stopped; a run stuck in **Cancelling** (its cancellation was asked for, but the worker that would have
  killed it was gone) is finished as **Cancelled**. A final state is left alone; FaithForge's own run store then
  follows Prefect: `cancelled` for a run Prefect cancelled, else `crashed`.
- A run waiting for a slot of the `gpu` limit names the holders: their flow run, stage and for how long.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Optional

#: Prefect state types (`StateType` values) that mean "still under way" to the server.
UNDER_WAY = {"RUNNING", "PENDING", "PAUSED", "SCHEDULED"}


def decide(state_type: Optional[str]) -> tuple[Optional[str], str]:
    """(Prefect state to set, or None; the run store's status) for a dead run whose flow run is in `state_type`."""
    if state_type == "CANCELLING":
        return "CANCELLED", "cancelled"
    if state_type == "CANCELLED":
        return None, "cancelled"
    if state_type in UNDER_WAY:
        return "CRASHED", "crashed"
    return None, "crashed"


def death_message(pid: Optional[int], host: Optional[str], last_stage: Optional[str], cause: str) -> str:
    """One line for the Crashed/Cancelled state: which process, what ended it, where it stopped."""
    where = f"; last stage: {last_stage}" if last_stage else ""
    process = (f"process {pid} on {host}" if host else f"process {pid}") if pid else "its process"
    return f"FaithForge: {process} is gone ({cause}){where}. Rerun it: finished stages are reused."


def _age(since: dt.datetime, now: dt.datetime) -> str:
    seconds = max(0, int((now - since).total_seconds()))
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"


def slot_wait_message(limit: str, stage: str, holders: list[dict[str, Any]], waited_s: float,
                      now: dt.datetime, busy: Optional[str] = None) -> str:
    """`train: waiting 6 s for a slot of the 'gpu' limit, held by flow run 'calm-fox' (train, 42 s) …`. `busy`:
    why the Prefect server did not answer the last request (it is then said too)."""
    waiting = f"{stage}: waiting {int(waited_s)} s for a slot of the {limit!r} concurrency limit"
    unanswered = f"the Prefect server did not answer the last request ({busy}); asking again" if busy else ""
    if busy and not holders:  # nobody known holds it: the server's silence is the whole story
        return f"{waiting}: {unanswered}"
    if not holders:
        who = "held by a run this run store does not know (another workspace or database_url); `prefect gcl inspect " \
              f"{limit}` shows the active slots"
    else:
        described = []
        for hold in holders:
            name = hold.get("flow_run_name") or hold.get("flow_run_id") or "a run outside Prefect"
            state = "" if hold.get("alive") is not False else ", its process is gone: freed on the next start"
            described.append(f"flow run {name!r} ({hold.get('stage')}, for {_age(hold['since'], now)}{state})")
        who = "held by " + "; ".join(described)
    return f"{waiting}, {who}" + (f"; {unanswered}" if busy else "")
