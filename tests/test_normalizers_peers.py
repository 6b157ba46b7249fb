"""Tests for the normalizers from the field: bnpo, mapo, gpg, grpo_passk.

Hand-computed values (numbers written out), conformance with the peers' formulas (written
here as loops over groups, the way their code reads), NumPy/torch agreement, the central
exact-zero rule, and the properties each one has (or, documented, does not have).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from grponorm.normalizers import available_normalizers, normalize

PEERS = ["bnpo", "gpg", "grpo_passk", "mapo"]

# Rows: a 2-of-4 group, an all-correct group (zero variance), a 1-of-4 group.
R = np.array([[1.0, 0, 0, 1], [1, 1, 1, 1], [0, 0, 0, 1]])
S3 = math.sqrt(3.0)


def test_peers_registered():
    assert set(PEERS) <= set(available_normalizers())


# ------------------------------------------------------------------------------------------
# BNPO
# ------------------------------------------------------------------------------------------

# Method of moments over the groups' success rates p = (1/2, 1, 1/4):
#   m = 7/12; deviations -1/12, 5/12, -1/3 -> squares (1 + 25 + 16)/144 = 42/144; v = 21/144 = 7/48
#   m (1 - m) = 35/144; c = (35/144)/(7/48) - 1 = 5/3 - 1 = 2/3
#   a = c m = 7/18, b = c (1 - m) = 5/18; alpha = 1 + a/3 = 61/54, beta = 1 + b/3 = 59/54.
BNPO_ALPHA, BNPO_BETA = 61 / 54, 59 / 54


def test_bnpo_hand_computed_method_of_moments():
    # The Beta density from scipy (an independent implementation) at the hand-fitted parameters.
    f_half = scipy.stats.beta.pdf(0.5, BNPO_ALPHA, BNPO_BETA)
    f_quarter = scipy.stats.beta.pdf(0.25, BNPO_ALPHA, BNPO_BETA)
    assert f_half == pytest.approx(1.06573, abs=1e-5)  # written out: guards the scipy call too
    want = [
        [0.5 / f_half, -0.5 / f_half, -0.5 / f_half, 0.5 / f_half],
        [0.0] * 4,
        [-0.25 / f_quarter] * 3 + [0.75 / f_quarter],
    ]
    np.testing.assert_allclose(normalize(R, "bnpo"), want, rtol=1e-12)
    np.testing.assert_allclose(
        normalize(R, "bnpo", alpha=BNPO_ALPHA, beta=BNPO_BETA), want, rtol=1e-12
    )


def test_bnpo_three_halves_is_pi_over_8_times_bernoulli_std():
    # Beta(3/2, 3/2) density: sqrt(p (1 - p)) / B(3/2, 3/2), B(3/2, 3/2) = Gamma(3/2)^2 / 2
    # = (sqrt(pi)/2)^2 / 2 = pi/8. So A = (r - p) * (pi/8) / sqrt(p (1 - p)).
    # Row 0 (p = 1/2): +-(1/2)(pi/8)/(1/2) = +-pi/8 = +-0.39269908...
    want_row0 = [math.pi / 8, -math.pi / 8, -math.pi / 8, math.pi / 8]
    got = normalize(R, "bnpo", alpha=1.5, beta=1.5)
    np.testing.assert_allclose(got[0], want_row0, rtol=1e-13)
    assert got[0, 0] == pytest.approx(0.39269908169872414, rel=1e-13)
    rng = np.random.default_rng(0)
    r = (rng.random((40, 8)) < 0.4).astype(float)
    np.testing.assert_allclose(
        normalize(r, "bnpo", alpha=1.5, beta=1.5),
        (math.pi / 8) * normalize(r, "bernoulli_std"),
        rtol=1e-12,
        atol=1e-15,
    )


def test_bnpo_uniform_density_is_dr_grpo():
    r = np.random.default_rng(1).random((5, 6))
    np.testing.assert_allclose(
        normalize(r, "bnpo", alpha=1.0, beta=1.0), normalize(r, "none"), rtol=1e-12, atol=1e-15
    )
    # One group: no spread to fit, alpha = beta = 1.
    np.testing.assert_allclose(normalize(R[:1], "bnpo"), [[0.5, -0.5, -0.5, 0.5]], rtol=1e-14)


def _bnpo_reference(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """BNPO's advantage as the authors' code computes it, one group at a time (float64)."""
    groups = scores.view(-1, group_size)
    p_all = torch.stack([g.mean() for g in groups])
    m, v = p_all.mean(), p_all.var()
    a = (m * (1 - m) / v - 1) * m
    b = (m * (1 - m) / v - 1) * (1 - m)
    alpha, beta = torch.clamp(1 + a / 3, min=1.0), torch.clamp(1 + b / 3, min=1.0)
    out = torch.empty_like(scores)
    for i, g in enumerate(groups):
        p = g.mean()
        weight = torch.clamp(1 / torch.distributions.Beta(alpha, beta).log_prob(p).exp(), 0, 1e6)
        out[i * group_size : (i + 1) * group_size] = weight * (g - p)
    return out.view(-1, group_size)


def test_bnpo_matches_reference_formula():
    g = torch.Generator().manual_seed(2)
    r = (torch.rand(12, 8, generator=g, dtype=torch.float64) < 0.3).double()
    r[0, :2] = torch.tensor([1.0, 0.0])  # at least one mixed group
    want = _bnpo_reference(r.reshape(-1), 8)
    mixed = ~(r == r[:, :1]).all(dim=1)
    got = normalize(r, "bnpo")
    torch.testing.assert_close(got[mixed], want[mixed], rtol=1e-10, atol=1e-12)
    assert (got[~mixed] == 0).all()


def test_bnpo_reward_range_and_rescaling():
    with pytest.raises(
        ValueError, match=r"bnpo needs rewards \[0\.0, 1\.0\].*2\.0.*group 1, sample 0"
    ):
        normalize([[0.0, 1.0], [2.0, 0.0]], "bnpo")
    # Rewards in {-1, +1} mapped onto {0, 1}: the same advantages as the {0, 1} rewards.
    np.testing.assert_allclose(
        normalize(2 * R - 1, "bnpo", min_value=-1.0, max_value=1.0), normalize(R, "bnpo")
    )
    with pytest.raises(ValueError, match="min_value < max_value"):
        normalize(R, "bnpo", min_value=1.0, max_value=1.0)


@pytest.mark.parametrize(
    "opts", [{"alpha": 2.0}, {"alpha": 0.0, "beta": 1.0}, {"var_floor": 0.0}, {"density_floor": 0}]
)
def test_bnpo_rejects_bad_options(opts):
    with pytest.raises(ValueError):
        normalize(R, "bnpo", **opts)


def test_bnpo_identical_success_rates_use_the_variance_floor():
    # Every group 1 of 4: v = 0, the reference code's alpha = beta = inf gives NaN. Ours is the
    # floor v = 1e-6 -> finite, small advantages with the right signs.
    r = np.array([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
    adv = normalize(r, "bnpo")
    assert np.isfinite(adv).all()
    assert (np.sign(adv) == np.sign(r - 0.25)).all()
    # m = 1/4, v = 1e-6: c = 0.1875e6 - 1, alpha = 1 + c/12, beta = 1 + c/4; f at the mean p.
    c = 0.25 * 0.75 / 1e-6 - 1
    f = scipy.stats.beta.pdf(0.25, 1 + c * 0.25 / 3, 1 + c * 0.75 / 3)
    np.testing.assert_allclose(adv, (r - 0.25) / f, rtol=1e-8)


def test_bnpo_density_floor_caps_amplification():
    # Fixed Beta(30, 30): density at p = 1/8 is ~1e-8 < floor, so the divisor is the floor.
    r = np.array([[1.0] + [0.0] * 7])
    assert scipy.stats.beta.pdf(1 / 8, 30, 30) < 1e-6
    adv = normalize(r, "bnpo", alpha=30.0, beta=30.0)
    np.testing.assert_allclose(adv, (r - 1 / 8) / 1e-6, rtol=1e-12)


# ------------------------------------------------------------------------------------------
# MAPO
# ------------------------------------------------------------------------------------------


def test_mapo_hand_computed():
    # Row 0: p = 1/2 -> lam = 1: the z-score with Bessel std 1/sqrt(3): +-sqrt(3)/2.
    # Row 2: p = 1/4 -> lam = 3/4; Bessel std = sqrt(0.75/3) = 1/2, z = [-1/2]*3 + [3/2];
    #   percent deviation (r - 1/4)/(1/4) = [-1]*3 + [3];
    #   A = 3/4 [-1/2, 3/2] + 1/4 [-1, 3] = [-0.625]*3 + [1.875].
    want = [[S3 / 2, -S3 / 2, -S3 / 2, S3 / 2], [0.0] * 4, [-0.625] * 3 + [1.875]]
    np.testing.assert_allclose(normalize(R, "mapo", eps=0.0), want, rtol=1e-14)
    np.testing.assert_allclose(normalize(R, "mapo"), want, rtol=1e-5)  # eps = 1e-6


def test_mapo_real_valued_hand_computed():
    # [0.5, 1, 0, 0.5]: p = 1/4 (one reward equal to 1) -> lam = 3/4; mu = 1/2;
    # centered [0, 1/2, -1/2, 0]; Bessel var = 0.5/3 -> std = 1/sqrt(6);
    # A = 3/4 * sqrt(6) * centered + 1/4 * 2 * centered.
    r = np.array([[0.5, 1.0, 0.0, 0.5]])
    k = 0.75 * math.sqrt(6.0) + 0.5
    np.testing.assert_allclose(normalize(r, "mapo", eps=0.0), [[0.0, k / 2, -k / 2, 0.0]])


def test_mapo_extremes_are_pure_terms():
    # p = 1/8: lam = 4 (1/8)(7/8) = 7/16. Check against the two terms mixed by hand.
    r = np.array([[1.0] + [0.0] * 7])
    d = r - 1 / 8
    z = d / math.sqrt((7 / 64 * 8) / 7)  # Bessel: sum d^2 = 7/8 * 1/8 * 8 = 7/8, / 7
    pct = d / (1 / 8)
    np.testing.assert_allclose(normalize(r, "mapo", eps=0.0), 7 / 16 * z + 9 / 16 * pct)


def test_mapo_rejects_negative_rewards():
    with pytest.raises(ValueError, match=r"mapo needs rewards >= 0\.0.*-0\.5.*group 0, sample 1"):
        normalize([[0.0, -0.5]], "mapo")


# ------------------------------------------------------------------------------------------
# GPG
# ------------------------------------------------------------------------------------------


def test_gpg_hand_computed():
    # B = 12 rewards, 7 non-zero -> alpha = 12/7; A = alpha (r - mean).
    a = 12 / 7
    want = [[a / 2, -a / 2, -a / 2, a / 2], [0.0] * 4, [-a / 4] * 3 + [3 * a / 4]]
    np.testing.assert_allclose(normalize(R, "gpg"), want, rtol=1e-14)
    # The paper's B/(B - M): 8 samples in groups with spread -> alpha = 12/8.
    want_valid = [[0.75, -0.75, -0.75, 0.75], [0.0] * 4, [-0.375] * 3 + [1.125]]
    np.testing.assert_allclose(normalize(R, "gpg", count="valid_group"), want_valid, rtol=1e-14)
    np.testing.assert_allclose(normalize(R, "gpg", f_norm=2.0), np.array(want) / 2, rtol=1e-14)


def _gpg_reference(scores: torch.Tensor, group_size: int, f_norm: float = 1.0) -> torch.Tensor:
    """verl's compute_gpg_outcome_advantage, one group at a time.

    verl's ``bsz / count_nonzero(...)`` is a float32 tensor (the default dtype), which rounds
    alpha at 1e-8 relative; it is taken in float64 here.
    """
    alpha = scores.shape[0] / torch.count_nonzero(scores).clamp(min=1).double()
    out = torch.empty_like(scores)
    for i in range(0, scores.shape[0], group_size):
        g = scores[i : i + group_size]
        out[i : i + group_size] = alpha * (g - g.mean()) / f_norm
    return out.view(-1, group_size)


@pytest.mark.parametrize("binary", [True, False])
def test_gpg_matches_verl_formula(binary):
    g = torch.Generator().manual_seed(3)
    r = torch.rand(6, 8, generator=g, dtype=torch.float64)
    if binary:
        r = (r < 0.4).double()
    r[2] = 1.0  # exact all-equal group: verl gives exactly 0 there too
    want = _gpg_reference(r.reshape(-1), 8, f_norm=0.5)
    torch.testing.assert_close(normalize(r, "gpg", f_norm=0.5), want, rtol=1e-12, atol=1e-12)


def test_gpg_rejects_bad_options():
    with pytest.raises(ValueError, match="count"):
        normalize(R, "gpg", count="all")
    with pytest.raises(ValueError, match="f_norm"):
        normalize(R, "gpg", f_norm=0.0)


# ------------------------------------------------------------------------------------------
# grpo_passk
# ------------------------------------------------------------------------------------------


def test_grpo_passk_hand_computed():
    # Row 0: two tied maxima -> gap 0 -> all 0. Row 2: gap 1, Bessel std 1/2 -> 2 at index 3.
    # Row 3: [0.2, 0.9, 0.5, 0.4]: gap 0.9 - 0.5 = 0.4; mean 0.5, squares .09 .16 0 .01 = .26,
    #   Bessel std sqrt(.26/3) = 0.2943920...; A = 0.4/0.2943920 = 1.3587324 at index 1.
    r = np.vstack([R, [[0.2, 0.9, 0.5, 0.4]]])
    want = np.zeros((4, 4))
    want[2, 3] = 2.0
    want[3, 1] = 0.4 / math.sqrt(0.26 / 3)
    np.testing.assert_allclose(normalize(r, "grpo_passk", eps=0.0), want, rtol=1e-14, atol=0)
    assert want[3, 1] == pytest.approx(1.3587324, rel=1e-7)
    want_raw = np.zeros((4, 4))
    want_raw[2, 3], want_raw[3, 1] = 1.0, 0.4
    got_raw = normalize(r, "grpo_passk", norm_by_std=False)
    np.testing.assert_allclose(got_raw, want_raw, rtol=1e-14, atol=1e-15)


def _passk_reference(scores: torch.Tensor, group_size: int, eps: float) -> torch.Tensor:
    """verl's compute_grpo_passk_outcome_advantage, one group at a time."""
    out = torch.zeros_like(scores)
    for i in range(0, scores.shape[0], group_size):
        g = scores[i : i + group_size]
        top, idx = torch.topk(g, 2)
        out[i + idx[0]] = (top[0] - top[1]) / (torch.std(g) + eps)
    return out.view(-1, group_size)


def test_grpo_passk_matches_verl_formula():
    g = torch.Generator().manual_seed(4)
    r = torch.rand(6, 8, generator=g, dtype=torch.float64)  # continuous: no ties
    r[1] = (r[1] > 0.9).double()
    r[1, 0] = 1.0  # a binary group (ties unless one success)
    want = _passk_reference(r.reshape(-1), 8, 1e-6)
    torch.testing.assert_close(normalize(r, "grpo_passk"), want, rtol=1e-12, atol=1e-12)


def test_grpo_passk_requires_two_samples():
    with pytest.raises(ValueError, match=r"G >= 2.*G=1"):
        normalize(np.ones((3, 1)), "grpo_passk")


# ------------------------------------------------------------------------------------------
# Shared: backends, exact zeros, properties
# ------------------------------------------------------------------------------------------


def _mixed_rewards(method: str, seed: int = 6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    r = (rng.random((20, 6)) < 0.5).astype(np.float64)
    if method in ("gpg", "grpo_passk"):
        r = r + rng.normal(size=r.shape)  # real-valued rewards are fine for these
    elif method == "mapo":
        r = r * rng.integers(1, 3, size=r.shape)  # non-negative, some rewards equal 1
    r[3] = r[3, 0]  # a zero-variance group
    return r


@pytest.mark.parametrize("method", PEERS)
def test_numpy_and_torch_agree(method):
    r = _mixed_rewards(method)
    a_np = normalize(r, method)
    a_t = normalize(torch.from_numpy(r), method)
    assert isinstance(a_np, np.ndarray) and a_np.dtype == np.float64
    assert isinstance(a_t, torch.Tensor) and a_t.dtype == torch.float64
    np.testing.assert_allclose(a_t.numpy(), a_np, rtol=1e-12, atol=1e-12)
    a_32 = normalize(torch.from_numpy(r).float(), method)
    assert a_32.dtype == torch.float32
    np.testing.assert_allclose(a_32.numpy(), a_np, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", PEERS)
def test_half_precision_tensors(method, dtype):
    r = torch.tensor([[1.0, 0, 0, 1], [1, 1, 1, 1], [0, 0, 0, 1]], dtype=dtype)
    adv = normalize(r, method)
    assert adv.dtype == dtype
    assert (adv[1] == 0).all()
    np.testing.assert_allclose(adv.float().numpy(), normalize(R, method), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("backend", ["numpy", "torch64", "torch32"])
@pytest.mark.parametrize("method", PEERS)
def test_all_equal_groups_are_exactly_zero(method, backend):
    if method == "bnpo":
        r = np.array([[1.0] * 7, [0.0] * 7, [0.1] * 7, [1.0, 0, 0, 0, 0, 0, 0]])
    else:  # 0.1 * 7 has an inexact mean; passk gives only the argmax a non-zero advantage
        r = np.array([[0.1] * 7, [1 / 3] * 7, [2.0] * 7, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 1.0]])
    x = {"numpy": r, "torch64": torch.from_numpy(r), "torch32": torch.from_numpy(r).float()}
    a = np.asarray(normalize(x[backend], method))
    assert (a[:3] == 0.0).all(), a[:3]
    assert (a[3] != 0.0).any()


# Dyadic grid values: shifts and scalings are exact (see test_normalizers.py).
GRID = st.integers(-128, 128).map(lambda k: k / 8.0)
SHAPES = st.tuples(st.integers(1, 6), st.integers(2, 8))
PROPERTY_SETTINGS = settings(max_examples=60, deadline=None)


def _close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)


@PROPERTY_SETTINGS
@given(r=hnp.arrays(np.float64, SHAPES, elements=GRID), data=st.data())
def test_grpo_passk_per_group_shift_invariance(r, data):
    # Only differences of rewards enter; gpg is not (the count of non-zero rewards moves) and
    # mapo is not (the mean term), by design.
    shifts = data.draw(hnp.arrays(np.float64, (r.shape[0], 1), elements=GRID))
    _close(normalize(r + shifts, "grpo_passk"), normalize(r, "grpo_passk"))
    _close(
        normalize(r + shifts, "gpg", count="valid_group"), normalize(r, "gpg", count="valid_group")
    )


@PROPERTY_SETTINGS
@given(r=hnp.arrays(np.float64, SHAPES, elements=GRID), a=st.floats(1e-2, 1e2))
def test_scale_properties(r, a):
    _close(normalize(a * r, "grpo_passk", eps=0.0), normalize(r, "grpo_passk", eps=0.0))
    _close(normalize(a * r, "gpg"), a * normalize(r, "gpg"))  # the count ignores scale


@PROPERTY_SETTINGS
@given(r=hnp.arrays(np.float64, SHAPES, elements=st.sampled_from([0.0, 1.0])))
def test_bnpo_label_flip_antisymmetry(r):
    # Flipping r -> 1 - r maps p -> 1 - p, m -> 1 - m, v -> v, hence alpha <-> beta and the
    # same density: the fitted BNPO is antisymmetric (a fixed alpha != beta would not be).
    _close(normalize(1.0 - r, "bnpo"), -normalize(r, "bnpo"))


@PROPERTY_SETTINGS
@given(r=hnp.arrays(np.float64, SHAPES, elements=st.sampled_from([0.0, 0.5, 1.0, 2.0])))
def test_zero_mean_per_group_and_passk_sign(r):
    for method in ("mapo", "gpg"):
        adv = normalize(r, method)
        assert np.all(np.abs(adv.mean(axis=1)) <= 1e-9 * (1 + np.abs(adv).max())), method
    adv = normalize(np.clip(r, 0, 1), "bnpo")
    assert np.all(np.abs(adv.mean(axis=1)) <= 1e-9 * (1 + np.abs(adv).max()))
    adv = normalize(r, "grpo_passk")
    assert (adv >= 0).all() and ((adv > 0).sum(axis=1) <= 1).all()


@pytest.mark.parametrize("method", PEERS)
def test_non_finite_rejected_with_position(method):
    r = R.copy()
    r[2, 1] = math.nan
    with pytest.raises(ValueError, match=r"group 2, sample 1"):
        normalize(r, method)
