"""Durability and scale-out with real processes: SIGKILL mid-run, and three workers on one database.

Workers are `python -m faithforge.generation.worker` processes with the template backend (a small
per-request delay so kills land mid-run). Afterwards the database and the files must agree exactly:
the target count of unique valid examples, none lost or duplicated, coverage counters equal to rows.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from faithforge.generation.coverage_db import CoverageDB
from faithforge.generation.files import verify
from faithforge.generation.schemas import GroundedSummary

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "configs" / "specs" / "grounded-summaries.yaml"
HANG_GUARD_S = 120  # only to fail instead of hanging forever; no test asserts on time


def spec_copy(tmp_path: Path) -> tuple[Path, str]:
    """The grounded-summaries spec under a unique name (so a shared PostgreSQL database starts empty)."""
    data = yaml.safe_load(SPEC.read_text())
    data["name"] = f"t-{uuid.uuid4().hex[:10]}"
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, data["name"]


def start_worker(spec: Path, db_url: str, out: Path, target: int, name: str, delay: float = 0.01,
                 ttl_s: float = 2.0) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "faithforge.generation.worker", "--spec", str(spec), "--db", db_url, "--out", str(out),
           "--backend", "template", "--target", str(target), "--delay", str(delay), "--claim-ttl", str(ttl_s),
           "--poll", "0.05", "--worker-id", name]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> dict:
    stdout, stderr = proc.communicate(timeout=HANG_GUARD_S)
    assert proc.returncode == 0, stderr[-2000:]
    return json.loads(stdout.strip().splitlines()[-1])


def assert_exact(db: CoverageDB, name: str, out: Path, target: int) -> None:
    report = verify(db, name, out)
    assert report.ok, report.problems
    assert report.examples == report.files == target
    rows = list(db.examples(name))
    assert len({r.content_hash for r in rows}) == target and len({r.slot_id for r in rows}) == target
    for row in rows:
        GroundedSummary.model_validate(json.loads((out / row.relpath).read_text())["data"])
    combos = db.combinations(name)
    assert sum(c.successes for c in combos) == target
    assert all(c.attempts == c.successes + c.failures for c in combos)
    live = [s for s in db.slots(name) if s.status != "abandoned"]
    assert len(live) == target and all(s.status == "done" for s in live)


def test_sigkill_mid_run_loses_and_duplicates_nothing(tmp_path):
    spec, name = spec_copy(tmp_path)
    db_url, out, target = f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "out", 40
    db = CoverageDB(db_url)
    rng = random.Random(7)
    kills = 0
    for _ in range(4):
        before = db.counts(name).done if kills else 0
        proc = start_worker(spec, db_url, out, target, f"victim-{kills}", delay=0.02)
        deadline = time.monotonic() + HANG_GUARD_S
        while proc.poll() is None and db.counts(name).done < before + 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.03))  # land anywhere in the request / commit / file-write cycle
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.communicate()
    assert kills >= 3
    assert db.counts(name).done < target  # the kills really happened mid-run
    summary = finish(start_worker(spec, db_url, out, target, "survivor"))
    assert summary["done_total"] == target and summary["failures"] == {}
    assert_exact(db, name, out, target)


def run_three_workers(db_url: str, tmp_path: Path) -> None:
    spec, name = spec_copy(tmp_path)
    out, target = tmp_path / "out", 45
    db = CoverageDB(db_url)  # create the tables once; the workers also race to do it
    # no worker dies here: a long lease keeps a worker stalled by a busy machine from losing its slot
    procs = [start_worker(spec, db_url, out, target, f"w{i}", ttl_s=60.0) for i in range(3)]
    summaries = [finish(p) for p in procs]
    # every slot generated exactly once: the workers' new examples add up to the target, nothing was
    # discarded for a lost lease, and no duplicate content was produced
    assert sum(s["generated"] for s in summaries) == target
    assert all(s["lost_claims"] == 0 and s["failures"] == {} for s in summaries)
    assert_exact(db, name, out, target)


def test_three_workers_share_one_sqlite_database(tmp_path):
    run_three_workers(f"sqlite:///{tmp_path / 'shared.db'}", tmp_path)


@pytest.mark.postgres
def test_three_workers_share_one_postgresql_database(tmp_path):
    url = os.environ.get("FAITHFORGE_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("FAITHFORGE_TEST_POSTGRES_URL is not set (e.g. postgresql://postgres@127.0.0.1:5432/faithforge_test)")
    pytest.importorskip("psycopg", reason="pip install 'psycopg[binary]' to test against PostgreSQL")
    run_three_workers(url, tmp_path)


def test_expired_claim_of_a_dead_worker_is_retaken(tmp_path):
    spec, name = spec_copy(tmp_path)
    db_url = f"sqlite:///{tmp_path / 'c.db'}"
    db = CoverageDB(db_url)
    from faithforge.generation.spec import load_spec

    loaded = load_spec(spec)
    db.sync(loaded, loaded.targets(2))
    (held,) = db.claim(name, "dead-worker", 1, ttl_s=0.2)
    assert db.claim(name, "other", 5, ttl_s=60)[0].slot_id != held.slot_id  # the live claim is skipped
    time.sleep(0.3)  # let the lease lapse
    (retaken,) = db.claim(name, "other", 5, ttl_s=60)
    assert retaken.slot_id == held.slot_id and retaken.token != held.token
    assert db.complete(held, {"x": 1}, "h", "p", spec=name, backend="b", model="m", worker="dead-worker",
                       repaired=False, prompt_tokens=0, completion_tokens=0, max_attempts=3).status == "lost"
