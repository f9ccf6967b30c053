"""How busy the machine is now, for choices that must not spin threads against other work: llama.cpp's thread
count (`engine.gguf_sampler.default_threads`) and OpenMP's wait policy (`app.prefect_settings.omp_environment`).

Standard library only: the wait policy is chosen before torch is imported.
"""

from __future__ import annotations

import os


def oversubscribed(cores: int, busy: float | None = None) -> bool:
    """Whether other work already fills `cores`: `busy` runnable threads elsewhere (default: `busy_elsewhere()`,
    measured now) at or above the core count. Threads that spin at a barrier (OpenMP's, llama.cpp's) then stall on
    descheduled partners, so the callers sleep or use one thread. False where nothing can be read: the libraries'
    own defaults."""
    if busy is None:
        try:
            busy = busy_elsewhere()
        except OSError:
            return False
    return busy >= cores


def busy_elsewhere(samples: int = 5, interval_s: float = 0.02) -> float:
    """Runnable threads of other processes now: the kernel's count of runnable threads (`procs_running` in
    /proc/stat) less this process's own, the median of `samples` readings; the 1-minute load average where /proc
    cannot be read; OSError where neither can. Not the load average alone: it trails by a minute and counts this
    process, so right after a stage trained on both of 2 cores it read ~2 and llama.cpp evaluated on one thread
    (`demo --real` seed 6: evaluate 176 s against 110 s with this, BENCHMARKS.md), and a command started within a
    minute of another one's end chose OpenMP's sleeping wait policy on an idle machine (a DPO step 1.2× slower). The
    count is the host's: in a container pinned to fewer CPUs other tenants' threads count too, as they did in the
    load average."""
    import statistics
    import time

    readings = []
    try:
        for i in range(samples):
            if i:
                time.sleep(interval_s)
            readings.append(_procs_running() - _own_running())
    except (OSError, ValueError):
        try:
            return os.getloadavg()[0]
        except (OSError, AttributeError) as error:  # Windows has no load average
            raise OSError("neither /proc/stat nor a load average can be read here") from error
    return max(0.0, statistics.median(readings))


def _procs_running() -> int:
    with open("/proc/stat") as stat:
        for line in stat:
            if line.startswith("procs_running "):
                return int(line.split()[1])
    raise ValueError("/proc/stat has no procs_running line")


def _own_running() -> int:
    running = 0
    for task in os.scandir("/proc/self/task"):
        try:
            with open(f"{task.path}/stat", "rb") as stat:  # a thread's name may be any bytes
                running += stat.read().rsplit(b")", 1)[1].split()[0] == b"R"  # the state follows the name
        except OSError:  # the thread ended between the listing and the read
            continue
    return running
