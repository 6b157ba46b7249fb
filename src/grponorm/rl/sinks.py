"""Metric sinks besides ``metrics.jsonl`` (which is always written): TensorBoard and Weights &
Biases, chosen with ``TrainConfig.report_to`` (``--report-to tensorboard,wandb``).

Every numeric field of a record goes to each sink as ``<kind>/<field>`` at the record's step
(``train/acc``, ``train/adv_std``, ``eval/eval_acc``, ...); lists and strings (problem ids,
per-prompt diagnostics) stay in the JSONL only. TensorBoard writes event files to
``<run>/tensorboard``; W&B logs to the project ``$WANDB_PROJECT`` (default ``grponorm``) with the
run folder's name, and honours ``WANDB_MODE=offline`` (files under ``<run>/wandb``). A sink that
is asked for but not installed is an error at validation (``TrainConfig.validate``), never a
silent no-op.
"""

from __future__ import annotations

import importlib.util
import math
import os
import uuid
from pathlib import Path

__all__ = ["INSTALL", "MetricSinks", "missing_sinks", "scalars"]

#: What to install for each sink.
INSTALL = {"tensorboard": "pip install tensorboard", "wandb": "pip install wandb"}


def missing_sinks(names) -> list[str]:
    """The sinks in ``names`` whose package is not installed."""
    return [n for n in names if importlib.util.find_spec(n) is None]


def scalars(record: dict) -> dict[str, float]:
    """``<kind>/<field>`` -> value for the finite numbers of a metrics record (not its step)."""
    kind = record.get("kind", "train")
    out = {}
    for key, value in record.items():
        if key in ("kind", "step") or isinstance(value, bool):
            continue
        if isinstance(value, (int, float)) and math.isfinite(value):
            out[f"{kind}/{key}"] = float(value)
    return out


class MetricSinks:
    """The sinks of one run: ``log(record)`` for every metrics line, ``close()`` at the end."""

    def __init__(self, names, run_dir: str | Path, config: dict | None = None):
        self.names = list(names)
        self._tb = self._wandb = None
        run_dir = Path(run_dir)
        if self.names:
            run_dir.mkdir(parents=True, exist_ok=True)
        if "tensorboard" in self.names:
            from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

            self._tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        if "wandb" in self.names:
            import wandb  # optional dependency, asked for by report_to

            self._wandb = wandb.init(project=os.environ.get("WANDB_PROJECT", "grponorm"),
                                     name=run_dir.name, dir=str(run_dir), config=config or {},
                                     resume="allow", id=_wandb_id(run_dir))

    def log(self, record: dict) -> None:
        """Send one metrics record to every sink."""
        values = scalars(record)
        if not values:
            return
        step = int(record.get("step", 0))
        if self._tb is not None:
            for key, value in values.items():
                self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log({**values, "step": step})

    def close(self) -> None:
        """Flush and close every sink."""
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def _wandb_id(run_dir: Path) -> str:
    """A W&B run id kept in the run folder, so a resumed run continues the same W&B run."""
    file = run_dir / "wandb_id.txt"
    if file.is_file():
        return file.read_text().strip()
    rid = uuid.uuid4().hex[:12]
    file.write_text(rid + "\n")
    return rid
