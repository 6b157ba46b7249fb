"""One registry of experiments, read by the CLI (``grponorm <group> <command>``) and by
``grponorm reproduce`` (the entries with a paper id).

An experiment is a module with a dataclass config and ``run(cfg, progress) -> summary``; a paper
experiment also defines ``TITLE``, ``PAPER`` (the paper's numbers), ``PAPER_LINE``,
``PROFILES`` (``quick`` / ``cpu`` / ``paper`` config overrides) and
``report_rows(summary) -> [[quantity, paper, ours, verdict], ...]``. Modules are imported only
when their experiment runs, so ``grponorm --help`` stays fast.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

__all__ = ["EXPERIMENTS", "Experiment", "by_id", "paper_experiments"]


@dataclass(frozen=True)
class Experiment:
    """One runnable experiment."""

    group: str  # CLI group: bandit, diag, rl or normalizers
    command: str  # CLI command within the group
    module: str  # module with the config class and run(cfg, progress)
    config: str  # name of its dataclass config
    help: str  # one line for --help
    eid: str | None = None  # paper experiment id (E1..E6) for reproduce; None = a tool

    def load(self) -> tuple[ModuleType, type]:
        """Import the module; return it and its config class."""
        mod = importlib.import_module(self.module)
        return mod, getattr(mod, self.config)


EXPERIMENTS = [
    Experiment("bandit", "bounds", "grponorm.experiments.bandit_bounds", "BoundsConfig",
               "E1: worst observed ratio to each bound (Lemmas 2-4, Cor. 1, Thms 3-4) and the "
               "sharpest constant observed; violations are reported loudly", "E1"),
    Experiment("bandit", "exact", "grponorm.experiments.bandit_exact", "ExactConfig",
               "E2: exact REINFORCE vs GRPO (paper or given step sizes): pi* curves with seed "
               "bands, steps to mean pi* >= 0.9/0.99, C(n,T), interference study", "E2"),
    Experiment("bandit", "sampled", "grponorm.experiments.bandit_sampled", "SampledConfig",
               "E3: G sampled outputs per question, every normalizer, Easy/Hard sets, an LR "
               "sweep; tables at a shared LR and at each normalizer's best LR", "E3"),
    Experiment("diag", "orthogonality", "grponorm.experiments.diag_orthogonality",
               "OrthogonalityConfig",
               "E4: |cos| between penultimate-layer prompt embeddings of random question pairs "
               "(raw and mean-centered), histogram and inverse CDF", "E4"),
    Experiment("diag", "fisher", "grponorm.experiments.diag_fisher", "FisherConfig",
               "E5 on a language model: per-prompt diagonal-Fisher trace vs reward variance, "
               "same step and across lags (train with it, or measure saved checkpoints)", "E5"),
    Experiment("diag", "bandit-proxy", "grponorm.experiments.diag_bandit_proxy", "ProxyConfig",
               "E5 in the bandit: Fisher proxy and reward variance against the exact Hessian, "
               "same step and across lags", "E5b"),
    Experiment("rl", "train", "grponorm.experiments.rl_train", "TrainConfig",
               "train one normalizer on one task/slice with LoRA (metrics, checkpoints, "
               "--resume)"),
    Experiment("rl", "compare", "grponorm.experiments.rl_compare", "CompareConfig",
               "E6: every normalizer on every slice with the same seeds; smoothed accuracy "
               "figure and summary table", "E6"),
    Experiment("normalizers", "show", "grponorm.experiments.normalizers_show", "ShowConfig",
               "each normalizer's effective gain ||A||/||r - mean|| on binary groups at every "
               "success count k (figure + table)"),
]


def paper_experiments() -> list[Experiment]:
    """The experiments ``reproduce`` runs, in the paper's order."""
    return [e for e in EXPERIMENTS if e.eid is not None]


def by_id(eid: str) -> Experiment:
    """A paper experiment by id, case-insensitive (``e5b`` is ``E5b``)."""
    for e in paper_experiments():
        if e.eid.lower() == eid.lower():
            return e
    known = [e.eid for e in paper_experiments()]
    raise ValueError(f"unknown experiment id {eid!r}; choose from {known}")
