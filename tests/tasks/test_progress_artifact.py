"""A stage's progress artifact is sent by its own thread: the stage never waits on the Prefect server (2026-12-07:
the warm start stood still ~10 s inside `update_progress_artifact` while a dead embedded server was started
again). The sender here is a stand-in only where a real server cannot be made to hang on demand; the last test
sends to a real Prefect server."""

from __future__ import annotations

import threading

import pytest

from faithforge.tasks.progress_artifact import ProgressArtifact, stage_progress_artifact


class HeldSender:
    """Sends nothing until `release` is set: a server that does not answer."""

    def __init__(self, fail_first: int = 0) -> None:
        self.release = threading.Event()
        self.started = threading.Event()
        self.refused = threading.Event()
        self.sent: list[tuple[object, str | None, float, str]] = []
        self.fail_first = fail_first

    def __call__(self, artifact_id, key, percent, description):
        self.started.set()
        self.release.wait()
        if self.fail_first:
            self.fail_first -= 1
            self.refused.set()
            raise ConnectionError("refused")
        self.sent.append((artifact_id, key, percent, description))
        return "artifact-1"


def test_the_stage_goes_on_while_the_server_does_not_answer_and_the_last_value_is_sent_at_the_end():
    sender = HeldSender()
    artifact = ProgressArtifact("progress-train", "train", send=sender)
    artifact("train", 1, 100, "step 1")
    assert sender.started.wait(60)  # the first value is on its way, and held
    for step in range(2, 101):  # the stage's loop: it would hang here if a value waited for the server
        artifact("train", step, 100, f"step {step}")
    assert sender.sent == []
    sender.release.set()
    artifact.close()
    # the first value, then only the newest: 98 values superseded while the first was on its way were dropped
    assert sender.sent == [(None, "progress-train", 1.0, "train: step 1"),
                           ("artifact-1", "progress-train", 100.0, "train: step 100")]


def test_one_value_per_percent_and_every_wait_message():
    handed: list[tuple[float, str]] = []
    artifact = ProgressArtifact("progress-train", "train", send=HeldSender())
    artifact.set = lambda percent, description: handed.append((percent, description))  # what the sink hands over
    for done in (0, 0, 1, 4, 10, 10, 990, 1000):  # of 1000: 0 %, 0 %, 0.1 %, 0.4 %, 1 %, 1 %, 99 %, 100 %
        artifact("train", done, 1000, f"step {done}")
    artifact("train", 1000, 1000, "waiting for the gpu slot held by run abc")  # 100 % again, but a wait
    assert handed == [(0.0, "train: step 0"), (1.0, "train: step 10"), (99.0, "train: step 990"),
                      (100.0, "train: step 1000"), (100.0, "train: waiting for the gpu slot held by run abc")]


def test_a_refused_send_is_retried_by_the_next_value_of_the_same_artifact():
    sender = HeldSender(fail_first=1)
    sender.release.set()
    artifact = ProgressArtifact("progress-reference", "reference", send=sender)
    artifact("reference", 1, 10, "shard 1")  # refused: no id yet, and the sending thread must live on
    assert sender.refused.wait(60)
    artifact("reference", 2, 10, "shard 2")
    artifact.close()
    assert sender.sent == [(None, "progress-reference", 20.0, "reference: shard 2")]  # created by the next value


def test_a_stage_that_fails_waits_for_no_server(monkeypatch, prefect_harness, tmp_path):
    """A stage that raises leaves at once although its last progress value is still held by a server that does
    not answer: the flush it would wait for after a success is set to an hour here, so waiting would time out."""
    from prefect import flow, task

    from faithforge.core.config import PipelineConfig
    from faithforge.tasks import progress_artifact, stage_runner

    sender = HeldSender()
    monkeypatch.setattr(progress_artifact, "FLUSH_S", 3600.0)
    monkeypatch.setattr(stage_runner, "stage_progress_artifact",
                        lambda stage: ProgressArtifact(f"progress-{stage}", stage, send=sender))

    def failing_stage(ctx):
        ctx.progress("reference", 3, 10, "step 3")
        assert sender.started.wait(60)  # that value is on its way, and held
        raise ValueError("the stage failed")

    @task(retries=0)
    def stage_task(config):
        return stage_runner.run_stage("reference", config, None, failing_stage)

    @flow
    def run(config):
        return stage_task(config)

    with pytest.raises(ValueError, match="the stage failed"):
        run(PipelineConfig(workspace=str(tmp_path / "ws")))
    assert sender.sent == []  # still held: the stage did not wait for it
    sender.release.set()


@pytest.mark.usefixtures("prefect_harness")
def test_the_artifact_belongs_to_the_stages_task_run_on_a_real_server():
    from prefect import flow, task
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.context import get_run_context

    @task
    def stage() -> str:
        with stage_progress_artifact("warm_start") as artifact:
            for step in range(1, 21):
                artifact("warm_start", step, 20, f"step {step}")
        return str(get_run_context().task_run.id)

    @flow
    def run() -> str:
        return stage()

    task_run_id = run()
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["progress-warm-start"])))
    ours = [a for a in found if str(a.task_run_id) == task_run_id]
    assert len(ours) == 1 and ours[0].type == "progress"
    assert ours[0].data == 100.0 and ours[0].description == "warm_start: step 20"
