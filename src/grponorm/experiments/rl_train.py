"""``grponorm rl train``: one RLVR run with the step diagnostic that ``cfg.diagnostics`` names.

The trainer (``grponorm.rl.trainer``) sits below the diagnostics and does not import them; this
module, one layer up, hands it the diagnostic by name.
"""

from __future__ import annotations

from pathlib import Path

from ..diagnostics.fisher import trainer_diagnostic
from ..rl import trainer
from ..rl.config import TrainConfig, load_saved_config

__all__ = ["DIAGNOSTICS", "TrainConfig", "run"]

#: Step diagnostics by ``TrainConfig.diagnostics`` name.
DIAGNOSTICS = {"fisher": trainer_diagnostic}


def run(cfg: TrainConfig, progress: bool = True) -> dict:
    """Train (or resume) one run; returns its summary (``backend="trl"``: through TRL)."""
    backend = cfg.backend
    if cfg.resume:  # a resumed run keeps the backend it was started with
        backend = load_saved_config(Path(cfg.resume).expanduser()).backend
    if backend == "trl":
        from ..integrations import trl_backend  # trl: optional heavy dependency

        return trl_backend.run(cfg, progress=progress)
    return trainer.run(cfg, progress=progress, diagnostic=DIAGNOSTICS.get(cfg.diagnostics))
