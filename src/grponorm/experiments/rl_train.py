"""``grponorm rl train``: one RLVR run with the step diagnostic that ``cfg.diagnostics`` names.

The trainer (``grponorm.rl.trainer``) sits below the diagnostics and does not import them; this
module, one layer up, hands it the diagnostic by name.
"""

from __future__ import annotations

from ..diagnostics.fisher import trainer_diagnostic
from ..rl import trainer
from ..rl.config import TrainConfig

__all__ = ["DIAGNOSTICS", "TrainConfig", "run"]

#: Step diagnostics by ``TrainConfig.diagnostics`` name.
DIAGNOSTICS = {"fisher": trainer_diagnostic}


def run(cfg: TrainConfig, progress: bool = True) -> dict:
    """Train (or resume) one run; returns its summary."""
    return trainer.run(cfg, progress=progress, diagnostic=DIAGNOSTICS.get(cfg.diagnostics))
