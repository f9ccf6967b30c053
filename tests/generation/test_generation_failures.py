"""Runs that go wrong end clearly: a failed attempt never crashes the summary, a run that stores nothing
fails (flow state and exit status), bad input is one line before any flow starts, a stalled server is given
up on after `--read-timeout`, and a dead worker's slots are taken back at once (issue 11 items 8, 9, 12;
issue 15 item 4)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from faithforge.backends.template import TemplateBackend
from faithforge.generation.coverage_db import CoverageDB
from faithforge.generation.parameters import GenerateParameters
from faithforge.generation.runner import GenerationOptions, run_generation
from faithforge.generation.spec import load_spec
from faithforge.generation.summary import GenerationSummary
from tests.fixtures.fake_llm_servers import FakeOllama, Reply, Stall

ROOT = Path(__file__).resolve().parents[2]
GROUNDED = str(ROOT / "configs" / "specs" / "grounded-summaries.yaml")
HANG_GUARD_S = 120  # only to fail instead of hanging; nothing asserts on time


def cli() -> typer.Typer:
    from faithforge.app.cli_generate import generate

    app = typer.Typer()
    app.command("generate")(generate)
    app.command("version")(lambda: None)  # keeps `generate` a sub-command, as in the real CLI
    return app


def invoke(*args: str):
    return CliRunner(env={"COLUMNS": "250"}).invoke(cli(), ["generate", *args])


def as_teacher(body: dict) -> Reply:
    return Reply(TemplateBackend().chat(body["messages"], schema=body.get("format"), seed=body["options"]["seed"]).text)


def lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


# issue 11 item 9 ---------------------------------------------------------------------------------------------
def test_summary_prints_after_a_failed_attempt_instead_of_crashing(tmp_path):
    with FakeOllama(default=as_teacher) as server:
        server.push(Reply("no json here"), Reply("still none"))  # one attempt fails, repair included
        result = invoke("--spec", GROUNDED, "--backend", "ollama", "--base-url", server.url, "--target", "2",
                        "--no-gate", "--no-prefect", "--workspace", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "failed attempts: 1 (no_json 1)" in result.output and "2/2 examples" in result.output
    assert "Traceback" not in result.output


def test_summary_survives_its_own_dict_round_trip():
    summary = GenerationSummary(spec="s", backend="b", model="m", targets={"a": 2})
    summary.failures.update({"schema": 2, "placeholder": 1})
    again = GenerationSummary.from_dict(summary.to_dict())
    assert again.lines() == summary.lines() and again.top_failures() == "schema 2, placeholder 1"


# issue 15 item 4 / issue 11 item 9: a run that stores nothing fails ---------------------------------------
def test_a_run_that_stores_nothing_fails_with_its_top_reasons(prefect_harness, tmp_path):
    from faithforge.generation.job import GenerationFailed
    from faithforge.flows.generate import generate_flow

    with FakeOllama(default=lambda body: Reply("I cannot write JSON, sorry.")) as server:
        params = GenerateParameters(spec=GROUNDED, backend="ollama", base_url=server.url, target=2, use_gpu_gate=False,
                                    workspace=str(tmp_path / "flow"), max_failures=4)
        state = generate_flow(params, return_state=True)
        assert state.is_failed() and "stored 0 of the 2" in state.message and "no_json 4" in state.message
        failure = state.result(raise_on_failure=False)
        assert isinstance(failure, GenerationFailed) and failure.result.summary.generated == 0
        direct = invoke("--spec", GROUNDED, "--backend", "ollama", "--base-url", server.url, "--target", "2",
                        "--no-gate", "--no-prefect", "--workspace", str(tmp_path / "direct"))
        flow = invoke("--spec", GROUNDED, "--backend", "ollama", "--base-url", server.url, "--target", "2",
                      "--no-gate", "--workspace", str(tmp_path / "cli-flow"))
    for result in (direct, flow):
        assert result.exit_code == 1, result.output
        assert "0/2 examples" in result.output and "top failure reasons: no_json" in result.output
        assert "Traceback" not in result.output


def test_a_finished_target_is_not_a_failure(tmp_path):
    spec = load_spec(GROUNDED)
    db = CoverageDB(f"sqlite:///{tmp_path / 'c.db'}")
    run_generation(spec, TemplateBackend(), db, tmp_path / "out", GenerationOptions(target=2, poll_s=0.01))
    again = run_generation(spec, TemplateBackend(), db, tmp_path / "out", GenerationOptions(target=2, poll_s=0.01))
    assert again.generated == 0 and not again.stored_nothing
    # a lower target: "2/1 examples" said nothing of what the dataset holds (an attack, 2026-12-07)
    lower = run_generation(spec, TemplateBackend(), db, tmp_path / "out", GenerationOptions(target=1, poll_s=0.01))
    assert not lower.stored_nothing and ("the target is below the 2 examples stored earlier: none is removed, and the "
                                         "exported dataset holds all 2") in lower.lines()


def test_a_stop_before_the_first_example_is_an_interruption_not_a_failure(tmp_path):
    """Ctrl-C or SIGTERM while the first request waited: "error: … stored 0 … top failure reasons: none" and exit
    status 1 without Prefect, where a stop after one example said "interrupted; rerun" with 130 (an attack,
    2026-12-07). The backend here is stopped as the signal handler stops it: KeyboardInterrupt in the request."""
    class Stopped(TemplateBackend):
        def chat(self, *args, **kwargs):
            raise KeyboardInterrupt

    spec = load_spec(GROUNDED)
    db = CoverageDB(f"sqlite:///{tmp_path / 'c.db'}")
    summary = run_generation(spec, Stopped(), db, tmp_path / "out", GenerationOptions(target=2, poll_s=0.01))
    assert summary.stopped == "interrupted" and summary.generated == 0
    assert not summary.stored_nothing  # what `job.failure_of` reads


def test_a_worker_stopped_before_its_first_example_exits_130(tmp_path):
    """A stop is neither success nor failure: `faithforge-worker` exited 1 (then 0, after the change above; a
    review, 2026-12-07) when stopped before its first example; a supervisor reads 130 as "stopped, rerun"."""
    command = [sys.executable, "-m", "faithforge.generation.worker", "--spec", GROUNDED, "--backend", "template",
               "--target", "3", "--delay", "30", "--db", f"sqlite:///{tmp_path / 'c.db'}", "--out",
               str(tmp_path / "out")]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + HANG_GUARD_S
    while not (tmp_path / "c.db").exists() and time.monotonic() < deadline:  # the run has started
        time.sleep(0.1)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=HANG_GUARD_S)
    assert proc.returncode == 130, (out, err)
    assert '"stopped": "interrupted"' in out and '"generated": 0' in out, out


def test_failed_attempts_are_said_while_the_run_goes_on(tmp_path):
    """The bar counts stored examples only: it stayed at 0/3 for 11 minutes while 20 attempts were quarantined
    (an attack, 2026-12-07). The first failure is said at once, then at most one line every 30 s."""
    from faithforge.backends.openai_compat import OpenAICompatBackend
    from tests.fixtures.fake_llm_servers import FakeOpenAI

    said: list[str] = []
    with FakeOpenAI(default=lambda body: Reply("I cannot write JSON today.")) as server:
        backend = OpenAICompatBackend("qwen3:8b", base_url=server.url)
        summary = run_generation(load_spec(GROUNDED), backend, CoverageDB(f"sqlite:///{tmp_path / 'c.db'}"),
                                 tmp_path / "out", GenerationOptions(target=2, poll_s=0.01, max_failures=4),
                                 log=said.append)
    assert summary.stopped == "max_failures" and sum(summary.failures.values()) == 4
    failed = [line for line in said if "failed so far" in line]
    assert len(failed) == 1 and failed[0].startswith("1 attempt(s) failed so far ("), said  # then within 30 s
    assert failed[0].endswith(f"; the quarantine {tmp_path / 'out' / '_quarantine'} keeps each failed answer (a "
                              "duplicate is only counted)")


# issue 11 item 12 --------------------------------------------------------------------------------------------
def test_a_bad_option_is_one_line_naming_the_option(tmp_path):
    result = invoke("--spec", GROUNDED, "--backend", "bogus", "--workspace", str(tmp_path))
    assert result.exit_code == 2 and len(lines(result.output)) == 1, result.output
    assert "--backend" in result.output and "choose one of ollama, openai, transformers, template" in result.output and "pydantic" not in result.output


def test_every_number_of_generate_is_finite_and_bounded_both_ways(tmp_path):
    """`--read-timeout inf` (or 1e300) passed `gt=0` and overflowed the socket's timeout at the first request, a
    traceback (an attack, 2026-12-07): every number has a floor and a ceiling its consumer can honour."""
    unbounded = [name for name, field in GenerateParameters.model_fields.items()
                 if str(field.annotation) in ("<class 'int'>", "<class 'float'>", "int | None", "float | None")
                 and not ({"Le", "Lt"} & {type(m).__name__ for m in field.metadata}
                          and {"Ge", "Gt"} & {type(m).__name__ for m in field.metadata})]
    assert unbounded == []
    for value, said in (("inf", "should be a finite number (got inf)"),
                        ("1e300", "should be less than or equal to 86400 (got 1e+300)")):
        result = invoke("--spec", GROUNDED, "--backend", "openai", "--base-url", "http://127.0.0.1:9", "--model", "m",
                         "--no-prefect", "--read-timeout", value, "--workspace", str(tmp_path / "ws"))
        assert result.exit_code == 2 and result.output.strip() == f"error: --read-timeout: input {said}", result.output


def test_bad_input_on_the_prefect_path_fails_in_one_line_before_the_flow_starts(tmp_path):
    for args in (["--backend", "ollama", "--base-url", "not-a-url"],
                 ["--backend", "openai"],
                 ["--backend", "transformers", "--model", str(tmp_path / "no-model")]):
        result = invoke("--spec", GROUNDED, *args, "--workspace", str(tmp_path), "--target", "2")
        assert result.exit_code == 2, result.output
        assert len(lines(result.output)) == 1 and "Traceback" not in result.output, result.output


# issue 11 item 8 ---------------------------------------------------------------------------------------------
def test_a_stalled_server_is_given_up_on_after_the_read_timeout_option(tmp_path):
    with FakeOllama(default=as_teacher) as server:
        server.push(Stall(60.0, partial='{"source_document": "On'))  # one chunk, then silence
        result = invoke("--spec", GROUNDED, "--backend", "ollama", "--base-url", server.url, "--target", "1",
                        "--no-gate", "--no-prefect", "--read-timeout", "0.5", "--workspace", str(tmp_path))
        requests = len(server.chat_requests())
    assert result.exit_code == 0, result.output
    assert "1/1 examples" in result.output and requests == 2  # the stalled request, then its retry


def test_the_summary_names_only_options_that_exist():
    summary = GenerationSummary(spec="s", backend="b", model="m", targets={"a": 2}, truncations=3, lost_claims=2,
                                stopped="max_failures", message="x", first_answers=4)
    summary.failures.update({"schema": 1, "placeholder": 1})
    summary.response_formats.update({"json_object": 4})
    help_text = invoke("--help").output
    named = set(re.findall(r"--[a-z][a-z-]+", "\n".join(summary.lines())))
    assert all(option in help_text for option in named), named


def test_a_dead_workers_claims_are_taken_back_at_once(tmp_path):
    """A worker killed while holding claims with a 15-minute lease: the next claim takes its slots at once
    (its process is gone), instead of waiting out the lease."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    holder = textwrap.dedent(f"""
        import sys, time
        from faithforge.generation.coverage_db import CoverageDB
        from faithforge.generation.spec import load_spec
        spec = load_spec({GROUNDED!r})
        db = CoverageDB({url!r})
        db.register_worker("doomed")
        db.sync(spec, spec.targets(3))
        claims = db.claim(spec.name, "doomed", 3, 900.0)
        print(len(claims), flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", holder], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout.readline().strip() == "3"
        db = CoverageDB(url)
        spec = load_spec(GROUNDED)
        assert db.claim(spec.name, "alive", 3, 900.0) == []  # a live worker's claims are respected
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=HANG_GUARD_S)
        taken = db.claim(spec.name, "next", 3, 900.0)
        assert len(taken) == 3 and db.holders(spec.name) == {"next": max(c.until for c in taken)}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_running_worker_keeps_its_claims_alive_with_heartbeats(tmp_path):
    spec = load_spec(GROUNDED)
    db = CoverageDB(f"sqlite:///{tmp_path / 'c.db'}")
    db.register_worker("w")
    db.sync(spec, spec.targets(2))
    (claim,) = db.claim(spec.name, "w", 1, 0.5)
    time.sleep(0.1)
    assert db.heartbeat("w", 60.0) == 1
    time.sleep(0.6)  # past the first lease: only the renewal keeps the slot
    assert db.holders(spec.name)["w"] > time.time() + 30
    assert [c.slot_id for c in db.claim(spec.name, "other", 2, 60.0)] != [claim.slot_id]


def test_waiting_for_another_worker_says_so_and_names_it(tmp_path):
    """A live worker holds the last slot (its lease runs out in 1 s): the run says whom it waits for instead of
    waiting silently, then takes the slot when the lease ends."""
    spec = load_spec(GROUNDED)
    db = CoverageDB(f"sqlite:///{tmp_path / 'c.db'}")
    db.register_worker("busy-elsewhere")  # this process: alive, so only its lease can free the slot
    db.sync(spec, spec.targets(1))
    db.claim(spec.name, "busy-elsewhere", 1, 1.0)
    said: list[str] = []
    summary = run_generation(spec, TemplateBackend(), db, tmp_path / "out", GenerationOptions(target=1, poll_s=0.05),
                             log=said.append)
    assert summary.done_total == 1
    assert len(said) == 1 and "waiting for 1 other worker(s)" in said[0] and "busy-elsewhere" in said[0]


@pytest.mark.parametrize("options, message", [
    ({"database_url": "garbage"}, "database URL 'garbage' is not usable"),
    ({"backend": "openai", "base_url": "http://127.0.0.1:9/v1",
      "backend_options": {"openai": {"api_key_env": "FF_TEST_NO_SUCH_KEY"}}},
     "backend_options.openai: api_key_env FF_TEST_NO_SUCH_KEY: that environment variable is empty"),
])
def test_a_bad_store_url_or_an_empty_key_variable_is_refused_before_the_run_starts(tmp_path, monkeypatch, options,
                                                                                    message):
    """Both were found only after Prefect's server had started and the bar was drawn (an attack, 2026-12-07)."""
    from faithforge.core.errors import UserError
    from faithforge.generation import job
    from faithforge.generation.parameters import GenerateParameters

    monkeypatch.delenv("FF_TEST_NO_SUCH_KEY", raising=False)
    spec = Path(__file__).resolve().parents[2] / "configs" / "specs" / "grounded-summaries.yaml"
    params = GenerateParameters(spec=str(spec), workspace=str(tmp_path / "ws"), **{"backend": "template", **options})
    with pytest.raises(UserError, match=re.escape(message)):
        job.validate(params)
    assert not (tmp_path / "ws").exists()


def test_a_deployment_made_before_the_backend_settings_moved_still_runs(tmp_path):
    """Deployments and schedules store the generation parameters as they were (`api_key_env`, `api_key_secret`,
    `template_delay_s` at the top): after the move to `backend_options` they would have failed every run with
    "extra inputs are not permitted". Their values move; their defaults are dropped."""
    from faithforge.generation.parameters import GenerateParameters

    stored = {"spec": "s.yaml", "backend": "template", "api_key_env": None, "api_key_secret": None,
              "template_delay_s": 0.0}
    assert GenerateParameters.model_validate(stored).backend_options == {}
    moved = GenerateParameters.model_validate({**stored, "backend": "openai", "api_key_env": "OPENAI_API_KEY",
                                               "template_delay_s": 0.5, "backend_options": {"openai": None}})
    assert moved.backend_options == {"openai": {"api_key_env": "OPENAI_API_KEY"}}  # the delay was the template's
    ignored = GenerateParameters.model_validate({**stored, "backend": "ollama", "api_key_env": "$OPENAI_API_KEY"})
    assert ignored.backend_options == {}  # ignored by Ollama then: not a setting that would now refuse the run
    assert GenerateParameters.model_validate({"spec": "s.yaml", "backend": "local"}).backend == "transformers"
    with pytest.raises(Exception, match="Input should be a valid dictionary"):  # a validation error, no traceback
        GenerateParameters.model_validate({**stored, "api_key_env": "A", "backend_options": {"openai": 5}})
    with pytest.raises(Exception, match=r"template: delay_s: Input should be greater than or equal to 0"):
        GenerateParameters.model_validate({**stored, "template_delay_s": -1})  # refused when made, as before
    kept = GenerateParameters.model_validate({**stored, "backend": "openai", "api_key_env": "OLD",
                                              "backend_options": {"openai": {"api_key_env": "NEW"}}})
    assert kept.backend_options["openai"]["api_key_env"] == "NEW"  # the new field wins


@pytest.mark.parametrize("flags", [["--delay", "-1"], ["--delay", "nan"], ["--backend", "ollama", "--delay", "2"]])
def test_the_workers_delay_is_the_template_teachers_and_never_negative(flags, tmp_path, capsys):
    from faithforge.generation import worker

    spec = Path(__file__).resolve().parents[2] / "configs" / "specs" / "grounded-summaries.yaml"
    code = worker.main(["--spec", str(spec), "--db", f"sqlite:///{tmp_path / 'c.db'}", "--out", str(tmp_path / "out"),
                        *(["--backend", "template"] if "--backend" not in flags else []), *flags])
    assert code == 2 and "--delay is the template backend's seconds per request" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "c.db").exists()
