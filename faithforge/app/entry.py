"""The `faithforge` console script: loads the command line, then runs it.

Loading it imports typer, pydantic, the config and every subcommand (~1-2 s on 2 cores). A Ctrl-C in that time
interrupted whichever import was running and Python printed its traceback (status -2, 2026-12-07): here, and in
`cli.main` until a command starts, it ends with one line and the status every stop exits with. Before the `try`
only `stopping.py` is imported (~10 ms, the standard library and two small modules). SIGTERM is taken the same
way from the start (`stopping.take_stop_signals`).
"""

from __future__ import annotations

from faithforge.app.stopping import exit_stopped_before_start, take_stop_signals


def main() -> None:
    take_stop_signals()
    try:
        from faithforge.app.cli import main as run  # a Ctrl-C swallowed in here is noted; `cli.main` stops on it
    except KeyboardInterrupt:
        exit_stopped_before_start()
    run()


if __name__ == "__main__":
    main()
