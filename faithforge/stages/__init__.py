"""The logic behind every pipeline task, as plain Python functions (no Prefect).

Each stage takes a `StageContext`, does one job, writes through the workspace's atomic writes, records
what it made in the store, and returns small JSON (paths, keys, metrics) — never models or tensors.
A stage whose output already exists for the same inputs returns it with `"reused": True`.
"""
