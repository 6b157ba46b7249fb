"""Bound checks: known closed forms, random instances within the paper's constants."""

import numpy as np
import pytest

from grponorm.bandit.bounds import (
    PAPER_CONSTANTS,
    lemma4_normalized,
    point_check,
    random_instance,
    theorem_ratios,
)
from grponorm.bandit.features import initial_logits, orthogonal_features
from grponorm.bandit.simulate import simulate_exact


@pytest.mark.parametrize("p", [1e-9, 0.1, 0.3, 0.7, 0.999])
def test_two_candidate_closed_forms(p):
    # X = I: ||H|| = 2 p (1-p) |1-2p| and ||grad|| = sqrt(2) p (1-p)
    theta = np.array([np.log(p) - np.log1p(-p), 0.0])
    c = point_check(np.eye(2), 0, theta)
    norm = c.normalized()
    assert norm["lemma2"] == pytest.approx(2 * abs(1 - 2 * p), rel=1e-9)
    assert norm["lemma3"] == pytest.approx(np.sqrt(2) * p * (1 - p), rel=1e-9)


def test_random_instances_respect_lemmas_2_3_and_corollary_1():
    rng = np.random.default_rng(0)
    seen_tiny = seen_near_one = False
    for _ in range(300):
        X, a, theta = random_instance(rng)
        c = point_check(X, a, theta)
        if c.v == 0:
            continue
        seen_tiny |= c.pi < 1e-8
        seen_near_one |= c.q < 1e-12
        for k, v in c.normalized().items():
            assert v <= PAPER_CONSTANTS[k] * (1 + 1e-12), (k, v, c)
    assert seen_tiny and seen_near_one  # the generator covers both extremes


def test_lemma4_within_paper_constant_and_detects_larger_ball_violations():
    rng = np.random.default_rng(1)
    worst = max(lemma4_normalized(*random_instance(rng), rng, 8) for _ in range(40))
    assert worst <= PAPER_CONSTANTS["lemma4"]
    # sanity of the sampler: at pi* = 1/2, K = 2, X = I, the centre Hessian is 0, but the
    # ball (radius 1/2) contains points with ||H|| > 0, so the reported value is positive
    assert lemma4_normalized(np.eye(2), 0, np.zeros(2), rng, 8) > 0.05


@pytest.mark.parametrize("method", ["reinforce", "grpo"])
def test_theorems_hold_along_trajectories(method):
    f = orthogonal_features(8, 4, seed=0)
    a = np.zeros(8, dtype=int)
    z0 = initial_logits(8, 4, a, 0.01)
    eta = 1.0 if method == "reinforce" else 0.5
    run = simulate_exact(f, a, z0, method=method, eta=eta, T=3000, seeds=[0, 1],
                         track_grad=True)
    r = theorem_ratios(run, np.full(8, 0.01), f.xmax2)
    keys = ("theorem3", "theorem3_sum") if method == "reinforce" else ("theorem4", "theorem4_sum")
    for k in keys:
        assert np.all(r[k] <= 1.0), (k, r[k])
        assert np.all(r[k] > 0)


def test_theorem_check_reports_a_violation():
    # claim a smaller initial gap (pi0 = 0.99) than the run had (0.3): the progress the run
    # made exceeds what that bound allows, and the ratio must say so
    f = orthogonal_features(4, 3, seed=0)
    a = np.zeros(4, dtype=int)
    z0 = initial_logits(4, 3, a, 0.3)
    run = simulate_exact(f, a, z0, method="reinforce", eta=1.0, T=400, seeds=[0],
                         track_grad=True)
    assert theorem_ratios(run, np.full(4, 0.3), f.xmax2)["theorem3_sum"][0] <= 1.0
    assert theorem_ratios(run, np.full(4, 0.99), f.xmax2)["theorem3_sum"][0] > 1.0


def test_theorem_ratios_need_gradients():
    f = orthogonal_features(3, 3)
    run = simulate_exact(f, np.zeros(3, int), np.zeros((3, 3)), method="grpo", eta=0.5, T=5)
    with pytest.raises(ValueError, match="track_grad"):
        theorem_ratios(run, np.full(3, 1 / 3), 1.0)
