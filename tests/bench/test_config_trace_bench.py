"""bench/config_trace.py: the path and its climbs, worked out by hand on a stack as `traceback.walk_stack` gives it."""

from __future__ import annotations


from tests.fixtures.bench_scripts import load_bench


def _bench():
    return load_bench("config_trace")


#: (module, function, file) outermost first: the CLI, Prefect's engine in between, then our rooms down to TRL
STACK = [
    ("faithforge.app.cli", "main", "cli.py"),
    ("faithforge.flows.pipeline", "pipeline_flow", "pipeline.py"),
    ("prefect.flow_engine", "run_flow_sync", "flow_engine.py"),
    ("faithforge.flows.train", "train_flow", "train.py"),
    ("prefect.task_engine", "call_task_fn", "task_engine.py"),
    ("faithforge.flows.train", "dpo_task", "train.py"),
    ("faithforge.tasks.stage_runner", "run_stage", "stage_runner.py"),
    ("faithforge.stages.train", "train_dpo", "train.py"),
    ("faithforge.stages.train", "_train_dpo", "train.py"),
    ("faithforge.training.dpo", "dpo_config", "dpo.py"),
    ("bench", "__init__", "config_trace.py"),
]


def test_the_path_starts_at_the_first_flow_and_counts_each_room_once_per_visit():
    bench = _bench()
    path = bench.path_from_flows(bench.faithforge_frames(STACK))
    assert path[0] == ("faithforge.flows.pipeline", "pipeline_flow") and path[-1] == ("faithforge.training.dpo",
                                                                                       "dpo_config")
    assert bench.files_on(path) == ["faithforge.flows.pipeline", "faithforge.flows.train",
                                    "faithforge.tasks.stage_runner", "faithforge.stages.train",
                                    "faithforge.training.dpo"]
    assert bench.climbs(bench.files_on(path)) == []
    assert bench.from_stage_flow(bench.files_on(path))[0] == "faithforge.flows.train"


def test_a_lower_layer_calling_back_up_is_a_climb():
    bench = _bench()
    # the old path: flows/train.py → tasks/gated.py → back to flows/train.py:_train_here → ...
    files = ["faithforge.flows.train", "faithforge.tasks.gated", "faithforge.flows.train", "faithforge.tasks.train",
             "faithforge.tasks.common", "faithforge.stages.train"]
    assert bench.climbs(files) == [("faithforge.tasks.gated", "faithforge.flows.train")]
    assert bench.module_layer("faithforge.stages.train") == "stages" and bench.module_layer("faithforge.x") == "core"
