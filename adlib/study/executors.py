"""Where a study's tasks run: in this process, a local process pool, or Slurm (submitit)."""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import torch

from adlib.study.load import load_study
from adlib.study.provenance import WORKER_THREADS
from adlib.study.results import hardware_info
from adlib.study.rows import RESULT_FIELDS
from adlib.study.spec import Task

EXECUTORS = ("serial", "local", "slurm")


def execute(task: Task) -> list[dict]:
    """Run one task (in whichever process the executor chose); results carry the hardware."""
    study = load_study(task.study)
    results = study.run(task)
    hardware = hardware_info(task.device)
    return [{**{k: r[k] for k in RESULT_FIELDS if k in r}, "hardware": hardware} for r in results]


def _die_with_parent() -> None:
    """Linux: have the kernel send this worker SIGTERM when the study process dies, so a killed
    study leaves no orphaned workers behind (a rerun resumes from the rows either way)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the call
        os._exit(1)


def _init_worker(gpu_ids: Any, threads: int) -> None:
    _die_with_parent()
    if gpu_ids is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu_ids.get())
    os.environ["OMP_NUM_THREADS"] = str(threads)

    torch.set_num_threads(threads)


def _visible_gpus() -> int:
    try:
        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 -- no torch / no driver: CPU
        return 0


def _collect(task, get_rows, done, failed) -> None:
    try:
        rows = get_rows()
    except Exception as err:  # noqa: BLE001 -- one failed run must not lose the others
        failed(task, err)
        return
    done(task, rows)


def run_serial(tasks, done, failed):
    for task in tasks:
        _collect(task, lambda t=task: execute(t), done, failed)


def run_local(tasks, done, failed, workers: int):
    ctx = mp.get_context("spawn")  # fresh interpreters: no forked OpenMP / CUDA state
    gpus = _visible_gpus()
    gpu_ids = None
    if gpus > 1:
        gpu_ids = ctx.Manager().Queue()
        for i in range(workers):
            gpu_ids.put(i % gpus)
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(gpu_ids, WORKER_THREADS)) as pool:
        futures = {pool.submit(execute, t): t for t in tasks}
        for future in as_completed(futures):
            _collect(futures[future], future.result, done, failed)


def run_slurm(tasks, done, failed, *, folder: Path, cluster: str, partition: str | None,
               time_min: int, gpus: int, cpus: int, workers: int | None, name: str):
    # only a Slurm run uses submitit: local runs and their workers never import it
    import submitit

    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    params: dict[str, Any] = {"timeout_min": time_min, "cpus_per_task": cpus,
                              "gpus_per_node": gpus, "name": name}
    if partition:
        params["slurm_partition"] = partition
    if workers:
        params["slurm_array_parallelism"] = workers
    executor.update_parameters(**params)
    jobs = executor.map_array(execute, list(tasks))  # one array job for the whole grid
    task_of = {job.job_id: task for job, task in zip(jobs, tasks)}
    for job in submitit.helpers.as_completed(jobs):
        _collect(task_of[job.job_id], job.result, done, failed)
