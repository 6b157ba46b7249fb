"""Run folders: runs/<experiment>/<timestamp>/ with config.json, metrics.jsonl, summary.json,
table.md and figures. Shared by every experiment (bandit and language-model alike)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from .files import atomic_open, atomic_write  # noqa: F401  (re-exported: the run folder's writer)


class GridError(RuntimeError):
    """Some runs of a grid failed (the others finished); running the grid again retries them.
    Lives here, at the bottom, so that the CLI can catch it without importing the trainer."""


def to_jsonable(obj):
    """Convert dataclasses, NumPy scalars/arrays, paths and non-finite floats for JSON."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, Path):
        return str(obj)
    return obj


def environment() -> dict:
    """Versions and machine facts recorded with every run."""
    import torch

    return {
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }


class Run:
    """One run folder. Create with `Run.create(root, experiment, config)`."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._t0 = time.time()

    @classmethod
    def create(cls, root: str | Path, experiment: str, config) -> Run:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = Path(root) / experiment / stamp
        path, i = base, 1
        while path.exists():  # two runs in the same second
            path, i = base.with_name(f"{stamp}-{i}"), i + 1
        run = cls(path)
        run.write_json("config.json", {"config": config, "environment": environment()})
        return run

    def file(self, name: str) -> Path:
        return self.path / name

    def write_json(self, name: str, obj) -> Path:
        """Write atomically (tmp file + rename) so an interrupt never leaves half a file."""
        return atomic_write(self.file(name), json.dumps(to_jsonable(obj), indent=2) + "\n")

    def log(self, record: dict) -> None:
        """Append one JSON line to metrics.jsonl."""
        with open(self.file("metrics.jsonl"), "a") as fh:
            fh.write(json.dumps(to_jsonable(record)) + "\n")

    def write_text(self, name: str, text: str) -> Path:
        """Write a text file of the run folder atomically."""
        return atomic_write(self.file(name), text)

    def finish(self, summary: dict) -> Path:
        summary = {**summary, "wall_time_s": round(time.time() - self._t0, 3)}
        return self.write_json("summary.json", summary)


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A GitHub-flavoured Markdown table; floats printed with 4 significant digits."""

    def fmt(v):
        if isinstance(v, (float, np.floating)):
            return f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
