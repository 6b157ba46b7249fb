"""grponorm: advantage normalization in critic-free policy gradients for LLMs.

Layout:
    normalizers   one registry of advantage normalizers over grouped rewards, shared by
                  the bandit and the language-model trainer.
    bandit/       the exact and sampled log-linear softmax bandit (theory engine).
    rl/           the RLVR trainer: data, rewards, models, rollouts, loss, training loop.
    experiments/  E1..E6 as small runnable modules with dataclass configs.
    report/       figures and reports.
    cli           the `grponorm` command.
"""

__version__ = "0.1.0"
