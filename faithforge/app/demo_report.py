"""The demo's closing summary: rates before/after with their intervals, the control, and where things are."""

from __future__ import annotations

import os


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _ci(ci) -> str:
    return "" if not ci else f" [{_pct(ci[0])}, {_pct(ci[1])}]"


#: Columns of a table written to a file or a pipe (COLUMNS wins): rich's 80 cut `faithforge gpu`'s cells to five
#: characters ("gene…", "refe…"), unreadable in a pasted report (an attack, 2026-12-07).
PIPED_COLUMNS = 200


def table_console():
    """A rich console for tables: the terminal's width on a terminal, else COLUMNS or `PIPED_COLUMNS`."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console = Console(width=PIPED_COLUMNS)
    return console


def print_summary(summary: dict) -> None:
    from rich.table import Table

    console = table_console()
    stages = summary["stages"]
    ev = stages["evaluate"]
    unit = ev.get("unit", "summary")
    table = Table(title=f"Hallucination rate on {ev['items']} held-out sources (judge: {ev['judge']}, unit: {unit})")
    for column in ("model", "hallucination rate (95% CI)", ev.get("recall_name", "key-fact recall"), "length",
                   "coverage", "refused / evasive"):
        table.add_column(column)
    # Say what the baseline is: with the warm start off it is the user's model as given, never "warm-start SFT".
    warm_skipped = bool((stages.get("warm_start") or {}).get("skipped"))
    baseline = "before DPO (your model; no warm start)" if warm_skipped else "before DPO (warm-start SFT)"
    for label, name in (("before", baseline), ("after", "after DPO"),
                        ("control", "control: LoRA SFT on chosen"), ("served", "served model")):
        if label in ev["models"]:
            m = ev["models"][label]
            length = "—" if m.get("length") is None else f"{m['length']:.1f} words"
            table.add_row(name, _pct(m["rate"]) + _ci(m["rate_ci"]), _pct(m["recall"]), length,
                          _pct(m.get("coverage")), f"{m.get('refusals', 0)} / {m.get('evasive', 0)}")
    console.print(table)
    if ev.get("judge_accuracy"):  # report.md's first line, word for word
        console.print(f"judge accuracy: {ev['judge_accuracy']}", markup=False, highlight=False)
    if ev.get("pairs_judge"):
        console.print(ev["pairs_judge"], markup=False, highlight=False)
    diff = ev["difference"]["rate"]
    console.print(f"paired difference after − before: {_pct(diff['difference'])}{_ci([diff['ci_low'], diff['ci_high']])} "
                  f"({diff.get('method', 'paired bootstrap')}, 95%); McNemar exact p = {ev['difference']['mcnemar_p']:.2g}; "
                  f"fixed {ev['difference']['fixed']}, newly broken {ev['difference']['broken']}")
    if ev.get("control_difference"):
        c = ev["control_difference"]
        console.print(f"control (LoRA SFT on chosen, same steps): {_pct(c['difference'])}{_ci([c['ci_low'], c['ci_high']])} "
                      "vs before — one run; whether DPO beats it across seeds is measured in BENCHMARKS.md "
                      "(bench/real_model.py)")
    reused = [name for name, out in stages.items() if out and out.get("reused") and not out.get("skipped")]
    if warm_skipped:
        console.print("warm start: turned off (warm_start.enabled: false) — not run, nothing reused")
    if reused:
        console.print(f"reused from an earlier run (verified against its checksums): {', '.join(reused)}")
    for name, out in stages.items():
        if out and out.get("recomputed_because"):
            console.print(f"[yellow]recomputed {name}[/yellow]: {out['recomputed_because']}")
        if out and out.get("resumed_from_step") and not out.get("reused"):
            console.print(f"{name} resumed from its checkpoint at step {out['resumed_from_step']}")
    console.print("\n[bold]where everything was written[/bold]")
    for name in ("generate", "warm_start", "pairs", "reference", "train", "control", "evaluate", "export"):
        out = stages.get(name)
        if out and out.get("path") and not out.get("skipped"):
            console.print(f"  {name:<11} {out['path']}  ({out.get('wall_seconds', 0):.1f} s)")
    console.print(f"  report      {ev['markdown_path']}\n  chart       {ev['chart']}")
    for tracker, where in (ev.get("tracking") or {}).items():  # train.report_to
        console.print(f"  {tracker:<11} {where}")
    if (stages.get("export") or {}).get("ollama_create"):
        console.print(f"  ollama      {stages['export']['ollama_create']}")
    console.print(f"run {summary['run_id']} finished in {summary['wall_seconds']:.0f} s")
