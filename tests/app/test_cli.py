"""Bad input ends with a one-line message and exit status 2, never a traceback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _faithforge(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-c", "from faithforge.app.cli import main; main()", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=180, env=full_env)


def _one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    return result.stderr


def test_missing_config_file(tmp_path):
    err = _one_line_error(_faithforge("demo", "--config", str(tmp_path / "missing.yaml"), "-w", str(tmp_path / "w")))
    assert "missing.yaml not found" in err and "configs/demo.yaml" in err


def test_unknown_stage_option(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("train:\n  epochs: 3\n")
    err = _one_line_error(_faithforge("demo", "--config", str(config), "-w", str(tmp_path / "w")))
    assert "train.epochs: unknown option" in err and "steps" in err


def test_unwritable_workspace(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    err = _one_line_error(_faithforge("demo", "-w", str(blocker / "ws")))
    assert "not writable" in err and "--workspace" in err


def test_unknown_gpu_profile_lists_known_ones(tmp_path):
    err = _one_line_error(_faithforge("demo", "-w", str(tmp_path / "w"), "--profile", "gtx-9000"))
    assert "rtx5070-12gb" in err


def test_tiny_model_command(tmp_path):
    result = _faithforge("tiny-model", str(tmp_path / "m"), "--seed", "1")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "m" / "config.json").is_file() and (tmp_path / "m" / "tokenizer.json").is_file()


def test_a_garbled_run_store_is_one_line_not_a_sqlite_traceback(tmp_path):
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "faithforge.db").write_bytes(b"not a database\x00" * 100)
    err = _one_line_error(_faithforge("demo", "-w", str(tmp_path / "w")))
    assert "faithforge.db cannot be used (file is not a database)" in err and "move it aside" in err
    assert len(err.strip().splitlines()) == 1


def test_an_unopenable_database_url_is_one_line(tmp_path):
    # A read-only command finds no store there (it used to try to create one, and failed on the folder)
    err = _one_line_error(_faithforge("eval", "compare", "a", "b", "--database-url", "sqlite:////nonexistent/x.db"))
    assert "no run store at /nonexistent/x.db" in err
    assert len(err.strip().splitlines()) == 1
    # A command that writes one still says why it cannot
    err = _one_line_error(_faithforge("demo", "-w", str(tmp_path / "w"), "--set",
                                      "database_url=sqlite:////nonexistent/x.db"))
    assert "/nonexistent/x.db cannot be opened: the folder /nonexistent does not exist; create it" in err
    assert len(err.strip().splitlines()) == 1


def test_a_read_only_run_store_is_said_so_and_never_to_be_moved_aside(tmp_path):
    """"move it aside (a new one is created)" was the advice for a teammate's read-only workspace, whose history
    is not damaged (an attack, 2026-12-07). The error is SQLite's own, from a store opened read-only."""
    import sqlite3

    from faithforge.core.store import describe_database_error

    store = tmp_path / "faithforge.db"
    sqlite3.connect(store).close()
    try:
        with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
            db.execute("CREATE TABLE runs (id TEXT)")
    except sqlite3.OperationalError as exc:
        line = describe_database_error(f"sqlite:///{store}", exc)
    assert line == (f"the run store {store} is read-only for you (attempt to write a readonly database); FaithForge "
                    "records run states in it, even to list them: make the file and its folder writable, or copy the "
                    "workspace and pass the copy with --workspace")


def test_a_non_utf8_config_names_the_file_and_v_shows_the_traceback(tmp_path):
    config = tmp_path / "latin1.yaml"
    config.write_bytes(b"seed: 1  # caf\xe9\n")
    err = _one_line_error(_faithforge("demo", "-c", str(config), "-w", str(tmp_path / "w")))
    assert "latin1.yaml is not UTF-8 text" in err and len(err.strip().splitlines()) == 1
    verbose = _faithforge("demo", "-v", "-c", str(config), "-w", str(tmp_path / "w"))
    assert verbose.returncode != 0 and "Traceback" in verbose.stderr


def test_openmp_threads_sleep_at_once_only_on_an_oversubscribed_machine():
    from faithforge.app.prefect_settings import BUSY_OPENMP, IDLE_OPENMP, omp_environment

    assert omp_environment(busy=0.3, cpu_count=2) == IDLE_OPENMP  # idle: a short spin is as fast as spinning
    assert omp_environment(busy=2.0, cpu_count=2) == BUSY_OPENMP  # every core busy already
    assert omp_environment(busy=15.0, cpu_count=2) == BUSY_OPENMP


def test_a_stop_that_a_library_turned_into_its_own_error_still_exits_as_a_stop(monkeypatch, capsys):
    """Ctrl-C landing while Prefect's task engine set up a task run: its crash handler raised "Task run is not set"
    over our StopRequested, and the CLI printed that traceback and exited 1 (the Ctrl-C test caught it once at the
    base-model stage). A handled stop decides the exit, whatever error comes out."""
    import faithforge.app.cli as cli
    import faithforge.app.stopping as stopping

    def interrupted_setup(**_):
        monkeypatch.setattr(stopping, "stop_handled", True)  # the Stopper took SIGINT and printed its line
        raise ValueError("Task run is not set")

    monkeypatch.setattr(cli, "_register_subcommands", lambda: None)
    monkeypatch.setattr(cli, "app", interrupted_setup)
    monkeypatch.setattr(cli, "_exit_now", lambda status: (_ for _ in ()).throw(SystemExit(status)))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo"])
    assert exit_info.value.code == stopping.EXIT_STATUS == 130
    assert "Traceback" not in capsys.readouterr().err


def test_every_command_with_a_workspace_takes_it_as_w_too():
    """`-w` worked on `demo` and `runs` but not on `eval calibrate`, `eval compare` or `generate` (an attack)."""
    import typer

    import faithforge.app.cli as cli

    cli._register_subcommands()

    def commands(group, path: str):
        if hasattr(group, "commands"):  # a group (Typer's click may be its own copy: no isinstance)
            for name, command in group.commands.items():
                yield from commands(command, f"{path} {name}")
        else:
            yield path, group

    found = []
    for path, command in commands(typer.main.get_command(cli.app), "faithforge"):
        for option in command.params:
            if "--workspace" in getattr(option, "opts", []):
                found.append(path)
                assert "-w" in option.opts + option.secondary_opts, f"{path}: --workspace without -w"
    assert len(found) >= 7, found


def test_model_export_starts_the_reaper_before_it_serves_anything(tmp_path, monkeypatch):
    """Killed while it served its GGUF back, `model export` left llama.cpp's server running, orphaned (an attack,
    2026-12-07). The reaper (tests/tasks/test_supervision_plain.py kills its parent and sees the children stopped)
    is started before the export begins."""
    from typer.testing import CliRunner

    import faithforge.core.orphans as orphans
    import faithforge.training.model_export as model_export
    from faithforge.app.cli_model import app

    calls = []
    monkeypatch.setattr(orphans, "start_reaper", lambda *a, **k: calls.append("reaper"))
    monkeypatch.setattr(model_export, "export_model", lambda *a, **k: calls.append("export") or {})
    result = CliRunner().invoke(app, ["export", str(tmp_path / "adapter"), str(tmp_path / "out")])
    assert calls == ["reaper", "export"], result.output
    # bitsandbytes' warning about a hub kernel (on AVX512-BF16 CPUs) no longer lands among the export's lines
    import logging

    assert not logging.getLogger("bitsandbytes.backends.cpu.ops").isEnabledFor(logging.WARNING)
