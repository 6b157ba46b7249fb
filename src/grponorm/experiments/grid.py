"""Grids of independent training runs, several at once: worker processes or a Ray cluster.

Reads top to bottom: the machine (cores, memory, GPUs) -> :func:`plan`: how many runs at once
and the threads / GPUs of each, with every setting checked before anything starts ->
:func:`train_job`: one run, in whichever process runs it -> :func:`run_jobs`: the executors
(this process, ``spawn`` worker processes, Ray tasks), one line per finished run, a bar, and
``progress.json``.

Every run keeps its own folder (config.json, metrics.jsonl, checkpoints, summary.json), so a
grid killed at any point, SIGKILL included, continues on the next invocation:

- a run with ``summary.json`` is finished: it is read, never trained again;
- a run with ``config.json`` but no summary was started: it resumes from its last checkpoint
  (``TrainConfig(resume=folder)``), so its metrics equal an uninterrupted run's;
- a run is trained only while its process holds the folder's lock (``flock`` on ``.lock``,
  released by the kernel when the process dies), so two workers, or two invocations of the same
  grid, never train the same run at once; a second claimant waits, then finds it finished.

The threads of a run are fixed before it starts (``TrainConfig.threads``, also
``torch.set_num_threads`` in the worker): results depend on the thread count, not on how many
runs share the machine. A failing run leaves its traceback in ``<folder>/error.txt``; the other
runs go on and :func:`run_jobs` reports the failures at the end (the caller raises
:class:`GridError`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import importlib.util
import json
import math
import multiprocessing as mp
import os
import socket
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ..hardware import available_cores
from ..rl.config import TrainConfig
from ..rl.summary import read_summary
from ..runs import GridError, atomic_write, to_jsonable
from . import rl_train

__all__ = ["EXECUTORS", "GridError", "Job", "Plan", "Result", "check_settings", "claim", "plan",
           "run_jobs", "train_job"]

EXECUTORS = ("local", "ray")
RUN_MEMORY_GB = 1.1  # host memory of one CPU run of the embedded model in fp32
RAY_INSTALL = "pip install 'grponorm[grid]'"
RAY_TIMEOUT_S = 3.0  # how long an unreachable Ray address may take to fail


@dataclass(frozen=True)
class Job:
    """One run of a grid."""

    key: str  # what the progress line names, e.g. "hard/none/adamw/lr0.0005 seed 1"
    config: TrainConfig  # a new run's settings; ``run_dir`` is the run's folder

    @property
    def folder(self) -> Path:
        return Path(self.config.run_dir)


@dataclass
class Result:
    """What one run gave back."""

    key: str
    run_dir: str
    summary: dict | None = None  # None: the run failed
    error: str = ""  # one line; the traceback is in <run_dir>/error.txt
    seconds: float = 0.0  # wall time of this invocation's training (0: finished earlier)

    @property
    def ok(self) -> bool:
        return self.summary is not None


@dataclass(frozen=True)
class Plan:
    """How a grid runs: resolved from the settings and the machine by :func:`plan`."""

    executor: str  # local or ray
    workers: int  # runs at once (ray: 0 = as many as the cluster's resources allow)
    threads: int  # torch threads of each run
    slots: tuple = ()  # local: CUDA_VISIBLE_DEVICES of each worker (None = not set)
    gpus_per_run: float = 0.0  # ray: GPU share of each task (0 = CPU runs)
    memory_gb: float = RUN_MEMORY_GB  # ray: the memory resource of each task
    ray_address: str = ""  # ray: cluster address ("" = start a local one)

    def describe(self) -> str:
        at_once = self.workers or "auto"
        return f"{self.executor}, {at_once} at once, {self.threads} thread(s) each"


# ------------------------------------------------------------------------------ the machine

def cores() -> int:
    """CPU cores this process may use: its affinity (``os.sched_getaffinity``: taskset, a
    container), capped by a cgroup CPU quota."""
    return available_cores()


def memory_available_gb() -> float | None:
    """``MemAvailable`` of /proc/meminfo in GB (None where there is no such file)."""
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20  # kB -> GB
    return None


def gpu_ids(device: str) -> list[str]:
    """The GPUs the runs of ``device`` would use (none for device=cpu or without CUDA)."""
    if device == "cpu":
        return []
    import torch

    if not torch.cuda.is_available():
        return []
    if device.startswith("cuda:"):
        return [device.split(":", 1)[1]]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [x.strip() for x in visible.split(",") if x.strip()] if visible else []
    return ids or [str(i) for i in range(torch.cuda.device_count())]


# ------------------------------------------------------------------------------ the plan

def check_settings(workers: int = 0, executor: str = "local", ray_address: str = "") -> None:
    """The checks that need no grid: raise ValueError / ImportError with a one-line message."""
    if workers < 0:
        raise ValueError(f"workers must be >= 0 (0 = auto from cores and GPUs); got {workers}")
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {EXECUTORS}; got {executor!r}")
    if executor != "ray":
        return
    if importlib.util.find_spec("ray") is None:
        raise ImportError(f"executor=ray needs Ray: {RAY_INSTALL}")
    if ray_address in ("", "auto"):  # start a local cluster / find the running one
        return
    host, _, port = ray_address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"ray_address must be host:port or ray://host:port; got {ray_address!r}")
    try:
        with socket.create_connection((host, int(port)), timeout=RAY_TIMEOUT_S):
            pass
    except OSError as exc:
        raise ValueError(
            f"ray_address {ray_address}: cannot reach {host}:{port} within {RAY_TIMEOUT_S:g} s "
            f"({exc.strerror or exc}); start one with `ray start --head`, or leave ray_address "
            "empty for a local cluster") from None


def plan(n_runs: int, *, workers: int = 0, executor: str = "local", ray_address: str = "",
         threads: int = 0, device: str = "auto", gpus_per_run: float = 1.0,
         run_memory_gb: float = RUN_MEMORY_GB) -> Plan:
    """Resolve the settings of a grid of ``n_runs`` runs on this machine, or raise ValueError /
    ImportError before anything starts.

    Local, on GPUs: ``1 / gpus_per_run`` runs per GPU (each worker sees only its GPUs through
    CUDA_VISIBLE_DEVICES). On CPU: one run per ``threads`` cores (one per core when threads=0),
    at most as many as MemAvailable holds at ``run_memory_gb`` each. ``threads=0`` splits the
    cores between the runs at once. Ray: the cluster's resources decide (each task asks for
    ``threads`` CPUs, ``gpus_per_run`` GPUs and ``run_memory_gb`` of memory); ``workers`` caps
    the runs in flight.

    Local ``workers`` (runs at once: ``min(workers, n_runs)``) above what the machine runs is
    refused with what it can run, never silently lowered or oversubscribed: on CPU more than
    MemAvailable holds, or more than ``cores // max(threads, 1)`` (each run needs at least one
    core of its own: OpenMP threads sharing a core are many times slower,
    :mod:`grponorm.hardware`); on GPUs more than the GPU slots (``1 / gpus_per_run`` per GPU).
    """
    check_settings(workers, executor, ray_address)
    if threads < 0:
        raise ValueError(f"threads must be >= 0 (0 = the cores split between the runs); "
                         f"got {threads}")
    if gpus_per_run <= 0 or run_memory_gb < 0:
        raise ValueError(f"gpus_per_run must be > 0 and run_memory_gb >= 0; got "
                         f"{gpus_per_run} and {run_memory_gb}")
    n_runs = max(1, n_runs)
    if executor == "ray":
        return Plan("ray", min(workers, n_runs), threads or 1,
                    gpus_per_run=0.0 if device == "cpu" else gpus_per_run,
                    memory_gb=run_memory_gb, ray_address=ray_address)
    n_cores, gpus = cores(), gpu_ids(device)
    if gpus:
        if gpus_per_run >= 1:  # a run spans whole GPUs
            span = int(gpus_per_run)
            groups = [",".join(gpus[i:i + span]) for i in range(0, len(gpus) - span + 1, span)]
        else:  # several runs share a GPU (spread first: worker i on GPU i % n)
            groups = [g for _ in range(int(1 / gpus_per_run)) for g in gpus]
        if workers and min(workers, n_runs) > max(1, len(groups)):
            raise ValueError(
                f"workers={workers}: {min(workers, n_runs)} runs at once, but {len(gpus)} "
                f"GPU(s) at gpus_per_run={gpus_per_run:g} run {max(1, len(groups))} at once; "
                f"use --workers {max(1, len(groups))} or fewer (0 = auto), or a smaller "
                f"--gpus-per-run to share GPUs")
        workers = min(workers or len(groups) or 1, n_runs)
        pin = not device.startswith("cuda:")  # cuda:N: every run on that GPU, as asked
        slots = tuple(groups[i % len(groups)] if pin and groups else None
                      for i in range(workers))
    else:
        avail = memory_available_gb()
        fit = math.floor(avail / run_memory_gb) if avail and run_memory_gb else n_runs
        if workers and min(workers, n_runs) > max(1, fit):
            need = min(workers, n_runs) * run_memory_gb
            raise ValueError(
                f"workers={workers}: {min(workers, n_runs)} runs at once need ~{need:.1f} GB "
                f"({run_memory_gb:g} GB each) but {avail:.1f} GB is available (MemAvailable); "
                f"use --workers {max(1, fit)} or fewer")
        by_cores = max(1, n_cores // max(threads, 1))  # runs with a core per thread
        if workers and min(workers, n_runs) > by_cores:
            per_run = f"{threads} thread(s)" if threads else "one thread"
            raise ValueError(
                f"workers={workers}: {min(workers, n_runs)} runs at once, but this machine has "
                f"{n_cores} core(s) for this process, which run {by_cores} at once with "
                f"{per_run} each; use --workers {min(by_cores, max(1, fit))} or fewer "
                f"(0 = auto)")
        workers = min(workers or max(1, min(by_cores, fit)), n_runs)
        slots = (None,) * workers
    return Plan("local", workers, threads or max(1, n_cores // workers), slots)


# ------------------------------------------------------------------------------ one run

@contextlib.contextmanager
def claim(folder: Path, wait: bool = True):
    """Hold the run folder's lock (``flock``; the kernel releases it when the process dies).
    ``wait=False`` raises BlockingIOError at once when another process holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        yield


@contextlib.contextmanager
def _output_to(log: Path | None):
    """Send this process's stdout and stderr (file descriptors 1 and 2: Python, C and
    subprocess output alike) to ``log`` while a worker trains; None = leave them."""
    if log is None:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "a") as fh:
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)


def _read_summary(folder: Path) -> dict:
    """A finished run's summary (field names of earlier versions read as today's)."""
    return read_summary(folder)


def train_job(job: Job, log_to_file: bool = False, progress: bool = False) -> Result:
    """Train one run of a grid (resume it if it was started, read it if it is finished).
    Runs in whichever process the executor chose; never raises for a failing run."""
    folder, t0 = job.folder, time.time()
    with claim(folder):  # waits while another process trains this run
        if (folder / "summary.json").is_file():
            return Result(job.key, str(folder), _read_summary(folder))
        cfg = job.config
        if (folder / "config.json").is_file():  # started earlier: continue from its checkpoint
            cfg = TrainConfig(resume=str(folder))
        try:
            with _output_to(folder / "train.log" if log_to_file else None):
                summary = rl_train.run(cfg, progress=progress)
        except Exception as exc:  # reported with the folder; the other runs go on
            (folder / "error.txt").write_text(traceback.format_exc())
            line = (f"{type(exc).__name__}: {exc}".splitlines() or [""])[0]
            return Result(job.key, str(folder), error=line, seconds=time.time() - t0)
        (folder / "error.txt").unlink(missing_ok=True)  # a failure an earlier invocation saw
        return Result(job.key, str(folder), summary, seconds=time.time() - t0)


def _init_worker(slots, threads: int, parent: int) -> None:
    """A local worker: take a GPU slot, fix the torch threads, die with the grid process."""
    gpus = slots.get()
    if gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus
    if sys.platform.startswith("linux"):  # no orphan keeps training after the grid is killed
        import ctypes
        import signal

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(1)
    import torch

    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------ the grid

def _lost(job: Job, exc: BaseException) -> Result:
    """A run whose process died or could not answer (killed for memory, Ray node lost...)."""
    line = f"worker lost: {type(exc).__name__}: {exc}".splitlines()[0]
    job.folder.mkdir(parents=True, exist_ok=True)
    (job.folder / "error.txt").write_text(line + "\n")
    return Result(job.key, str(job.folder), error=line)


def _run_local(todo: list[Job], how: Plan, report) -> None:
    """``how.workers`` spawned worker processes (no fork after torch started its threads)."""
    ctx = mp.get_context("spawn")
    slots = ctx.Queue()
    for slot in how.slots:
        slots.put(slot)
    with ProcessPoolExecutor(min(how.workers, len(todo)), mp_context=ctx,
                             initializer=_init_worker,
                             initargs=(slots, how.threads, os.getpid())) as pool:
        futures = {pool.submit(train_job, job, True): job for job in todo}
        for fut in as_completed(futures):
            try:
                res = fut.result()
            except Exception as exc:
                res = _lost(futures[fut], exc)
            report(res)


def _run_ray(todo: list[Job], how: Plan, report) -> None:
    """One Ray task per run; Ray places them by their resources (``workers`` caps those in
    flight). Run folders must be on a file system every node sees."""
    import ray

    started = not ray.is_initialized()
    if started:
        try:
            if how.ray_address:
                ray.init(address=how.ray_address, log_to_driver=False)
            else:
                ray.init(num_cpus=cores(), include_dashboard=False, log_to_driver=False)
        except Exception as exc:
            raise ValueError(f"cannot start Ray ({how.ray_address or 'local'}): "
                             f"{str(exc).splitlines()[0]}") from None
    try:
        resources = ray.cluster_resources()
        if how.threads > resources.get("CPU", 0):
            raise ValueError(f"each run asks for {how.threads} CPUs but the Ray cluster has "
                             f"{resources.get('CPU', 0):g}")
        gpus = how.gpus_per_run if resources.get("GPU", 0) else 0.0
        task = ray.remote(num_cpus=how.threads, num_gpus=gpus,
                          memory=int(how.memory_gb * 2**30), max_retries=0)(train_job)
        queue, pending = list(todo), {}
        while queue or pending:
            while queue and len(pending) < (how.workers or len(todo)):
                job = queue.pop(0)
                pending[task.remote(job, True)] = job
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(ref)
            try:
                res = ray.get(ref)
            except Exception as exc:
                res = _lost(job, exc)
            report(res)
    finally:
        if started:
            ray.shutdown()


def run_jobs(jobs: list[Job], how: Plan, progress: bool = True,
             status_file: Path | None = None) -> list[Result]:
    """Run every job not finished yet; return the results in the order of ``jobs``.

    Prints one line per finished run (k/total, key, seconds, final accuracy) above a bar, and
    rewrites ``status_file`` (atomically, from this process only) after each run.
    """
    for job in jobs:
        if job.config.resume:
            raise ValueError(f"{job.key}: a grid job is a new run (resume is set per run)")
    if len({job.folder for job in jobs}) != len(jobs):
        raise ValueError("two jobs of the grid share a run folder")
    results = {job.folder: Result(job.key, str(job.folder), _read_summary(job.folder))
               for job in jobs if (job.folder / "summary.json").is_file()}
    todo = [dataclasses.replace(job, config=dataclasses.replace(
                job.config, threads=job.config.threads or how.threads))
            for job in jobs if job.folder not in results]
    n, t0 = len(jobs), time.time()
    if results:
        print(f"[grid] {len(results)}/{n} runs finished earlier (reused)", flush=True)
    bar = tqdm(total=n, initial=len(results), desc=f"grid ({how.describe()})", unit="run",
               disable=not progress)

    def write_status() -> None:
        if status_file is not None:
            failed = [r.run_dir for r in results.values() if not r.ok]
            atomic_write(status_file, json.dumps(to_jsonable({
                "done": len(results) - len(failed), "failed": failed, "total": n,
                "executor": how.executor, "workers": how.workers, "threads": how.threads,
                "elapsed_s": round(time.time() - t0, 1)}), indent=2) + "\n")

    def report(res: Result) -> None:
        results[Path(res.run_dir)] = res
        if res.ok:
            acc = res.summary.get("acc_end")
            end = f", eval {res.summary['eval_end']:.3f}" if res.summary.get(
                "eval_end") is not None else ""
            line = f"{res.seconds:.0f}s, acc_end {acc:.3f}{end}" if acc is not None else \
                f"{res.seconds:.0f}s"
        else:
            line = f"FAILED: {res.error} (see {res.run_dir}/error.txt)"
        tqdm.write(f"[{len(results)}/{n}] {res.key}: {line}")
        bar.update(1)
        write_status()

    write_status()
    try:
        if todo and how.executor == "ray":
            _run_ray(todo, how, report)
        elif todo and how.workers == 1:  # in this process, with the run's own progress bar
            for job in todo:
                report(train_job(job, progress=progress))
        elif todo:
            _run_local(todo, how, report)
    finally:
        bar.close()
    return [results[job.folder] for job in jobs]
