"""Oracle normalizers (normalizers.oracle): the bandit's true-curvature scales, by hand."""

from __future__ import annotations

import numpy as np
import pytest

from grponorm.bandit.exact import softmax_with_complement
from grponorm.bandit.features import initial_logits, orthogonal_features
from grponorm.bandit.sampled import hessian_norms, simulate_sampled
from grponorm.bandit.simulate import bandit_normalizers
from grponorm.normalizers import MissingContextError, NormalizerContext, normalize
from grponorm.rl.config import TrainConfig

ORACLES = ("oracle_std", "oracle_curvature", "oracle_hessian")


def _ctx(p, h=None):
    return NormalizerContext(pi_star=np.asarray(p, float),
                             hessian_norm=None if h is None else np.asarray(h, float))


@pytest.mark.parametrize("G", [2, 8])
def test_oracle_std_and_curvature_by_hand_binary_and_continuous(G):
    rng = np.random.default_rng(G)
    binary = (rng.random((3, G)) < 0.5).astype(float)
    binary[0] = [1.0] + [0.0] * (G - 1)  # one right
    binary[2] = 1.0  # a flat group
    cont = rng.normal(size=(3, G))
    cont[2] = 0.3  # flat
    pi = np.array([0.2, 0.6, 0.9])
    for r in (binary, cont):
        centred = r - r.mean(axis=1, keepdims=True)  # (3, G)
        std = normalize(r, "oracle_std", context=_ctx(pi))
        curv = normalize(r, "oracle_curvature", context=_ctx(pi))
        np.testing.assert_allclose(std, centred / np.sqrt(pi * (1 - pi))[:, None], atol=1e-12)
        np.testing.assert_allclose(curv, centred / (pi * (1 - pi))[:, None], atol=1e-12)
        assert np.all(std[2] == 0.0) and np.all(curv[2] == 0.0)  # flat: exactly 0
    # G = 2 binary by hand: [1, 0] at pi* = 0.2 -> +-0.5 / 0.4 and +-0.5 / 0.16
    r = np.array([[1.0, 0.0]])
    np.testing.assert_allclose(normalize(r, "oracle_std", context=_ctx([0.2])), [[1.25, -1.25]])
    np.testing.assert_allclose(normalize(r, "oracle_curvature", context=_ctx([0.2])),
                               [[3.125, -3.125]])


def test_oracle_hessian_divides_by_the_given_norm_and_the_floor_guards_zero():
    r = np.array([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0]])
    adv = normalize(r, "oracle_hessian", context=_ctx([0.5, 0.1], [0.25, 0.0]))
    np.testing.assert_allclose(adv[0], [2.0, -2.0, -2.0, 2.0])
    np.testing.assert_allclose(adv[1], (r[1] - 0.25) / 1e-6)  # scale 0 -> the 1e-6 floor
    assert np.isfinite(normalize(r, "oracle_std", context=_ctx([1.0, 0.0]))).all()


def test_oracles_need_their_context_and_refuse_bad_values():
    r = np.array([[1.0, 0.0]])
    for m in ORACLES:
        with pytest.raises(MissingContextError):
            normalize(r, m)
    with pytest.raises(ValueError, match="pi_star"):
        normalize(r, "oracle_std", context=_ctx([1.5]))
    with pytest.raises(ValueError, match="shape"):
        normalize(r, "oracle_std", context=_ctx([0.5, 0.5]))


def test_hessian_norms_equal_the_finite_difference_hessian_of_pi_star():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4, 3))  # (n, K)
    a = np.array([0, 1, 2, 0])
    p, q = softmax_with_complement(z)
    got = hessian_norms(p, q, a, z)  # (n,)

    def pi_star(zi, ai):
        e = np.exp(zi - zi.max())
        return e[ai] / e.sum()

    h = 1e-4
    for i in range(4):
        H = np.empty((3, 3))
        for j in range(3):
            for k in range(3):
                dj, dk = np.eye(3)[j] * h, np.eye(3)[k] * h
                H[j, k] = (pi_star(z[i] + dj + dk, a[i]) - pi_star(z[i] + dj - dk, a[i])
                           - pi_star(z[i] - dj + dk, a[i]) + pi_star(z[i] - dj - dk, a[i])) / (
                    4 * h * h)
        assert got[i] == pytest.approx(np.abs(np.linalg.eigvalsh(H)).max(), rel=1e-5)


def test_the_bandit_runs_the_oracles_and_the_trainer_refuses_them():
    assert set(ORACLES) <= set(bandit_normalizers())
    feats = orthogonal_features(6, 3)
    a = np.zeros(6, dtype=np.int64)
    z0 = initial_logits(6, 3, a, 0.2)
    finals = {m: simulate_sampled(feats, a, z0, normalizer=m, eta=0.3, T=5, G=4, seeds=[0, 1])
              .mean_pi[:, -1] for m in ("group_std", *ORACLES)}
    assert all(np.isfinite(v).all() for v in finals.values())
    assert not np.allclose(finals["oracle_std"], finals["group_std"])  # another scale
    for m in ORACLES:
        with pytest.raises(ValueError, match="oracle context"):
            TrainConfig(normalizer=m).validate()
