"""grponorm: advantage normalization in critic-free policy gradients for LLMs.

    from grponorm import normalize, normalize_with_stats, register_normalizer

Layers, bottom to top (nothing imports upward; import-linter checks it):
    normalizers, stats, bandit/   the normalizer registry, comparisons over seeds, the theory
                                  engine (exact and sampled softmax bandit)
    rl/                           the RLVR trainer: config, problems, policy, rollouts,
                                  log-probs, loss, update, checkpoints, summaries
    diagnostics/                  curvature and orthogonality diagnostics
    integrations/                 grponorm inside TRL and verl
    experiments/                  E1..E6, one registry used by the CLI and the report
    report/                       `reproduce` and the HTML/Markdown report
    cli                           the `grponorm` command
"""

from .normalizers import normalize, normalize_with_stats, register_normalizer

__version__ = "0.1.0"

__all__ = ["normalize", "normalize_with_stats", "register_normalizer", "__version__"]
