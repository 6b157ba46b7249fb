"""Grids of runs several at once (grponorm.experiments.grid, ``rl compare --workers``): the same
metrics as one at a time, a SIGKILLed grid continues without losing or repeating a run, a Ray
cluster runs the same grid, and bad settings fail before anything starts."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from conftest import TINY_TRAIN  # noqa: E402  (tests/conftest.py)
from grponorm.experiments import grid, rl_compare  # noqa: E402
from grponorm.rl.summary import TIMING_FIELDS, read_metrics  # noqa: E402

RUNS = ["easy-group_std-s0", "easy-none-s0", "hard-group_std-s0", "hard-none-s0"]


def _settings(model_dir, tmp_path, **kw) -> dict:
    """A 4-run grid (2 slices x 2 normalizers) of tiny runs, one thread each."""
    shared = {k: v for k, v in TINY_TRAIN.items() if k != "eval_every"}
    return {**shared, "model": str(model_dir), "out": str(tmp_path / "runs"),
            "cache_dir": str(tmp_path / "cache"), "dtype": "float32", "measure_spread": False,
            "steps": 20, "eval_every": 10, "checkpoint_every": 1, "threads": 1, **kw}


def _training(run_dir) -> list[dict]:
    """Every metrics line of a run, timing fields aside."""
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS}
            for r in read_metrics(run_dir, kind=None)]


def _folder(tmp_path) -> Path:
    (folder,) = (tmp_path / "runs" / "rl_compare").iterdir()
    return folder


@pytest.fixture(scope="module")
def reference(tiny_policy_dir, tmp_path_factory):
    """The grid trained one run at a time, in this process: {run folder name: metrics}."""
    tmp = tmp_path_factory.mktemp("grid-ref")
    cfg = rl_compare.CompareConfig(**_settings(tiny_policy_dir, tmp, workers=1))
    summary = rl_compare.run(cfg, progress=False)
    runs = Path(summary["run_dir"]) / "runs"
    return {name: _training(runs / name) for name in RUNS}


def test_two_workers_give_the_metrics_of_one(tiny_policy_dir, tmp_path, reference, capsys):
    cfg = rl_compare.CompareConfig(**_settings(tiny_policy_dir, tmp_path, workers=2))
    summary = rl_compare.run(cfg, progress=False)
    folder = Path(summary["run_dir"])
    for name in RUNS:
        assert _training(folder / "runs" / name) == reference[name], name
        assert (folder / "runs" / name / "train.log").is_file()  # the worker's output
    progress = json.loads((folder / "progress.json").read_text())
    assert (progress["done"], progress["total"], progress["failed"]) == (4, 4, [])
    assert (progress["workers"], progress["threads"]) == (2, 1)
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("[")]
    assert sorted(x.split("]")[0] for x in lines) == ["[1/4", "[2/4", "[3/4", "[4/4"]
    assert all("acc_end" in x for x in lines)
    saved = json.loads((folder / "runs" / RUNS[0] / "config.json").read_text())["config"]
    assert saved["threads"] == 1


SCRIPT = """
import json, sys
from grponorm.experiments import rl_compare
if __name__ == "__main__":  # spawned workers import this module again
    rl_compare.run(rl_compare.CompareConfig(**json.loads(sys.argv[1])), progress=False)
"""


def test_sigkilled_grid_continues_without_losing_or_repeating_a_run(
        tiny_policy_dir, tmp_path, reference):
    settings = _settings(tiny_policy_dir, tmp_path, workers=2)
    script = tmp_path / "grid.py"
    script.write_text(SCRIPT)
    log = open(tmp_path / "grid.log", "w")
    proc = subprocess.Popen([sys.executable, str(script), json.dumps(settings)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 300
    try:
        while True:  # kill once one run has finished and another has started
            assert proc.poll() is None, (tmp_path / "grid.log").read_text()[-3000:]
            assert time.time() < deadline, "the grid did not get going"
            runs = list((tmp_path / "runs").glob("rl_compare/*/runs/*"))
            done = {p.name for p in runs if (p / "summary.json").is_file()}
            started = {p.name for p in runs if (p / "config.json").is_file()} - done
            if done and started:
                break
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the grid and its workers, at once
        proc.wait()
        log.close()
    folder = _folder(tmp_path)
    finished = {n: (folder / "runs" / n / "summary.json").stat().st_mtime_ns for n in RUNS
                if (folder / "runs" / n / "summary.json").is_file()}
    assert 1 <= len(finished) < len(RUNS)

    again = rl_compare.CompareConfig(grid_dir=str(folder), workers=2)
    rl_compare.run(again, progress=False)
    for name in RUNS:
        assert _training(folder / "runs" / name) == reference[name], name  # each step once
    for name, stamp in finished.items():  # finished runs were not trained again
        assert (folder / "runs" / name / "summary.json").stat().st_mtime_ns == stamp
    assert json.loads((folder / "progress.json").read_text())["done"] == len(RUNS)


def test_a_failing_run_is_reported_and_the_others_finish(tiny_policy_dir, tmp_path):
    cfg = rl_compare.CompareConfig(**_settings(tiny_policy_dir, tmp_path, steps=2, workers=2))
    out = rl_compare.Run.create(cfg.out, "rl_compare", cfg)
    broken = out.path / "runs" / "hard-none-s0"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("{not json")  # "started" with a config that won't load
    with pytest.raises(grid.GridError, match="1 of 4 runs failed") as exc:
        rl_compare.run(rl_compare.CompareConfig(grid_dir=str(out.path), workers=2),
                       progress=False)
    assert str(broken) in str(exc.value) and "JSONDecodeError" in str(exc.value)
    assert "Traceback" in (broken / "error.txt").read_text()
    for name in RUNS[:3]:
        assert (out.path / "runs" / name / "summary.json").is_file(), name
    progress = json.loads((out.path / "progress.json").read_text())
    assert (progress["done"], progress["failed"]) == (3, [str(broken)])


# a real Ray local cluster (ray.init(num_cpus=2)): ~30 s on 2 busy cores, in CI
def test_ray_local_cluster_runs_a_grid(tiny_policy_dir, tmp_path, reference):
    pytest.importorskip("ray")
    cfg = rl_compare.CompareConfig(**_settings(tiny_policy_dir, tmp_path, slices=["easy"],
                                               executor="ray"))
    summary = rl_compare.run(cfg, progress=False)
    folder = Path(summary["run_dir"])
    for name in RUNS[:2]:  # same threads, same metrics as the local grid
        assert _training(folder / "runs" / name) == reference[name], name


# ------------------------------------------------------------------------------ bad input

def _cfg(tmp_path, **kw):
    return rl_compare.CompareConfig(out=str(tmp_path / "runs"), measure_spread=False,
                                    device="cpu", **kw)


def test_bad_settings_fail_before_anything_starts(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="workers must be >= 0"):
        rl_compare.run(_cfg(tmp_path, workers=-1), progress=False)
    with pytest.raises(ValueError, match="executor must be one of"):
        rl_compare.run(_cfg(tmp_path, executor="slurm"), progress=False)
    monkeypatch.setattr(grid, "memory_available_gb", lambda: 1.5)
    with pytest.raises(ValueError, match=r"workers=2: 2 runs at once need ~2.2 GB.*MemAvailable"):
        rl_compare.run(_cfg(tmp_path, workers=2), progress=False)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    if importlib.util.find_spec("ray") is not None:
        with pytest.raises(ValueError, match=f"cannot reach 127.0.0.1:{port}"):
            rl_compare.run(_cfg(tmp_path, executor="ray", ray_address=f"127.0.0.1:{port}"),
                           progress=False)
    monkeypatch.setitem(sys.modules, "ray", None)  # Ray not installed
    with pytest.raises(ImportError, match=r"pip install 'grponorm\[grid\]'"):
        rl_compare.run(_cfg(tmp_path, executor="ray"), progress=False)
    with pytest.raises(ValueError, match="grid_dir"):  # resume is a run's, not the grid's
        rl_compare.run(_cfg(tmp_path, resume=str(tmp_path)), progress=False)
    assert not (tmp_path / "runs").exists()  # nothing was written


def test_cli_turns_bad_settings_into_a_one_line_error(tmp_path, capsys):
    from grponorm.cli import main

    assert main(["rl", "compare", "--workers", "-1", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["grponorm: error: workers must be >= 0 (0 = auto from cores and GPUs); "
                   "got -1"]


def test_auto_workers_from_cores_memory_and_gpus(monkeypatch):
    monkeypatch.setattr(grid, "cores", lambda: 4)
    monkeypatch.setattr(grid, "memory_available_gb", lambda: 100.0)
    p = grid.plan(10, device="cpu")
    assert (p.executor, p.workers, p.threads) == ("local", 4, 1)
    assert (grid.plan(10, threads=2, device="cpu").workers, grid.plan(3, device="cpu").workers,
            grid.plan(1, device="cpu").threads) == (2, 3, 4)
    assert grid.plan(10, workers=2, device="cpu").threads == 2  # the cores split
    monkeypatch.setattr(grid, "memory_available_gb", lambda: 2.5)  # two runs fit
    assert (grid.plan(10, device="cpu").workers, grid.plan(10, device="cpu").threads) == (2, 2)
    monkeypatch.setattr(grid, "gpu_ids", lambda device: ["0", "1"])
    assert grid.plan(10).slots == ("0", "1")  # one run per GPU
    assert grid.plan(10, gpus_per_run=0.5).slots == ("0", "1", "0", "1")
    assert grid.plan(10, gpus_per_run=2).slots == ("0,1",)
    assert grid.plan(10, workers=2, gpus_per_run=0.25).slots == ("0", "1")
    assert grid.plan(10, device="cuda:1").slots == (None, None)  # both on cuda:1, as asked
    assert grid.plan(10, executor="ray", threads=3).threads == 3


def test_workers_above_what_the_machine_runs_are_refused(monkeypatch):
    monkeypatch.setattr(grid, "cores", lambda: 2)
    monkeypatch.setattr(grid, "memory_available_gb", lambda: 100.0)
    with pytest.raises(ValueError, match=r"workers=99: 10 runs at once, but this machine has 2 "
                                         r"core\(s\).*run 2 at once with one thread each; use "
                                         r"--workers 2 or fewer"):
        grid.plan(10, workers=99, device="cpu")
    with pytest.raises(ValueError, match=r"run 1 at once with 2 thread\(s\) each; use "
                                         r"--workers 1 or fewer"):
        grid.plan(10, workers=2, threads=2, device="cpu")
    assert (grid.plan(10, workers=2, device="cpu").workers,
            grid.plan(1, workers=4, device="cpu").workers) == (2, 1)  # 1 run: 1 at once
    monkeypatch.setattr(grid, "memory_available_gb", lambda: 1.5)  # memory is checked first
    with pytest.raises(ValueError, match="MemAvailable"):
        grid.plan(10, workers=99, device="cpu")
    monkeypatch.setattr(grid, "gpu_ids", lambda device: ["0", "1"])
    with pytest.raises(ValueError, match=r"workers=3: 3 runs at once, but 2 GPU\(s\) at "
                                         r"gpus_per_run=1 run 2 at once; use --workers 2"):
        grid.plan(10, workers=3)
    assert grid.plan(10, workers=4, gpus_per_run=0.5).slots == ("0", "1", "0", "1")


def test_cli_refuses_workers_above_the_cores(tmp_path, monkeypatch, capsys):
    from grponorm.cli import main

    monkeypatch.setattr(grid, "cores", lambda: 2)
    monkeypatch.setattr(grid, "memory_available_gb", lambda: 100.0)
    assert main(["rl", "compare", "--workers", "99", "--device", "cpu",
                 "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "workers=99" in err and "use --workers 2 or fewer" in err
    assert not (tmp_path / "rl_compare").exists()  # nothing was written


def test_a_claimed_run_cannot_be_claimed_twice(tmp_path):
    with grid.claim(tmp_path / "run"):
        with pytest.raises(BlockingIOError), grid.claim(tmp_path / "run", wait=False):
            pass
    with grid.claim(tmp_path / "run", wait=False):  # released
        pass


def test_old_compare_folders_continue_with_the_new_execution_settings(tmp_path):
    old = rl_compare.CompareConfig(seeds=[0, 1], workers=4)
    cfg = dataclasses.asdict(old)
    del cfg["grid_dir"], cfg["workers"]
    cfg["resume"] = str(tmp_path)  # what an older version saved
    (tmp_path / "config.json").write_text(json.dumps({"config": cfg}))
    got = rl_compare._settings(rl_compare.CompareConfig(grid_dir=str(tmp_path), workers=3))
    assert (got.grid_dir, got.resume, got.workers, got.seeds) == (str(tmp_path), "", 3, [0, 1])
    assert "resume" in rl_compare.CompareConfig.HIDDEN


def test_reproduce_continues_only_through_the_declared_field(tmp_path, monkeypatch):
    from grponorm.experiments.registry import Experiment
    from grponorm.report import reproduce as rp

    @dataclasses.dataclass
    class Cfg:
        out: str = ""
        resume: str = ""
        grid_dir: str = ""
        workers: int = 0

    seen = []
    for name, field in (("with_field", "grid_dir"), ("without", None)):
        mod = types.ModuleType(name)
        mod.Cfg, mod.PROFILES = Cfg, {}
        mod.run = lambda cfg, progress=True: seen.append(cfg) or {}
        if field:
            mod.CONTINUE_FIELD = field
        monkeypatch.setitem(sys.modules, name, mod)
        exp = Experiment("x", name, name, "Cfg", "-", name)
        (tmp_path / name / "x" / "20260101-000000").mkdir(parents=True)
        (tmp_path / name / "x" / "20260101-000000" / "config.json").write_text("{}")
        rp.run_one(exp, "quick", tmp_path, False, False, {"workers": 2})
    assert seen[0].grid_dir.endswith("20260101-000000") and seen[0].resume == ""
    assert seen[0].workers == 2
    assert (seen[1].grid_dir, seen[1].resume) == ("", "")
    with pytest.raises(ValueError, match="workers must be >= 0"):
        rp.reproduce("quick", ["E1"], tmp_path, progress=False, workers=-2)
