"""The log-linear softmax bandit: exact policy, gradient, Hessian and update (``exact``),
features (``features``), fast and dense simulators (``simulate``), the paper's bounds
(``bounds``).

    from grponorm.bandit import policy, pi_star, grad_J, hess_J, update
"""

from .exact import grad_J, hess_J, pi_star, policy, update

__all__ = ["grad_J", "hess_J", "pi_star", "policy", "update"]
