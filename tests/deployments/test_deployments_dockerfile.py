"""Static checks of the A100 worker's Dockerfile (no Docker engine here): what it copies exists and is not
ignored, what it installs covers the package, and it starts a worker on the pool the deployments target."""

from __future__ import annotations

import fnmatch
import json
import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _instructions() -> list[tuple[str, str]]:
    lines, current = [], ""
    for raw in (REPO / "Dockerfile").read_text().splitlines():
        if raw.lstrip().startswith("#") and not current:
            continue
        current += raw.rstrip("\\").strip() + " " if raw.endswith("\\") else raw.strip()
        if not raw.endswith("\\"):
            if current.strip():
                op, _, rest = current.strip().partition(" ")
                lines.append((op.upper(), rest.strip()))
            current = ""
    return lines


def _ignored(path: str) -> bool:
    patterns = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path, p.lstrip("*/")) for p in patterns)


def test_dockerfile_builds_from_cuda_and_copies_what_exists():
    ops = _instructions()
    assert ops[0][0] == "FROM" and ops[0][1].startswith("nvidia/cuda:")
    copies = [shlex.split(rest) for op, rest in ops if op == "COPY"]
    assert copies
    for args in copies:
        for source in args[:-1]:
            assert (REPO / source).exists(), source
            assert not _ignored(source), f"{source} is excluded by .dockerignore"
    copied = {Path(s).parts[0] for args in copies for s in args[:-1]}
    # every package setuptools installs (pyproject include list) is in the build context
    assert {"faithforge", "flows", "tasks", "gpu", "deployments", "pyproject.toml"} <= copied
    assert _ignored("tests") and _ignored(".git")


def test_dockerfile_starts_one_job_at_a_time_worker_on_the_a100_pool():
    from faithforge.deployments.deploy import A100_POOL

    ops = dict((op, rest) for op, rest in _instructions() if op in ("CMD", "ENTRYPOINT"))
    cmd = json.loads(ops["CMD"])
    assert cmd[:3] == ["prefect", "worker", "start"]
    assert cmd[cmd.index("--pool") + 1] == A100_POOL and cmd[cmd.index("--limit") + 1] == "1"
    assert cmd[cmd.index("--type") + 1] == "process"
    env = " ".join(rest for op, rest in _instructions() if op == "ENV")
    assert "FAITHFORGE_WORKSPACE=/root/.faithforge-worker" in env
    run = " ".join(rest for op, rest in _instructions() if op == "RUN")
    assert "download.pytorch.org/whl/cu" in run and 'pip install ".[postgres]" s3fs gcsfs' in run
