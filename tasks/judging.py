"""Judging fanned out as mapped Prefect tasks on the task runner `distributed.judge_runner` names.

`threads`: a thread pool (judges that wait on a server, e.g. `llm`); `dask`: a Dask LocalCluster of worker processes
(CPU-bound judges: `nli`, `likelihood`, `trained`), through prefect-dask. The chunks run as one nested flow run
(`faithforge-judge`) whose task runner is the chosen one; each chunk is one `judge-chunk` task, and the results
come back in chunk order, so the report equals the serial one (`faithforge.evaluation.fanout`).
"""

from __future__ import annotations

from typing import Any, Callable

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from faithforge.core.config import PipelineConfig
from faithforge.evaluation.fanout import Chunk, ChunkMapper, judge_chunk


def _dask_runner(workers: int) -> Any:
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as exc:  # an optional extra
        from faithforge.core.errors import UserError

        raise UserError("distributed.judge_runner is dask but prefect-dask is not installed; run "
                        "pip install 'faithforge[distributed]' (or choose threads)") from exc
    return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                          cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True,
                                          "dashboard_address": None})


#: The one registry of judging task runners (`DistributedConfig.judge_runner`; `serial` runs no tasks).
JUDGE_RUNNERS: dict[str, Callable[[int], Any]] = {
    "threads": lambda workers: ThreadPoolTaskRunner(max_workers=workers),
    "dask": _dask_runner,
}


@task(name="judge-chunk", cache_policy=NO_CACHE, log_prints=False)
def judge_chunk_task(chunk: Chunk) -> list:
    return judge_chunk(*chunk)


@flow(name="faithforge-judge", log_prints=False)
def judge_flow(chunks: list) -> list:
    """Judge every chunk as a mapped task on this flow's task runner; results in chunk order."""
    futures = judge_chunk_task.map(chunks)
    return [future.result() for future in futures]


def judging_mapper(config: PipelineConfig) -> ChunkMapper | None:
    """The chunk mapper for `config.distributed.judge_runner`, or None for `serial`."""
    cfg = config.distributed
    if cfg.judge_runner == "serial":
        return None
    make_runner = JUDGE_RUNNERS[cfg.judge_runner]

    def run(chunks: list[Chunk]) -> list:
        return judge_flow.with_options(task_runner=make_runner(cfg.judge_workers))(chunks)

    return run
