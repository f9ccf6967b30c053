"""The small pipeline sizes the end-to-end tests run (tests/test_pipeline_flow.py under the Prefect test harness,
tests/test_deployments_integration.py on a real server): a whole pipeline in minutes on 2 CPU cores.

Config overrides as `load_config(overrides=...)` takes them; copy before changing (it is shared).
"""

SMALL_PIPELINE = {
    "generate": {"train_sources": 120, "val_sources": 20, "test_sources": 30},
    "warm_start": {"steps": 30, "batch_size": 16},
    "reference": {"shard_size": 64},
    "train": {"steps": 4, "batch_size": 8, "checkpoint_every": 2},
    "evaluate": {"bootstrap_samples": 200},
}
