"""How busy the machine is now (`faithforge.core.cpu_load`): other processes' runnable threads, not this
process's own nor the last minute's; what llama.cpp's thread count and OpenMP's wait policy are chosen by."""

from __future__ import annotations

import pytest
import torch


def test_threads_count_other_processes_now_not_this_ones_last_minute():
    """The load average trails by a minute and counts this process: right after training on both cores it read ~2
    and llama.cpp evaluated on one thread. `busy_elsewhere` counts other processes' runnable threads now."""
    import subprocess
    import sys
    import threading

    from faithforge.app.prefect_settings import BUSY_OPENMP, omp_environment
    from faithforge.core.cpu_load import _own_running, busy_elsewhere
    from faithforge.engine.gguf_sampler import default_threads

    stop = threading.Event()

    def spin():  # this process's own busy thread (torch releases the GIL in matmul)
        a = torch.ones(256, 256)
        while not stop.is_set():
            a @ a

    worker = threading.Thread(target=spin, daemon=True)
    worker.start()
    try:
        assert max(_own_running() for _ in range(50)) >= 2  # the reader and the spinning thread
    finally:
        stop.set()
        worker.join()
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        import time

        time.sleep(0.5)
        assert busy_elsewhere() >= 1.5  # two other processes spin (more if the machine is busy besides)
        assert default_threads(cores=2, wait_policy="") == 1
        assert omp_environment(cpu_count=2) == BUSY_OPENMP  # and OpenMP's threads sleep instead of spinning
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def test_this_process_own_running_threads_are_not_counted_and_no_proc_falls_back(monkeypatch):
    import os

    from faithforge.app.prefect_settings import BUSY_OPENMP, IDLE_OPENMP, omp_environment
    from faithforge.core import cpu_load
    from faithforge.engine.gguf_sampler import default_threads

    monkeypatch.setattr(cpu_load, "_procs_running", lambda: 3)  # the host: 3 runnable threads now
    monkeypatch.setattr(cpu_load, "_own_running", lambda: 2)  # 2 of them this process's (its training)
    assert cpu_load.busy_elsewhere(interval_s=0) == 1 and default_threads(cores=2, wait_policy="") == 2
    assert omp_environment(cpu_count=2) == IDLE_OPENMP  # a load average of ~2 from a run that just ended would sleep

    def no_proc():
        raise OSError("no /proc here")

    monkeypatch.setattr(cpu_load, "_procs_running", no_proc)
    monkeypatch.setattr(os, "getloadavg", lambda: (7.5, 0.0, 0.0))
    assert cpu_load.busy_elsewhere() == 7.5 and default_threads(cores=2, wait_policy="") == 1
    assert omp_environment(cpu_count=2) == BUSY_OPENMP


def test_without_proc_or_a_load_average_the_choices_keep_their_defaults(monkeypatch):
    """Windows has neither /proc nor `os.getloadavg`: OpenMP keeps its own default and llama.cpp every core."""
    import os

    import pytest

    from faithforge.app.prefect_settings import IDLE_OPENMP, omp_environment
    from faithforge.core import cpu_load
    from faithforge.engine.gguf_sampler import default_threads

    def no_proc():
        raise OSError("no /proc here")

    monkeypatch.setattr(cpu_load, "_procs_running", no_proc)
    monkeypatch.delattr(os, "getloadavg")
    with pytest.raises(OSError, match="neither"):
        cpu_load.busy_elsewhere()
    assert omp_environment(cpu_count=2) == IDLE_OPENMP and default_threads(cores=2, wait_policy="") == 2


@pytest.mark.parametrize("name, value", [("OMP_WAIT_POLICY", "PASSIVE"), ("OMP_WAIT_POLICY", "ACTIVE"),
                                         ("GOMP_SPINCOUNT", "20000")])
def test_a_wait_setting_the_user_chose_is_kept_and_not_measured(monkeypatch, name, value):
    from faithforge.app import prefect_settings
    from faithforge.core import cpu_load

    for other in prefect_settings.OPENMP_WAIT_SETTINGS:
        monkeypatch.delenv(other, raising=False)
    monkeypatch.setenv(name, value)
    monkeypatch.setattr(cpu_load, "busy_elsewhere", lambda *a, **k: (_ for _ in ()).throw(AssertionError("read")))
    prefect_settings.offline_environment()
    assert {k: prefect_settings.os.environ.get(k) for k in prefect_settings.OPENMP_WAIT_SETTINGS} == {
        **{k: None for k in prefect_settings.OPENMP_WAIT_SETTINGS}, name: value}


def test_an_idle_machine_gets_a_short_spin_and_never_an_endless_one(monkeypatch):
    """Two commands started at the same moment both read an idle machine; with ACTIVE each ran ~17x slower."""
    from faithforge.app import prefect_settings
    from faithforge.core import cpu_load

    for other in prefect_settings.OPENMP_WAIT_SETTINGS:
        monkeypatch.delenv(other, raising=False)
    monkeypatch.setattr(cpu_load, "busy_elsewhere", lambda *a, **k: 0.0)
    prefect_settings.offline_environment()
    assert "OMP_WAIT_POLICY" not in prefect_settings.os.environ  # libgomp's own policy: spin a little, then sleep
    assert int(prefect_settings.os.environ["GOMP_SPINCOUNT"]) <= 10_000  # not its 300,000, nor ACTIVE's endless

