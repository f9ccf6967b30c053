"""Prefect's embedded API server, started first thing by a command that runs flows, beside its imports.

Prefect starts this server itself (`SubprocessASGIServer`: `uvicorn … prefect.server.api.server:create_app` on
127.0.0.1, its UI off) at the first API call of a process that has no `PREFECT_API_URL`. In `faithforge demo` that
call came after torch, transformers and the flows were imported, so the server's own start (~6.5 CPU-s, mostly its
imports) only began then, and the command first imported the module that starts it (FastAPI, docket, the server's
models: ~2.9 CPU-s, 2026-12-06) although only the child uses it. Started here with the same command, environment
and health check, before those imports, the server starts while they run, and Prefect finds `PREFECT_API_URL`
set and starts nothing (`python bench/embedded_server.py`; BENCHMARKS.md).

A server the user configured (environment, Prefect profile, `prefect.toml`, `.env`: whatever Prefect's settings
resolve to) is used as it is: nothing is started.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator
from urllib.parse import urlsplit

from faithforge.core.errors import UserError
from faithforge.core.ports import free_port

#: uvicorn's exit status when its start failed: its port was taken since it was chosen, or the app's start-up
#: (Prefect's database, say) failed.
STARTUP_FAILED_EXIT_STATUS = 3
#: Starts on another port after that status before it counts as the server's own failure (Prefect's loop retries
#: without end, until its time-out).
MAX_RESTARTS = 2
#: What Prefect sets for its own embedded server: no UI, and the server's ephemeral mode (its services off).
SERVER_ENVIRONMENT = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
#: Seconds between two health checks while the server starts (Prefect's own loop uses the same).
POLL_S = 0.1
#: Seconds a stopped server gets to exit before it is killed.
STOP_GRACE_S = 10.0
#: Longest wait for Prefect's log and event workers to send what they hold before the server stops, seconds.
DRAIN_S = 5.0
#: Seconds between two looks at a running server's process.
WATCH_S = 0.5
#: Exit statuses of a server that was asked to stop (uvicorn's own clean exit, or the signal's default action).
ASKED_TO_STOP = (0, -signal.SIGINT, -signal.SIGTERM)
#: Seconds a dead server is left dead before it is started again, for a stop that killed it to be noted.
STOP_NOTICE_S = 1.0
#: Starts on the same port after the server died mid-run, before the command stops instead (rerun to resume).
MAX_RESTARTS_WHILE_RUNNING = 3


@dataclass
class EmbeddedServer:
    """One `uvicorn` child serving Prefect's API to this process and the processes it starts."""

    api_url: str
    """`http://127.0.0.1:PORT/api`, also in this process's `PREFECT_API_URL`."""
    process: subprocess.Popen
    """The server's process (a child of this one, in its process group: Ctrl-C reaches it too)."""
    environment: dict[str, str] = field(repr=False)
    """The environment it was started with (a restart reuses it)."""
    say: Callable[[str], None] = field(default=lambda line: print(line, file=sys.stderr, flush=True), repr=False)
    """Where a line about the server's death and restart goes."""
    _stopping: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def wait_until_ready(self, timeout_s: float | None = None) -> float:
        """Block until the API answers its health check; seconds waited. One-line `UserError` if the server
        exits or does not answer within `timeout_s` (default: Prefect's
        `PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS`, which FaithForge sets to 90 s)."""
        import httpx

        if timeout_s is None:
            timeout_s = float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90"))
        started, restarts = time.monotonic(), 0
        with httpx.Client(timeout=5.0) as client:
            while True:
                status = self.process.poll()
                if status == STARTUP_FAILED_EXIT_STATUS and restarts < MAX_RESTARTS:  # the port taken meanwhile?
                    self._restart()
                    restarts += 1
                    continue
                if status is not None:
                    raise UserError(f"Prefect's embedded server exited with status {status} before it answered "
                                    f"(its own messages: rerun with -v); set PREFECT_API_URL to use a Prefect "
                                    f"server you started")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.api_url}/health").status_code == 200:
                        self._watch()
                        return time.monotonic() - started
                if time.monotonic() - started > timeout_s:
                    self.stop()
                    raise UserError(f"Prefect's embedded server did not answer within {timeout_s:.0f} s; raise "
                                    f"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS on a busy machine, or set "
                                    f"PREFECT_API_URL to a Prefect server you started")
                time.sleep(POLL_S)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after `STOP_GRACE_S`); nothing if it already ended."""
        with self._lock:  # the watcher starts no server after this
            self._stopping.set()
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def _restart(self) -> None:
        port = free_port()
        self.api_url = f"http://127.0.0.1:{port}/api"
        self.process = _launch(port, self.environment)
        _point_prefect_at(self.api_url)

    def _watch(self) -> None:
        """Once the server answered: a daemon thread that starts it again, on the same port, if it dies before
        `stop` (killed by the OOM killer, say). Every Prefect client of this process and its children keeps the
        URL and retries; the server's database is a file, so the run's flow and task runs are all still there.
        Left dead, each API call of the run waited out Prefect's retries (~70 s) and the run crawled on, printing
        tracebacks (2026-12-07). After `MAX_RESTARTS_WHILE_RUNNING` starts the command gets SIGTERM: its stop
        marks the run cancelled and says to rerun, which resumes. A restarted server is tied to this thread
        (`PR_SET_PDEATHSIG` follows the forking thread), which ends only when the server is stopped."""
        threading.Thread(target=self._keep_alive, name="faithforge-embedded-server-watch", daemon=True).start()

    def _keep_alive(self) -> None:
        from faithforge.app import stopping

        port = urlsplit(self.api_url).port
        restarts = 0
        while not self._stopping.wait(WATCH_S):
            status = self.process.poll()
            if status is None:
                continue
            # Ctrl-C reaches the server too (one process group), and uvicorn ends cleanly on SIGINT and SIGTERM: a
            # server that exited so was asked to stop, and the command is stopping (its main thread may note the
            # signal only seconds later, after a long C call). Started again, it would only be killed. Otherwise
            # a stop the main thread noted within `STOP_NOTICE_S` also ends the watch.
            if status in ASKED_TO_STOP or self._stopping.wait(STOP_NOTICE_S) or stopping.stop_handled:
                return
            with self._lock:
                if self._stopping.is_set():
                    return
                if restarts == MAX_RESTARTS_WHILE_RUNNING:
                    self.say(f"Prefect's embedded server exited (status {status}) again after {restarts} restarts; "
                             f"stopping this run (rerun the same command to resume)")
                    os.kill(os.getpid(), signal.SIGTERM)
                    return
                restarts += 1
                self.process = _launch(port, self.environment)
            self.say(f"Prefect's embedded server exited (status {status}); started it again on the same port "
                     f"(restart {restarts} of {MAX_RESTARTS_WHILE_RUNNING}), the run goes on")


def _check_answers(api_url: str) -> None:
    """The Prefect server the settings name accepts a connection, or one line that names the setting: an
    unreachable `PREFECT_API_URL` said "the server URL is not usable …; pass a URL like http://127.0.0.1:11434"
    (Ollama's port) under a line announcing an embedded server that was never started (an attack, 2026-12-07)."""
    from faithforge.backends.http import check_server_answers, check_server_url
    from faithforge.core.errors import UserError

    try:
        check_server_url("PREFECT_API_URL", api_url, "http://127.0.0.1:4200/api")
        check_server_answers("PREFECT_API_URL", api_url, "every flow")
    except UserError as exc:
        raise UserError(f"{exc}; or unset PREFECT_API_URL (and the active Prefect profile's) so that FaithForge "
                        "starts its own server") from None


@contextlib.contextmanager
def embedded_server() -> Iterator[EmbeddedServer | None]:
    """Prefect's embedded server for the `with` block, started now, unless Prefect's settings already name an API
    server (then None, and nothing is started).

    Inside the block `PREFECT_API_URL` points at it, in this process's environment and in Prefect's settings, so
    every Prefect client of this process and of the processes it starts uses it; call `wait_until_ready` before
    the first flow. At the end the server is stopped and `PREFECT_API_URL` is unset again (a second command in
    the same process starts its own). Set the environment Prefect and the server should see (log levels,
    timeouts) before entering."""
    from prefect.settings import Settings

    settings = Settings()  # afresh, as `configured_api_url` reads them
    if settings.api.url:
        _check_answers(str(settings.api.url))
        yield None
        return
    environment = server_environment(settings.to_environment_variables(exclude_unset=True))
    port = free_port()
    server = EmbeddedServer(f"http://127.0.0.1:{port}/api", _launch(port, environment), environment)
    try:
        _point_prefect_at(server.api_url)
        yield server
    except KeyboardInterrupt:  # a stop (Ctrl-C, or the Stopper's SIGTERM): end now, no wait for queued logs
        raise
    except BaseException:
        if server.process.poll() is None:
            drain_prefects_senders()  # a failed run: its last lines, the error among them, reach the server
        raise
    else:
        drain_prefects_senders()
    finally:
        server.stop()
        _point_prefect_at(None)


def server_environment(settings: dict[str, str]) -> dict[str, str]:
    """The embedded server's environment: this process's, Prefect's embedded-server settings, the Prefect settings
    that are set (`settings`, as environment variables, wherever Prefect found them), and the root
    logger at the server's log level when that is set (`quiet_prefect_logs`). The libraries the server uses log
    through the root logger, which Prefect leaves at WARNING: a Ctrl-C that stopped the server while its event
    consumer held a database connection printed SQLAlchemy's "Exception during reset" traceback under the
    command's stop line (a run of the Ctrl-C test on a busy machine, 2026-12-07)."""
    environment = {**os.environ, **SERVER_ENVIRONMENT, **settings}
    if "PREFECT_SERVER_LOGGING_LEVEL" in environment:
        environment.setdefault("PREFECT_LOGGING_ROOT_LEVEL", environment["PREFECT_SERVER_LOGGING_LEVEL"])
    return environment


def configured_api_url() -> str | None:
    """The Prefect API server the user configured, wherever Prefect's settings find it now (environment, the active
    profile, `prefect.toml`, `.env`); None when a command would run on its own embedded server. Read afresh, not
    from the settings this process loaded at Prefect's import: a process that ran an earlier command (a test
    worker) still held that command's server there."""
    from prefect.settings import Settings

    return Settings().api.url or None


def drain_prefects_senders(timeout_s: float = DRAIN_S) -> None:
    """Send what Prefect's log and event workers still hold before their server stops, as Prefect's own test
    harness does before it stops its server. Prefect stopped its embedded server last, at the interpreter's exit;
    stopped at the end of the command, the server missed the run's last log lines, and `-v` printed "Error logging
    to API" after the summary."""
    for module, worker in (("prefect.logging.handlers", "APILogWorker"), ("prefect.events.worker", "EventsWorker")):
        loaded = sys.modules.get(module)  # never imported: nothing was queued
        if loaded is not None:
            with contextlib.suppress(Exception):  # a worker that never started, a server already gone
                getattr(loaded, worker).drain_all(timeout=timeout_s)


#: What the server's Python runs instead of `-m uvicorn`: SIGINT back at the system default, then uvicorn's own
#: `__main__`. The child starts with SIGINT ignored (`_in_the_server_before_it_starts`), so Python's start installs
#: no `KeyboardInterrupt` handler; from here on a Ctrl-C ends the server at once and silently while it imports,
#: and uvicorn's own handler takes over when it starts serving.
#: SQLAlchemy's pool is quiet below CRITICAL there: a stop cancels the server's event consumer mid-rollback, and
#: the pool's "Exception during reset" traceback reached the terminal under the command's stop line (a Ctrl-C test
#: run, 2026-12-07); the server's database is the command's own, nothing in that message is the user's to fix.
SERVER_BOOTSTRAP = ("import logging, runpy, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                    "logging.getLogger('sqlalchemy.pool').setLevel(logging.CRITICAL); sys.argv[0] = 'uvicorn'; "
                    "runpy.run_module('uvicorn', run_name='__main__', alter_sys=True)")


def _launch(port: int, environment: dict[str, str]) -> subprocess.Popen:
    import prefect

    # Prefect's own command for its embedded server (prefect/server/api/server.py, SubprocessASGIServer), with
    # `python -m uvicorn` run through `SERVER_BOOTSTRAP`.
    return subprocess.Popen([sys.executable, "-c", SERVER_BOOTSTRAP, "--app-dir", str(prefect.__module_path__.parent),
                             "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port",
                             str(port), "--log-level", "error", "--lifespan", "on"], env=environment,
                            preexec_fn=_in_the_server_before_it_starts())


def _in_the_server_before_it_starts() -> Callable[[], None]:
    """What the server's child runs between fork and exec.

    - It dies with this process, SIGKILL included: the reaper looks every 0.5 s, and a command killed within that
      time of the launch left its server running.
    - It starts with SIGINT ignored, until `SERVER_BOOTSTRAP` puts the default back. Ctrl-C reaches the whole
      process group, and a server still importing uvicorn (~1 s) printed a `KeyboardInterrupt` traceback on the
      user's terminal under the command's own stop line (2026-12-07). A Python started with SIGINT ignored
      installs no handler that raises it; the default action ends the process without a word."""
    from faithforge.core.orphans import dies_with_this_process

    dies = dies_with_this_process()

    def in_child() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if dies is not None:
            dies()

    return in_child


def _point_prefect_at(api_url: str | None) -> None:
    """`PREFECT_API_URL` (None: unset) for this process (Prefect's settings, read once at import, are read again)
    and its children (the environment).

    With it an empty `PREFECT_UI_URL`, unless the user set one: Prefect derives a UI address from the API's and
    logs "View at http://127.0.0.1:PORT/runs/…" for each flow run, but this server serves no UI and ends with the
    command (Prefect's own embedded server had no API URL in the settings, so it printed no link)."""
    from prefect.context import refresh_global_settings_context

    if api_url is None:
        os.environ.pop("PREFECT_API_URL", None)
        if os.environ.get("PREFECT_UI_URL") == "":
            del os.environ["PREFECT_UI_URL"]
    else:
        os.environ["PREFECT_API_URL"] = api_url
        os.environ.setdefault("PREFECT_UI_URL", "")
    refresh_global_settings_context()
