"""Exact bandit: policy, grad_J, hess_J, update against independent references.

References: complex-step differentiation (exact to rounding for analytic functions), torch
autograd in float64, and the closed forms evaluated in 60-digit mpmath arithmetic for the
extreme cases (pi* near 0 and near 1, where float64 formulas that form 1 - pi* fail).
"""

import mpmath
import numpy as np
import pytest
import torch

from grponorm.bandit import exact
from grponorm.bandit.exact import grad_J, hess_J, paper_step_size, pi_star, policy, update

mpmath.mp.dps = 60


def complex_J(X, a, theta):
    z = X @ theta
    z = z - z.real.max()
    e = np.exp(z)
    return e[a] / e.sum()


def complex_grad(X, a, theta):
    z = X @ theta
    z = z - z.real.max()
    e = np.exp(z)
    p = e / e.sum()
    u = -p
    u[a] += 1.0
    return p[a] * (X.T @ u)


def complex_step(f, theta, h=1e-30):
    """Jacobian of f at theta by complex step: Im f(theta + i h e_k) / h, column k."""
    cols = []
    for k in range(theta.size):
        t = theta.astype(complex)
        t[k] += 1j * h
        cols.append(np.imag(f(t)) / h)
    return np.stack(cols, axis=-1)


def mp_reference(X, a, theta):
    """pi*, grad, Hessian in 60-digit arithmetic (closed forms; no cancellation issue)."""
    K, d = X.shape
    z = [mpmath.fsum(mpmath.mpf(float(X[k, j])) * mpmath.mpf(float(theta[j])) for j in range(d))
         for k in range(K)]
    m = max(z)
    e = [mpmath.exp(zk - m) for zk in z]
    s = mpmath.fsum(e)
    p = [ek / s for ek in e]
    u = [(1 if k == a else 0) - p[k] for k in range(K)]
    g = [p[a] * mpmath.fsum(X[k, j] * u[k] for k in range(K)) for j in range(d)]
    Hz = [[p[a] * (u[j] * u[k] - (p[j] if j == k else 0) + p[j] * p[k]) for k in range(K)]
          for j in range(K)]
    H = [[mpmath.fsum(X[j, r] * Hz[j][k] * X[k, c] for j in range(K) for k in range(K))
          for c in range(d)] for r in range(d)]
    one_minus = mpmath.fsum(p[k] for k in range(K) if k != a)
    return p[a], one_minus, np.array([float(x) for x in g]), np.array(
        [[float(x) for x in row] for row in H])


def rel_err(x, ref):
    return np.linalg.norm(x - ref) / max(np.linalg.norm(ref), 1e-300)


def theta_for(X, a, log_odds, spread=0.0, seed=0):
    """Parameters giving pi* with the requested log-odds (X must have full row rank)."""
    rng = np.random.default_rng(seed)
    K = X.shape[0]
    z = rng.standard_normal(K) * spread
    others = np.delete(z, a)
    z[a] = log_odds + np.logaddexp.reduce(others)
    return np.linalg.lstsq(X, z, rcond=None)[0]


@pytest.mark.parametrize("seed", range(5))
def test_grad_and_hessian_match_complex_step(seed):
    rng = np.random.default_rng(seed)
    K, d = int(rng.integers(2, 8)), int(rng.integers(1, 9))
    X = rng.standard_normal((K, d))
    theta = rng.standard_normal(d)
    a = int(rng.integers(K))
    g_cs = complex_step(lambda t: complex_J(X, a, t), theta)
    H_cs = complex_step(lambda t: complex_grad(X, a, t), theta)
    assert rel_err(grad_J(X, a, theta), g_cs) < 1e-13
    assert rel_err(hess_J(X, a, theta), H_cs) < 1e-12


def test_grad_and_hessian_match_torch_autograd():
    rng = np.random.default_rng(7)
    X = rng.standard_normal((6, 4))
    theta = rng.standard_normal(4)
    Xt = torch.tensor(X)

    def J(t):
        return torch.softmax(Xt @ t, dim=0)[2]

    tt = torch.tensor(theta, requires_grad=True)
    (g,) = torch.autograd.grad(J(tt), tt)
    H = torch.autograd.functional.hessian(J, torch.tensor(theta))
    assert rel_err(grad_J(X, 2, theta), g.numpy()) < 1e-13
    assert rel_err(hess_J(X, 2, theta), H.numpy()) < 1e-12


@pytest.mark.parametrize(
    "log_odds",
    [np.log(1e-12), np.log(1e-6), 0.0, np.log(1e6), np.log(1e12), np.log(1e22)],
)
@pytest.mark.parametrize("K", [2, 5])
def test_extreme_pi_star_matches_high_precision(log_odds, K):
    rng = np.random.default_rng(K)
    X = rng.standard_normal((K, K + 2))  # non-orthogonal, full row rank
    a = 1
    theta = theta_for(X, a, log_odds, spread=1.0)
    p_ref, q_ref, g_ref, H_ref = mp_reference(X, a, theta)
    pi, q = pi_star(X, a, theta)
    assert abs(pi - float(p_ref)) <= 1e-13 * float(p_ref)
    assert abs(q - float(q_ref)) <= 1e-12 * float(q_ref)  # 1 - pi* without cancellation
    assert rel_err(grad_J(X, a, theta), g_ref) < 1e-12
    if K == 2 and log_odds == 0.0:
        # pi* = 1/2 +- 1e-16: the Hessian (~1e-16) is the rounding residue of X @ theta itself
        # (condition number ~1e15), so only absolute accuracy on the Hessian's scale is owed.
        x2 = np.linalg.norm(X, 2) ** 2
        assert np.abs(hess_J(X, a, theta) - H_ref).max() < 1e-15 * x2
    else:
        assert rel_err(hess_J(X, a, theta), H_ref) < 1e-12


def test_hessian_relative_accuracy_next_to_half_for_two_candidates():
    X = np.eye(2)
    for delta in (1e-9, 1e-13, 3e-16):  # pi* = 1/2 + ~delta/4: Hessian ~ delta/8
        theta = np.array([delta, 0.0])
        _, _, _, H_ref = mp_reference(X, 0, theta)
        assert rel_err(hess_J(X, 0, theta), H_ref) < 1e-13


def test_one_minus_pi_star_near_one_keeps_relative_accuracy():
    X = np.eye(2)
    theta = np.array([0.0, -np.log(1e22)])  # 1 - pi* = 1e-22 / (1 + 1e-22)
    pi, q = pi_star(X, 0, theta)
    assert pi == 1.0
    assert q == pytest.approx(1e-22, rel=1e-14)
    # the Hessian is O(1 - pi*), not swamped by rounding of O(1e-16)
    H = hess_J(X, 0, theta)
    assert np.linalg.norm(H, 2) == pytest.approx(2e-22, rel=1e-12)


def test_hessian_vanishes_at_half_for_two_candidates():
    X = np.array([[1.0, 0.3], [-0.5, 2.0]])
    theta = np.linalg.solve(X, np.array([0.7, 0.7]))  # equal logits: pi* = 1/2
    assert pi_star(X, 0, theta)[0] == pytest.approx(0.5, abs=1e-15)
    assert np.abs(hess_J(X, 0, theta)).max() < 1e-15
    assert np.abs(hess_J(X, 0, np.zeros(2))).max() == 0.0  # exactly equal logits


def test_policy_is_a_distribution_and_shift_invariant():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((7, 3))
    theta = rng.standard_normal(3) * 50
    p = policy(X, theta)
    assert p.shape == (7,) and p.dtype == np.float64
    assert p.sum() == pytest.approx(1.0, abs=1e-15)
    Xs = X + np.array([1.0, 0.0, 0.0])  # adds theta[0] to every logit
    assert np.allclose(policy(Xs, theta), p, rtol=1e-12, atol=1e-300)


def test_update_reinforce_and_grpo_follow_eq5_eq6():
    rng = np.random.default_rng(11)
    X = rng.standard_normal((4, 3))
    theta = rng.standard_normal(3)
    a = 0
    g = grad_J(X, a, theta)
    pi, q = pi_star(X, a, theta)
    new_r = update(X, a, theta, "reinforce", eta=0.3)
    new_g = update(X, a, theta, "grpo", eta=0.3)
    assert np.allclose(new_r, theta + 0.3 * g, rtol=1e-14)
    assert np.allclose(new_g, theta + 0.3 * g / np.sqrt(pi * q), rtol=1e-13)
    xmax2 = np.linalg.norm(X, 2) ** 2
    assert np.allclose(update(X, a, theta, "reinforce"), theta + g / xmax2, rtol=1e-14)
    assert np.allclose(update(X, a, theta, "grpo"), theta + g / np.sqrt(pi * q) / (2 * xmax2),
                       rtol=1e-13)


def test_grpo_update_finite_when_pi_star_rounds_to_one():
    X = np.eye(3)
    theta = np.array([800.0, 0.0, 0.0])  # others underflow: 1 - pi* = 0 exactly
    assert pi_star(X, 0, theta)[1] == 0.0
    assert np.array_equal(update(X, 0, theta, "grpo", eta=1.0), theta)


def test_grpo_update_accurate_near_one():
    X = np.eye(2)
    theta = np.array([0.0, -np.log(1e20)])
    new = update(X, 0, theta, "grpo", eta=1.0)
    # g/sqrt(v) = sqrt(pi/(1-pi)) (e_a - p): entries +-sqrt(pi (1 - pi)) ~ +-1e-10
    assert new - theta == pytest.approx([1e-10, -1e-10], rel=1e-9)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: grad_J(np.ones(3), 0, np.zeros(3)), "X must be a"),
        (lambda: grad_J(np.ones((1, 3)), 0, np.zeros(3)), "at least K=2"),
        (lambda: grad_J(np.ones((3, 2)), 0, np.zeros(3)), "theta must have shape"),
        (lambda: grad_J(np.ones((3, 2)), 3, np.zeros(2)), r"a must be in \[0, K\)"),
        (lambda: grad_J(np.ones((3, 2)), -1, np.zeros(2)), r"a must be in \[0, K\)"),
        (lambda: hess_J(np.ones((3, 2)), 0, np.array([np.nan, 0.0])), "theta contains NaN"),
        (lambda: hess_J(np.full((3, 2), np.inf), 0, np.zeros(2)), "X contains NaN or inf"),
        (lambda: update(np.ones((3, 2)), 0, np.zeros(2), "grpo", eta=np.inf), "eta must be"),
        (lambda: update(np.ones((3, 2)), 0, np.zeros(2), "grpo", eta=np.nan), "eta must be"),
        (lambda: update(np.ones((3, 2)), 0, np.zeros(2), "ppo", eta=1.0), "method must be"),
        (lambda: paper_step_size(np.zeros((3, 2)), "grpo"), "X is zero"),
    ],
)
def test_bad_input_errors_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_non_integer_index_rejected():
    with pytest.raises(TypeError, match="a must be an integer"):
        grad_J(np.ones((3, 2)), 1.0, np.zeros(2))


def test_softmax_complement_vectorized_matches_scalar():
    rng = np.random.default_rng(5)
    z = rng.standard_normal((4, 6, 5)) * 30
    p, q = exact.softmax_with_complement(z)
    for idx in np.ndindex(4, 6):
        pi, qi = exact.softmax_with_complement(z[idx])
        assert np.array_equal(p[idx], pi) and np.array_equal(q[idx], qi)
    assert np.all(q >= 0) and np.allclose(p + q, 1.0)
