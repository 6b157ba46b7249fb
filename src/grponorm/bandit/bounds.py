"""Numerical checks of the paper's bounds (docs/theory.md §1): Lemmas 2-4, Corollary 1, Thms 3-4.

Each check returns ratios observed / bound; a ratio above 1 is a violated bound. Alongside,
the "sharp constant" is the largest observed value of the quantity divided by the bound's
shape (e.g. ||hess J|| / (||X||^2 pi*(1 - pi*)) for Lemma 2, whose paper constant is 4).

Per-question checks use ||X_i||_2 for X_max (X_max >= ||X_i||, so this is the stricter test).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .exact import grad_J, hess_J, pi_star
from .simulate import ExactRun

PAPER_CONSTANTS = {
    "lemma2": 4.0,        # ||hess J|| <= 4 X^2 pi*(1 - pi*)
    "corollary1": 1.0,    # ||hess J|| <= X^2
    "lemma3": 0.5,        # ||grad J|| <= X / 2
    "lemma4": 2.5,        # ||hess J(theta')|| <= (5/2) X^2 sqrt(v(theta)) on the ball
}


@dataclass(frozen=True)
class PointCheck:
    """Quantities at one (X, a, theta): pi*, 1 - pi*, ||X||^2, ||grad J||, ||hess J||."""

    pi: float
    q: float
    x2: float
    grad_norm: float
    hess_norm: float

    @property
    def v(self) -> float:
        return self.pi * self.q

    def normalized(self) -> dict[str, float]:
        """Quantity / bound shape; compare with PAPER_CONSTANTS (Lemma 4 is separate)."""
        return {
            "lemma2": self.hess_norm / (self.x2 * self.v),
            "corollary1": self.hess_norm / self.x2,
            "lemma3": self.grad_norm / np.sqrt(self.x2),
        }


def point_check(X, a, theta) -> PointCheck:
    X = np.asarray(X, dtype=np.float64)
    pi, q = pi_star(X, a, theta)
    return PointCheck(
        pi=pi, q=q, x2=float(np.linalg.norm(X, 2)) ** 2,
        grad_norm=float(np.linalg.norm(grad_J(X, a, theta))),
        hess_norm=float(np.linalg.norm(hess_J(X, a, theta), 2)),
    )


def lemma4_normalized(X, a, theta, rng: np.random.Generator, n_points: int = 16) -> float:
    """max over sampled theta' in the ball B(theta, sqrt(v)/||X||) of ||hess J(theta')|| divided
    by ||X||^2 sqrt(v(theta)); Lemma 4 says this is <= 5/2.

    Points: the two ends of the gradient direction on the sphere, then random directions at
    radius rho u^(1/d) (uniform in the ball) and on the sphere.
    """
    X = np.asarray(X, dtype=np.float64)
    c = point_check(X, a, theta)
    rho = np.sqrt(c.v) / np.sqrt(c.x2)
    d = X.shape[1]
    g = grad_J(X, a, theta)
    dirs = []
    if np.linalg.norm(g) > 0:
        gn = g / np.linalg.norm(g)
        dirs += [gn, -gn]
    while len(dirs) < n_points:
        v = rng.standard_normal(d)
        dirs.append(v / np.linalg.norm(v))
    worst = c.hess_norm
    for j, u in enumerate(dirs):
        r = rho if j % 2 == 0 else rho * rng.random() ** (1.0 / d)
        h = float(np.linalg.norm(hess_J(X, a, theta + r * u), 2))
        worst = max(worst, h)
    return worst / (c.x2 * np.sqrt(c.v))


def random_instance(rng: np.random.Generator):
    """A random (X, a, theta) spanning structures and pi* from ~1e-12 to 1 - 1e-22.

    Structures: Gaussian X (d from 1 to 2K), orthonormal rows (X = I_K: the worst case of
    ||X^T H_z X|| <= ||X||^2 ||H_z||), and the two-candidate mirror X = [x; -x].
    """
    K = int(rng.choice([2, 3, 5, 10, 50]))
    kind = rng.choice(["gaussian", "identity", "mirror"], p=[0.5, 0.35, 0.15])
    if kind == "mirror":
        K = 2
        x = rng.standard_normal(int(rng.integers(1, 6)))
        X = np.stack([x, -x])
    elif kind == "identity":
        X = np.eye(K) * rng.uniform(0.1, 3.0)
    else:
        X = rng.standard_normal((K, int(rng.integers(1, 2 * K + 1)))) * rng.uniform(0.1, 3.0)
    a = int(rng.integers(K))
    # target log-odds of pi*: uniform on [log 1e-12, log 1e22]
    log_odds = rng.uniform(np.log(1e-12), np.log(1e22))
    others = rng.standard_normal(K) * rng.choice([0.0, 1.0, 3.0])
    others[a] = -np.inf
    z = others.copy()
    z[a] = log_odds + np.logaddexp.reduce(others[np.isfinite(others)])
    if np.linalg.matrix_rank(X) == K:  # logits reachable exactly
        theta = np.linalg.lstsq(X, z, rcond=None)[0]
    else:
        theta = rng.standard_normal(X.shape[1]) * rng.uniform(0.1, 20.0)
    return X, a, theta


def theorem_ratios(run: ExactRun, pi0: np.ndarray, xmax2: float) -> dict[str, np.ndarray]:
    """Theorems 3-4 along exact trajectories (per seed; needs `track_grad=True`).

    Theorem 3 (REINFORCE, eta = 1/X^2): min_t ||grad J_{i_t}(theta_t)||^2
        <= 2 X^2 sum_i (1 - pi*_0(i)) / T.
    Theorem 4 (GRPO, eta = 1/(2 X^2)): the same bound times 8 sum_t C_t / (3T),
        C_t = sqrt(pi*(1 - pi*)) of the question drawn at step t.
    Both hold for every trajectory (the proofs sum a per-step ascent inequality), so the
    ratios are reported per seed. Also the summed forms behind them:
        sum_t ||grad||^2 <= 2 X^2 sum_i (1 - pi0_i)                       (REINFORCE)
        sum_t ||grad||^2 / C_t <= (16/3) X^2 sum_i (1 - pi0_i)            (GRPO)

    Returns:
        dict of (S,) ratio arrays: "theorem3", "theorem3_sum", "theorem4", "theorem4_sum";
        callers pick the ones that match the run's method.
    """
    if run.sel_grad2 is None:
        raise ValueError("run was simulated without track_grad=True")
    T = run.sel_pi.shape[1]
    gap = float(np.sum(1.0 - np.asarray(pi0)))
    g2 = run.sel_grad2  # (S, T)
    b3 = 2.0 * xmax2 * gap / T
    C_t = run.sel_sqrtv
    b4 = b3 * 8.0 * C_t.sum(axis=1) / (3.0 * T)
    with np.errstate(divide="ignore", invalid="ignore"):
        weighted = np.where(C_t > 0, g2 / C_t, 0.0).sum(axis=1)
    return {
        "theorem3": g2.min(axis=1) / b3,
        "theorem3_sum": g2.sum(axis=1) / (2.0 * xmax2 * gap),
        "theorem4": g2.min(axis=1) / b4,
        "theorem4_sum": weighted / (16.0 / 3.0 * xmax2 * gap),
    }
