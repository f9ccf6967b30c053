"""Prefect's embedded server started by FaithForge (faithforge/app/embedded_server.py): a flow runs on it and is
recorded there, its last log lines are sent before the server stops, the command never imports Prefect's server
module, a server the user set is used instead, and a server that dies or never answers ends in one line."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from faithforge.app import embedded_server as module
from faithforge.app.embedded_server import EmbeddedServer
from faithforge.core.ports import free_port
from faithforge.core.errors import UserError

REPO = Path(__file__).resolve().parents[2]


def _python(script: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`script` in a fresh interpreter: Prefect reads its settings once per process."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=300, cwd=REPO, env={**env, "PYTHONPATH": str(REPO)})


def _environment_without_a_server(tmp_path: Path) -> dict[str, str]:
    from tests.fixtures.prefect_db import home_without_a_server

    return home_without_a_server(tmp_path / "prefect-home")


@pytest.mark.slow
def test_a_flow_runs_on_the_server_started_first_and_the_command_never_imports_prefects_server(tmp_path):
    done = _python("""
        import os, sys
        from faithforge.app.embedded_server import embedded_server

        with embedded_server() as server:
            assert os.environ["PREFECT_API_URL"] == server.api_url
            from prefect import flow
            from prefect.settings import get_current_settings

            assert get_current_settings().api.url == server.api_url  # Prefect's settings were read again
            server.wait_until_ready()

            @flow(name="embedded-check")
            def check() -> int:
                from prefect import get_run_logger

                get_run_logger().info("the flow's last line")  # still queued for the API when the block ends
                return 7

            assert check() == 7
            from prefect.client.orchestration import get_client
            from prefect.client.schemas.filters import FlowFilter, FlowFilterName

            with get_client(sync_client=True) as client:
                runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["embedded-check"])))
            print("runs", [run.state.type.value for run in runs])
            print("server module imported:", "prefect.server.api.server" in sys.modules)
            process = server.process
        print("after: url set", "PREFECT_API_URL" in os.environ or "PREFECT_UI_URL" in os.environ, "exit",
              process.poll() is not None)
    """, {**_environment_without_a_server(tmp_path), "PREFECT_LOGGING_LEVEL": "INFO"})
    assert done.returncode == 0, done.stderr[-3000:]
    # The log worker sent what it held before the server stopped (it printed this, and lost the lines, when not).
    assert "Error logging to API" not in done.stderr, done.stderr[-3000:]
    # Prefect's INFO log names the run, but links to no UI: this server has none and ends with the command.
    assert "Beginning flow run" in done.stderr and "View at" not in done.stderr, done.stderr[-3000:]
    assert "runs ['COMPLETED']" in done.stdout, done.stdout  # recorded on this server, not elsewhere
    assert "server module imported: False" in done.stdout
    assert "after: url set False exit True" in done.stdout  # stopped, and a second command would start its own


@pytest.mark.parametrize("where", ["environment", "profile"])
def test_a_server_the_user_set_is_used_and_nothing_is_started(tmp_path, where):
    """Wherever Prefect's settings find the user's server: the embedded server is not started, and the demo's
    label step (which needs a UI) and `faithforge runs` (which follows the server's runs) see it too (a review found
    both read only the environment), and the demo's first line names it (it announced an embedded server for a
    profile's, an attack, 2026-12-07)."""
    import socket

    env = _environment_without_a_server(tmp_path)
    with socket.socket() as listener:  # the user's server: it accepts connections (the check asks no more)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/api"
        if where == "environment":
            env["PREFECT_API_URL"] = url
        else:
            Path(env["PREFECT_PROFILES_PATH"]).write_text(f'active = "mine"\n[profiles.mine]\nPREFECT_API_URL = "{url}"\n')
        done = _python("""
            import os, sys
            from rich.console import Console
            from faithforge.app.demo_runner import _say_which_server
            from faithforge.app.embedded_server import configured_api_url, embedded_server

            with embedded_server() as server:
                print(server, configured_api_url())
                _say_which_server(Console(width=300), server)
        """, env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == [f"None {url}", f"FaithForge demo: using the Prefect server at {url}"]


def _server(command: list[str]) -> EmbeddedServer:
    """A stand-in server process (what a real one cannot be made to do on demand: die at once, never answer)."""
    return EmbeddedServer(f"http://127.0.0.1:{free_port()}/api", subprocess.Popen(command), dict(os.environ))


def test_a_server_that_exits_before_it_answers_ends_in_one_line():
    server = _server([sys.executable, "-c", "raise SystemExit(1)"])
    with pytest.raises(UserError) as caught:
        server.wait_until_ready(timeout_s=30)
    message = str(caught.value)
    assert "exited with status 1" in message and "PREFECT_API_URL" in message and "\n" not in message


def test_a_server_whose_start_keeps_failing_is_started_again_twice_then_said(monkeypatch):
    """uvicorn's status 3 is a port taken meanwhile, or a failed start of the app: two more tries, then one line."""
    launched = []

    def launch(port, environment):
        launched.append(port)
        return subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])

    monkeypatch.setattr(module, "_launch", launch)
    monkeypatch.setattr(module, "_point_prefect_at", lambda url: None)
    server = _server([sys.executable, "-c", "raise SystemExit(3)"])
    with pytest.raises(UserError, match="exited with status 3"):
        server.wait_until_ready(timeout_s=60)
    assert len(launched) == module.MAX_RESTARTS and len(set(launched)) == module.MAX_RESTARTS


def test_a_server_that_never_answers_is_stopped_and_said():
    server = _server([sys.executable, "-c", "import time; time.sleep(60)"])
    with pytest.raises(UserError, match=r"did not answer within 1 s.*PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT"):
        server.wait_until_ready(timeout_s=1)
    assert server.process.poll() is not None  # stopped, not left running


@pytest.mark.slow
@pytest.mark.parametrize("command", ["demo", "generate"])
def test_a_stop_while_the_server_starts_is_a_stop_and_leaves_no_server(tmp_path, command):
    """SIGTERM to the command alone once its server is launched, before it answers: exit 130 with the stop's one
    line and no server left (the Stopper is installed before the server starts; a review found the command
    killed outright, and `generate`'s server left running, when it was installed after)."""
    import signal
    import time

    import psutil

    args = {"demo": ["demo", "-w", str(tmp_path / "ws")],
            "generate": ["generate", "--spec", str(REPO / "configs/specs/grounded-summaries.yaml"), "--backend",
                         "template", "--target", "40", "--workspace", str(tmp_path / "gen")]}[command]
    env = {**_environment_without_a_server(tmp_path), "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    proc = subprocess.Popen([sys.executable, "-m", "faithforge.app.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
    me = psutil.Process(proc.pid)
    deadline = time.monotonic() + 120
    servers: list = []
    while not servers and proc.poll() is None and time.monotonic() < deadline:
        for child in me.children(recursive=True):
            with contextlib.suppress(psutil.Error):  # a child that ended between the listing and the look
                if "uvicorn" in " ".join(child.cmdline()):
                    servers.append(child)
        time.sleep(0.05)
    if not servers:
        proc.kill()
        pytest.fail(f"the server was never launched:\n{proc.communicate()[0][-3000:]}")
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output[-3000:]
    said = [line for line in output.splitlines() if line.startswith("stopped on SIGTERM")]
    assert len(said) == 1 and "Traceback" not in output, output[-3000:]
    psutil.wait_procs(servers, timeout=10)
    assert not any(server.is_running() and server.status() != psutil.STATUS_ZOMBIE for server in servers)


@pytest.mark.slow
def test_a_command_killed_the_moment_its_server_is_launched_leaves_no_server(tmp_path):
    """SIGKILL cannot be handled, and the reaper (core/orphans.py) looks every 0.5 s: a command killed within that
    time of the launch left its server running for good (a review's repro). The server now dies with the command.
    No reaper here, so only the server's own tie to its parent can stop it."""
    import psutil

    script = textwrap.dedent("""
        import os, signal, sys
        from faithforge.app.embedded_server import embedded_server

        with embedded_server() as server:
            with open(sys.argv[1], "w") as handle:
                handle.write(str(server.process.pid))
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    pid_file = tmp_path / "server.pid"
    command = subprocess.Popen([sys.executable, "-c", script, str(pid_file)], cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL,
                               env={**_environment_without_a_server(tmp_path), "PYTHONPATH": str(REPO)})
    assert command.wait(120) == -9
    server_pid = int(pid_file.read_text())
    try:
        server = psutil.Process(server_pid)
    except psutil.NoSuchProcess:
        return  # already gone
    _, alive = psutil.wait_procs([server], timeout=15)
    left = [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    for process in left:
        process.kill()
    assert not left, "the server outlived the command that started it"


@pytest.mark.slow
def test_a_server_that_dies_mid_run_is_started_again_and_the_run_goes_on(tmp_path):
    """The server killed mid-run (the OOM killer, say): each of the run's API calls waited out Prefect's retries
    (~70 s) and the run crawled on, printing tracebacks (2026-12-07). Now it is started again on the same port
    and the run finishes, recorded on the same database; one line says so."""
    done = _python("""
        import os, signal, time
        from faithforge.app.embedded_server import embedded_server

        with embedded_server() as server:
            server.wait_until_ready()
            from prefect import flow, task

            @task
            def kill_the_server() -> int:
                os.kill(server.process.pid, signal.SIGKILL)
                return server.process.pid

            @task
            def after(first: int) -> int:
                return first

            @flow(name="outlives-its-server")
            def run() -> bool:
                first = kill_the_server()
                time.sleep(2)  # the server is dead now, or being started again
                return after(first) == first

            started = time.monotonic()
            assert run()
            from prefect.client.orchestration import get_client
            from prefect.client.schemas.filters import FlowFilter, FlowFilterName

            with get_client(sync_client=True) as client:
                runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["outlives-its-server"])))
            print("runs", [run.state.type.value for run in runs], "took", round(time.monotonic() - started))
    """, _environment_without_a_server(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "runs ['COMPLETED']" in done.stdout, done.stdout + done.stderr[-3000:]
    took = int(done.stdout.split("took")[1])
    assert took < 60, f"the run took {took} s: it waited on the dead server"
    said = [line for line in done.stderr.splitlines() if line.startswith("Prefect's embedded server exited")]
    assert len(said) == 1 and "started it again on the same port" in said[0], done.stderr[-3000:]


def test_the_watch_starts_a_killed_server_again_but_not_one_asked_to_stop(monkeypatch):
    """A server killed outright (SIGKILL: the OOM killer) is started again on its port; one that ended on SIGINT
    or SIGTERM was asked to (Ctrl-C reaches the whole group) and stays down, even when the main thread has not yet
    noted the stop (a review: inside a long C call it noted it after the restart)."""
    import signal
    import time

    def stand_in(port, environment):  # what a real server cannot be made to do on demand: die just so
        launched.append(port)
        return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])

    launched: list[int] = []
    said: list[str] = []
    monkeypatch.setattr(module, "_launch", stand_in)
    port = free_port()
    server = EmbeddedServer(f"http://127.0.0.1:{port}/api", stand_in(port, {}), {}, say=said.append)
    try:
        server._watch()
        server.process.kill()
        deadline = time.monotonic() + 10
        while len(launched) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert launched == [port, port], launched  # started again, on the same port
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(10)
        time.sleep(module.WATCH_S + module.STOP_NOTICE_S + 1.0)
        assert len(launched) == 2, launched  # asked to stop: not started again
    finally:
        server.stop()
    assert len(said) == 1 and "started it again on the same port" in said[0], said


@pytest.mark.parametrize("quiet", [True, False], ids=["quiet", "-v"])
def test_the_quiet_servers_libraries_log_nothing_on_the_terminal(monkeypatch, quiet):
    """SQLAlchemy's pool logs its "Exception during reset" through the root logger when a stopped server cancels a
    database call; with the server's log quiet (the default, `quiet_prefect_logs`) it must not reach the terminal,
    with `-v` it does. A real Python sets up Prefect's logging from the server's environment and logs it."""
    from faithforge.app.embedded_server import server_environment

    monkeypatch.delenv("PREFECT_LOGGING_ROOT_LEVEL", raising=False)
    if quiet:
        monkeypatch.setenv("PREFECT_SERVER_LOGGING_LEVEL", "CRITICAL")
    else:
        monkeypatch.delenv("PREFECT_SERVER_LOGGING_LEVEL", raising=False)
    env = server_environment({})
    done = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import logging
        from prefect.logging.configuration import setup_logging

        setup_logging()
        logging.getLogger("sqlalchemy.pool.impl.AsyncAdaptedQueuePool").error("Exception during reset or similar")
    """)], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    said = done.stdout + done.stderr
    assert ("Exception during reset" in said) is (not quiet), said


@pytest.mark.parametrize("api_url", ["http://127.0.0.1:{port}/api", "notaurl"])
def test_a_prefect_api_url_that_does_not_answer_is_one_line_that_names_it(tmp_path, api_url):
    """It said "the server URL is not usable …; pass a URL like http://127.0.0.1:11434" (Ollama's port), under a
    line announcing an embedded server that was never started (an attack, 2026-12-07)."""
    import socket

    with socket.socket() as sock:  # a loopback port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_API_URL": api_url.format(port=port)}
    done = subprocess.run([sys.executable, "-m", "faithforge.app.entry", "demo", "-w", str(tmp_path / "ws")],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(errors) == 1, done.stdout + done.stderr
    assert errors[0].startswith("error: PREFECT_API_URL") and "unset PREFECT_API_URL" in errors[0], errors[0]
    assert "11434" not in errors[0] and "embedded server" not in done.stdout, done.stdout
