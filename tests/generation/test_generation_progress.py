"""A generation run reports through the process's one progress registry (`faithforge.core.progress`):
counts as stage "generate", news lines with the counts unchanged, from any thread."""

from __future__ import annotations

import threading
from pathlib import Path

from faithforge.backends.template import TemplateBackend
from faithforge.core import progress
from faithforge.core.progress import StageReporter, add_sink, remove_sink
from faithforge.generation.coverage_db import CoverageDB
from faithforge.generation.job import PROGRESS_STAGE
from faithforge.generation.runner import GenerationOptions, run_generation
from faithforge.generation.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]
GROUNDED = str(ROOT / "configs" / "specs" / "grounded-summaries.yaml")


def test_a_run_reports_counts_and_news_to_the_sinks(tmp_path):
    spec = load_spec(GROUNDED)
    db = CoverageDB(f"sqlite:///{tmp_path / 'c.db'}")
    db.register_worker("busy-elsewhere")  # holds the last slot for 1 s: the run says it waits, then takes it
    db.sync(spec, spec.targets(2))
    db.claim(spec.name, "busy-elsewhere", 1, 1.0)
    seen: list[tuple[str, int, int, str]] = []

    def sink(stage: str, done: int, total: int, message: str) -> None:
        seen.append((stage, done, total, message))

    reporter = StageReporter(PROGRESS_STAGE)
    add_sink(sink)
    try:
        summary = run_generation(spec, TemplateBackend(), db, tmp_path / "out",
                                 GenerationOptions(target=2, poll_s=0.05), reporter.counts, reporter.news)
    finally:
        remove_sink(sink)
        db.close()
    assert summary.done_total == 2
    assert {s[0] for s in seen} == {PROGRESS_STAGE}
    counts = [(d, t) for _, d, t, m in seen if not m]
    assert counts == [(0, 2), (1, 2), (2, 2)]
    news = [(d, t, m) for _, d, t, m in seen if m]
    assert len(news) == 1 and news[0][:2] == (1, 2) and "waiting for 1 other worker(s)" in news[0][2]


def test_news_before_any_count_and_a_removed_sink():
    seen: list[tuple] = []
    sink = lambda *args: seen.append(args)  # noqa: E731
    add_sink(sink)
    reporter = StageReporter("generate")
    reporter.news("starting")
    remove_sink(sink)
    remove_sink(sink)  # removing twice is harmless
    reporter.counts(1, 3)
    assert seen == [("generate", 0, 0, "starting")]


def test_sinks_added_and_removed_from_many_threads_while_reporting():
    calls = []
    lock = threading.Lock()

    def steady(stage, done, total, message):
        with lock:
            calls.append(done)

    before = len(progress._sinks)
    add_sink(steady)
    errors: list[BaseException] = []

    def churn():
        try:
            for _ in range(500):
                s = lambda *args: None  # noqa: E731
                add_sink(s)
                progress.report("x", 1, 1)
                remove_sink(s)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=churn) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    remove_sink(steady)
    assert not errors and len(calls) == 4 * 500
    assert steady not in progress._sinks and len(progress._sinks) == before
