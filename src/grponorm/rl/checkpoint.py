"""Checkpoints and resume: atomic ``checkpoint.pt`` (trainable weights, optimizer, RNG states,
data position), and the run folder a resumed run continues in.

Files are written to a temporary name, fsynced and renamed into place, so a kill at any moment
leaves the previous checkpoint intact; ``resume`` drops metric lines written after it.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from ..runs import Run, atomic_open, atomic_write, environment
from .config import TrainConfig, load_saved_config

__all__ = [
    "CHECKPOINT",
    "create_run",
    "load_checkpoint",
    "open_run",
    "restore_trainable",
    "save_checkpoint",
    "truncate_metrics",
]

CHECKPOINT = "checkpoint.pt"


def _trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(path: Path, model, optimizer, step: int, extra: dict) -> None:
    """Write ``checkpoint.pt`` atomically (tmp file, fsync, rename) plus ``checkpoint.json``."""
    state = {
        "step": step,
        "trainable": _trainable_state(model),
        "optimizer": optimizer.state_dict(),
        "rng": {
            "python": random.getstate(),
            "numpy": np.random.get_state(),  # noqa: NPY002 (global state)
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        },
        "data_position": extra.get("data_position"),
        "extra": extra,
    }
    with atomic_open(path / CHECKPOINT, "wb") as fh:
        torch.save(state, fh)
    atomic_write(path / "checkpoint.json", json.dumps({"step": step, "file": CHECKPOINT}) + "\n")


def restore_trainable(model, trainable: dict[str, torch.Tensor]) -> None:
    """Copy saved trainable weights (name -> tensor) into ``model``, in place."""
    params = dict(model.named_parameters())
    missing = [n for n in trainable if n not in params]
    if missing:
        raise ValueError(f"checkpoint does not match the model: unknown parameters {missing[:3]}")
    with torch.no_grad():
        for n, t in trainable.items():
            params[n].copy_(t)


def load_checkpoint(path: Path, model, optimizer) -> dict:
    """Restore weights, optimizer and RNG states from ``path/checkpoint.pt``; return it."""
    state = torch.load(path / CHECKPOINT, map_location="cpu", weights_only=False)
    restore_trainable(model, state["trainable"])
    optimizer.load_state_dict(state["optimizer"])
    random.setstate(state["rng"]["python"])
    np.random.set_state(state["rng"]["numpy"])  # noqa: NPY002
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"].get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return state


def truncate_metrics(file: Path, last_step: int) -> None:
    """Keep only complete metric lines of steps <= ``last_step`` (written before the kill)."""
    if not file.exists():
        return
    keep = []
    for line in file.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by the kill
        if rec.get("step", 0) <= last_step:
            keep.append(line)
    atomic_write(file, "".join(x + "\n" for x in keep))


def open_run(cfg: TrainConfig) -> tuple[TrainConfig, Run | None, bool]:
    """For ``resume``: the saved config, the run folder and whether it holds a checkpoint.

    A new run's folder is created later (:func:`create_run`), once data and model have
    loaded, so a bad path or malformed data leaves no empty run folder behind.
    """
    if not cfg.resume:
        if cfg.run_dir and (Path(cfg.run_dir).expanduser() / "metrics.jsonl").exists():
            raise ValueError(f"run folder {cfg.run_dir} already holds a run; use --resume")
        return cfg, None, False
    path = Path(cfg.resume).expanduser()
    saved = load_saved_config(path)
    saved.resume, saved.run_dir = str(path), str(path)
    return saved, Run(path), (path / CHECKPOINT).is_file()


def create_run(cfg: TrainConfig) -> Run:
    if cfg.run_dir:
        run_ = Run(Path(cfg.run_dir).expanduser())
        run_.write_json("config.json", {"config": cfg, "environment": environment()})
        return run_
    return Run.create(cfg.out, "rl_train", cfg)
