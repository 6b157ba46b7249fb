"""Tests for grponorm.normalizers: hand-computed values, peer conformance, properties, registry."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from grponorm.normalizers import (
    NORMALIZERS,
    AdvantageStats,
    available_normalizers,
    classic,
    get_normalizer,
    normalize,
    normalize_with_stats,
    ops,
    register_normalizer,
    zero_variance_mask,
)

BUILTINS = ["batch_std", "bernoulli_smoothed", "bernoulli_std", "group_std", "none", "rloo"]
BINARY_ONLY = {"bernoulli_std", "bernoulli_smoothed"}
REAL_VALUED = [m for m in BUILTINS if m not in BINARY_ONLY]

# Rows: a 2-of-4 group, an all-correct group (zero variance), a 1-of-4 group.
R = np.array([[1.0, 0, 0, 1], [1, 1, 1, 1], [0, 0, 0, 1]])

S3 = math.sqrt(3.0)
# Batch std (ddof=1) of R: 7 ones and 5 zeros -> var = (7*(5/12)^2 + 5*(7/12)^2)/11 = 35/132.
BATCH_STD = math.sqrt(35 / 132)
# Laplace-smoothed scale: k=2 -> p~=1/2, sqrt(p~q~)=1/2; k=1 -> p~=1/3, sqrt(p~q~)=sqrt(2)/3.
SMOOTH_K1 = math.sqrt(2.0) / 3

EXPECTED = {
    # group std (ddof=1): [1,0,0,1] -> 1/sqrt(3); [0,0,0,1] -> 1/2.
    "group_std": [[S3 / 2, -S3 / 2, -S3 / 2, S3 / 2], [0] * 4, [-0.5, -0.5, -0.5, 1.5]],
    "none": [[0.5, -0.5, -0.5, 0.5], [0] * 4, [-0.25, -0.25, -0.25, 0.75]],
    "batch_std": [
        [0.5 / BATCH_STD, -0.5 / BATCH_STD, -0.5 / BATCH_STD, 0.5 / BATCH_STD],
        [0] * 4,
        [-0.25 / BATCH_STD] * 3 + [0.75 / BATCH_STD],
    ],
    # 4/3 * (r - mean).
    "rloo": [[2 / 3, -2 / 3, -2 / 3, 2 / 3], [0] * 4, [-1 / 3, -1 / 3, -1 / 3, 1.0]],
    # population std: p=1/2 -> 1/2; p=1/4 -> sqrt(3)/4.
    "bernoulli_std": [[1, -1, -1, 1], [0] * 4, [-1 / S3, -1 / S3, -1 / S3, S3]],
    "bernoulli_smoothed": [
        [1, -1, -1, 1],
        [0] * 4,
        [-0.25 / SMOOTH_K1] * 3 + [0.75 / SMOOTH_K1],
    ],
}


# ------------------------------------------------------------------------------------------
# Hand-computed values
# ------------------------------------------------------------------------------------------


def test_builtins_registered():
    # The normalizers from the field are tested in test_normalizers_peers.py and
    # test_normalizers_context.py.
    field = ["bnpo", "gpg", "grpo_passk", "mapo"]
    field += ["batch_zscore", "gdpo", "james_stein", "krpo", "loo_std", "max_rl", "opo",
              "reinforce_pp_baseline", "running_std", "shrinkage"]
    oracles = ["oracle_curvature", "oracle_hessian", "oracle_std"]  # the bandit's only
    assert available_normalizers() == sorted(BUILTINS + field + oracles)
    assert set(EXPECTED) == set(BUILTINS)


@pytest.mark.parametrize("method", BUILTINS)
def test_hand_computed_values(method):
    # The eps=1e-6 defaults perturb the std-based ones at the 1e-6 relative level.
    np.testing.assert_allclose(normalize(R, method), EXPECTED[method], rtol=1e-5, atol=0)


def test_group_std_eps_zero_is_exact():
    np.testing.assert_allclose(normalize(R, "group_std", eps=0), EXPECTED["group_std"], rtol=1e-14)


def test_group_std_population_ddof0():
    rng = np.random.default_rng(0)
    r = rng.normal(size=(5, 6))
    want = (r - r.mean(1, keepdims=True)) / (r.std(1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(normalize(r, "group_std", ddof=0), want, rtol=1e-12)


# ------------------------------------------------------------------------------------------
# Conformance with peers (formulas as the peers write them, in torch)
# ------------------------------------------------------------------------------------------


def _peer_rewards(n_groups=6, group_size=8, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    r = torch.rand(n_groups, group_size, generator=g, dtype=torch.float64)
    r[2] = 1.0  # an all-equal group whose mean is exact, so the peers give exactly 0 too
    r[4] = (r[4] > 0.5).double()  # a binary group
    return r


@pytest.mark.parametrize(
    "peer_eps",
    [
        pytest.param(1e-4, id="trl-group"),
        pytest.param(1e-6, id="verl"),
        pytest.param(1e-9, id="openrlhf-group_norm"),
    ],
)
def test_group_std_matches_peer_formula(peer_eps):
    r = _peer_rewards()
    group_size = r.shape[1]
    flat = r.reshape(-1)  # the peers work on a flat (n_groups*G,) reward vector
    mean = flat.view(-1, group_size).mean(1).repeat_interleave(group_size)
    std = flat.view(-1, group_size).std(1).repeat_interleave(group_size)
    want = ((flat - mean) / (std + peer_eps)).view(-1, group_size)
    got = normalize(r, "group_std", ddof=1, eps=peer_eps)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_verl_defaults():
    r = _peer_rewards(seed=1)
    want = (r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-6)
    torch.testing.assert_close(normalize(r), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("eps", [1e-4, 1e-6])
def test_batch_std_matches_trl_batch_formula(eps):
    r = _peer_rewards(seed=2)
    want = (r - r.mean(1, keepdim=True)) / (r.std() + eps)
    torch.testing.assert_close(normalize(r, "batch_std", eps=eps), want, rtol=1e-12, atol=1e-12)


def test_none_matches_dr_grpo():
    r = _peer_rewards(seed=3)
    torch.testing.assert_close(normalize(r, "none"), r - r.mean(1, keepdim=True))


def test_rloo_matches_explicit_leave_one_out_loops():
    rng = np.random.default_rng(4)
    r = rng.normal(size=(4, 5))
    want = np.empty_like(r)
    for i in range(r.shape[0]):
        for g in range(r.shape[1]):
            others = [r[i, h] for h in range(r.shape[1]) if h != g]
            want[i, g] = r[i, g] - sum(others) / len(others)
    np.testing.assert_allclose(normalize(r, "rloo"), want, rtol=1e-12, atol=1e-12)


def test_bernoulli_std_equals_group_std_population_no_eps():
    rng = np.random.default_rng(5)
    r = (rng.random((50, 8)) < 0.4).astype(float)
    r[:, 0], r[:, 1] = 1.0, 0.0  # every group non-degenerate
    np.testing.assert_allclose(
        normalize(r, "bernoulli_std"), normalize(r, "group_std", ddof=0, eps=0), rtol=1e-12
    )


def test_bernoulli_smoothed_alpha0_is_bernoulli_std():
    r = np.array([[1.0, 0, 0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1, 0], [1, 1, 0, 0, 1, 0, 1, 0]])
    np.testing.assert_allclose(
        normalize(r, "bernoulli_smoothed", alpha=0.0), normalize(r, "bernoulli_std"), rtol=1e-12
    )


def test_bernoulli_std_bound_without_eps():
    # The worst non-degenerate group (1 success of G) gives |A| = sqrt(G - 1), no eps needed.
    for group_size in (2, 8, 64):
        r = np.zeros((1, group_size))
        r[0, 0] = 1.0
        adv = normalize(r, "bernoulli_std")
        assert np.abs(adv).max() == pytest.approx(math.sqrt(group_size - 1), rel=1e-12)


# ------------------------------------------------------------------------------------------
# Backends: NumPy and torch agree, types and dtypes
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", BUILTINS)
def test_numpy_and_torch_agree(method):
    rng = np.random.default_rng(6)
    r = (rng.random((20, 6)) < 0.5).astype(np.float64)  # binary so every normalizer applies
    if method not in BINARY_ONLY:
        r = r + rng.normal(size=r.shape)
    r[3] = r[3, 0]  # a zero-variance group
    a_np = normalize(r, method)
    a_t = normalize(torch.from_numpy(r), method)
    assert isinstance(a_np, np.ndarray) and a_np.dtype == np.float64
    assert isinstance(a_t, torch.Tensor) and a_t.dtype == torch.float64
    np.testing.assert_allclose(a_t.numpy(), a_np, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("rewards", "want_type", "want_dtype"),
    [
        (np.array([[1, 0], [1, 1]]), np.ndarray, np.float64),  # numpy int -> float64
        (np.array([[1, 0], [1, 1]], dtype=np.float32), np.ndarray, np.float64),
        ([[1, 0], [1, 1]], np.ndarray, np.float64),  # nested list
        (np.array([[True, False], [True, True]]), np.ndarray, np.float64),
        (torch.tensor([[1, 0], [1, 1]]), torch.Tensor, torch.float32),  # int -> float32
        (torch.tensor([[True, False], [True, True]]), torch.Tensor, torch.float32),
        (torch.tensor([[1.0, 0], [1, 1]], dtype=torch.float64), torch.Tensor, torch.float64),
        (torch.tensor([[1.0, 0], [1, 1]], dtype=torch.float16), torch.Tensor, torch.float16),
        (torch.tensor([[1.0, 0], [1, 1]], dtype=torch.bfloat16), torch.Tensor, torch.bfloat16),
    ],
)
@pytest.mark.parametrize("method", BUILTINS)
def test_output_type_and_dtype(rewards, want_type, want_dtype, method):
    adv = normalize(rewards, method)
    assert isinstance(adv, want_type)
    assert adv.dtype == want_dtype
    assert tuple(adv.shape) == (2, 2)
    assert float(adv[1, 0]) == 0.0 and float(adv[1, 1]) == 0.0
    assert float(adv[0, 0]) > 0 > float(adv[0, 1])
    if isinstance(adv, torch.Tensor):
        assert adv.device == rewards.device


def test_numpy_input_is_not_modified():
    r = np.array([[1.0, 2.0, 4.0]])
    before = r.copy()
    normalize(r)
    np.testing.assert_array_equal(r, before)


# ------------------------------------------------------------------------------------------
# Central rules: validation, exact zeros, stats
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(4,), (2, 3, 4), ()])
def test_rejects_non_2d(shape):
    with pytest.raises(ValueError, match=r"\(n_groups, G\)") as err:
        normalize(np.zeros(shape))
    assert str(tuple(shape)) in str(err.value)


@pytest.mark.parametrize("shape", [(0, 4), (3, 0)])
def test_rejects_empty_dimension(shape):
    with pytest.raises(ValueError, match=r"n_groups >= 1 and G >= 1"):
        normalize(np.zeros(shape))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_rejects_non_finite_naming_first_position(bad, backend):
    r = np.zeros((3, 4))
    r[1, 2] = bad
    r[2, 0] = bad  # later in row-major order: not the one reported
    x = torch.from_numpy(r) if backend == "torch" else r
    with pytest.raises(ValueError, match=r"group 1, sample 2") as err:
        normalize(x, "none")
    assert repr(bad) in str(err.value)


def test_unknown_method_lists_available():
    for exc in (KeyError, ValueError):
        with pytest.raises(exc) as err:
            normalize(R, "group_stdd")
        msg = str(err.value)
        assert "group_stdd" in msg and all(name in msg for name in BUILTINS)
    with pytest.raises(KeyError, match="available"):
        get_normalizer("nope")


@pytest.mark.parametrize(
    ("method", "option"),
    [("group_std", "epsilon"), ("none", "eps"), ("rloo", "ddof"), ("bernoulli_std", "alpha")],
)
def test_unknown_option_raises_type_error_naming_it(method, option):
    with pytest.raises(TypeError, match=option):
        normalize(R, method, **{option: 1})


@pytest.mark.parametrize("method", ["group_std", "batch_std"])
@pytest.mark.parametrize("eps", [-1e-6, math.nan, math.inf])
def test_eps_must_be_finite_nonnegative(method, eps):
    with pytest.raises(ValueError, match="eps"):
        normalize(R, method, eps=eps)


def test_alpha_must_be_nonnegative():
    with pytest.raises(ValueError, match="alpha"):
        normalize(R, "bernoulli_smoothed", alpha=-0.5)


@pytest.mark.parametrize("ddof", [4, 5])
def test_ddof_must_leave_degrees_of_freedom(ddof):
    with pytest.raises(ValueError, match="ddof"):
        normalize(R, "group_std", ddof=ddof)


def test_rloo_requires_two_samples():
    with pytest.raises(ValueError, match=r"G >= 2.*G=1"):
        normalize(np.ones((3, 1)), "rloo")


@pytest.mark.parametrize("method", sorted(BINARY_ONLY))
def test_bernoulli_rejects_non_binary_naming_position(method):
    r = R.copy()
    r[2, 1] = 0.5
    with pytest.raises(ValueError, match=r"\{0, 1\}.*0\.5.*group 2, sample 1"):
        normalize(r, method)


@pytest.mark.parametrize("method", [m for m in BUILTINS if m != "rloo"])
def test_single_sample_groups_get_zero(method):
    # With G == 1 every group is trivially all-equal (verl would pass the raw reward through).
    r = np.array([[1.0], [0.0], [1.0]])
    np.testing.assert_array_equal(normalize(r, method), np.zeros((3, 1)))


@pytest.mark.parametrize("backend", ["numpy", "torch64", "torch32"])
@pytest.mark.parametrize("method", BUILTINS)
def test_all_equal_groups_are_exactly_zero(method, backend):
    # 0.1 * 7 has an inexact mean: the naive r - mean leaves a ~1e-17 (float32: ~7e-9) residue,
    # which a 1e-6 eps would amplify.
    if method in BINARY_ONLY:
        r = np.array([[1.0] * 7, [0.0] * 7, [1.0, 0, 0, 0, 0, 0, 0]])
    else:
        r = np.array([[0.1] * 7, [1 / 3] * 7, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 1.0]])
    x = {
        "numpy": r,
        "torch64": torch.from_numpy(r),
        "torch32": torch.from_numpy(r).float(),
    }[backend]
    adv = normalize(x, method, eps=0.0) if method in ("group_std", "batch_std") else None
    for a in [normalize(x, method), adv]:
        if a is None:
            continue
        a = np.asarray(a)
        assert (a[:2] == 0.0).all(), a[:2]
        assert (a[2] != 0.0).all()


def test_naive_formula_leaves_a_residue_we_remove():
    # Documents why the mask is needed: the textbook formula is not exactly zero here.
    r = np.full((1, 7), 0.1)
    naive = (r - r.mean(1, keepdims=True)) / (r.std(1, ddof=1, keepdims=True) + 1e-6)
    assert np.abs(naive).max() > 0
    assert (normalize(r) == 0.0).all()


@pytest.mark.parametrize("method", REAL_VALUED)
def test_mask_zeroes_residue_even_with_naive_centering(method, monkeypatch):
    # The corrected centering already cancels the residue in the built-ins; with the textbook
    # r - mean it does not, and the central mask must still give exact zeros.
    monkeypatch.setattr(classic, "_center", lambda x, axis=None: x - ops._mean(x, axis))
    r = np.array([[0.1] * 7, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 1.0]])
    raw = get_normalizer(method)(r)
    assert np.abs(raw[0]).max() > 0  # the residue is there before the mask
    adv = normalize(r, method)
    assert (adv[0] == 0.0).all() and (adv[1] != 0.0).all()


def test_centering_is_exact_for_few_ulp_spreads():
    # The mean of [x, nextafter(x)] is not representable; naive r - mean gives [0, ulp] (mean
    # ulp/2, not 0) and group_std [0, 1.41]. The corrected centering gives [-ulp/2, ulp/2].
    x = 1000.0
    r = np.array([[x, np.nextafter(x, np.inf)]])
    naive = r - r.mean(1, keepdims=True)
    assert naive.sum() != 0.0
    assert normalize(r, "none").sum() == 0.0
    np.testing.assert_allclose(normalize(r, "group_std", eps=0), [[-(0.5**0.5), 0.5**0.5]])


def test_zero_variance_mask():
    r = np.array([[0.1] * 3, [0.1, 0.1, 0.2], [-2.0] * 3, [0.0, -0.0, 0.0]])
    want = [True, False, True, True]
    np.testing.assert_array_equal(zero_variance_mask(r), want)
    m_t = zero_variance_mask(torch.from_numpy(r).float())
    assert m_t.dtype == torch.bool and m_t.tolist() == want


def test_stats():
    adv, stats = normalize_with_stats(R, "none")
    assert isinstance(stats, AdvantageStats)
    assert stats.n_groups == 3
    assert stats.n_flat == 1
    assert stats.frac_flat == pytest.approx(1 / 3)
    assert (stats.n_zero_adv, stats.frac_zero_adv) == (1, pytest.approx(1 / 3))
    assert stats.adv_mean == pytest.approx(0.0, abs=1e-15)
    assert stats.adv_std == pytest.approx(float(np.std(adv)), rel=1e-12)
    assert stats.adv_abs_max == pytest.approx(0.75)
    d = stats.as_dict()
    assert list(d) == [
        "n_groups",
        "n_flat",
        "frac_flat",
        "n_zero_adv",
        "frac_zero_adv",
        "adv_mean",
        "adv_std",
        "adv_abs_max",
    ]
    with pytest.raises(AttributeError):
        stats.n_groups = 4  # frozen


def test_stats_torch_matches_numpy():
    _, s_np = normalize_with_stats(R, "group_std")
    adv_t, s_t = normalize_with_stats(torch.from_numpy(R), "group_std")
    assert isinstance(adv_t, torch.Tensor)
    for k, v in s_np.as_dict().items():
        assert s_t.as_dict()[k] == pytest.approx(v, rel=1e-12, abs=1e-15)


def test_all_zero_variance_stats():
    _, stats = normalize_with_stats(np.full((4, 7), 0.1), "group_std")
    assert stats.as_dict() == {
        "n_groups": 4,
        "n_flat": 4,
        "frac_flat": 1.0,
        "n_zero_adv": 4,
        "frac_zero_adv": 1.0,
        "adv_mean": 0.0,
        "adv_std": 0.0,
        "adv_abs_max": 0.0,
    }


# ------------------------------------------------------------------------------------------
# Registry
# ------------------------------------------------------------------------------------------


@pytest.fixture
def scratch_name():
    name = "_test_scaled_center"
    yield name
    NORMALIZERS.pop(name, None)


def test_register_new_normalizer(scratch_name):
    @register_normalizer(scratch_name)
    def scaled_center(rewards, *, scale=1.0):
        return scale * ops._center(rewards, axis=1)

    assert scratch_name in available_normalizers()
    assert get_normalizer(scratch_name) is scaled_center
    want = 2 * np.array(EXPECTED["none"])
    np.testing.assert_allclose(normalize(R, scratch_name, scale=2.0), want)
    # The central rules apply to it too: validation, torch support, unknown options.
    out_t = normalize(torch.from_numpy(R).float(), scratch_name)
    assert out_t.dtype == torch.float32
    with pytest.raises(ValueError, match="group 0, sample 0"):
        normalize([[math.nan, 1.0]], scratch_name)
    with pytest.raises(TypeError, match="eps"):
        normalize(R, scratch_name, eps=1e-6)


def test_new_normalizer_residue_is_zeroed_centrally(scratch_name):
    @register_normalizer(scratch_name)
    def leaky(rewards):
        return rewards - rewards.mean(axis=1, keepdims=True) + 1e-6  # sloppy on purpose

    _, stats = normalize_with_stats(np.array([[0.1] * 7, [0.0, 1.0] * 3 + [0.0]]), scratch_name)
    adv = normalize(np.array([[0.1] * 7]), scratch_name)
    assert (adv == 0.0).all()
    assert (stats.n_flat, stats.n_zero_adv) == (1, 1)


def test_registered_normalizer_with_wrong_shape_is_rejected(scratch_name):
    @register_normalizer(scratch_name)
    def wrong(rewards):
        return rewards[:, :1]

    with pytest.raises(ValueError, match="shape"):
        normalize(R, scratch_name)


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):

        @register_normalizer("group_std")
        def another(rewards):
            return rewards

    assert NORMALIZERS["group_std"] is classic.group_std


@pytest.mark.parametrize("name", ["", None, 3])
def test_register_rejects_bad_names(name):
    with pytest.raises(ValueError):
        register_normalizer(name)


# ------------------------------------------------------------------------------------------
# Properties (hypothesis)
# ------------------------------------------------------------------------------------------

# Dyadic grid values (multiples of 1/8 in [-16, 16]): r + c and a * r cannot collapse a group
# with a few-ulp spread into an all-equal one, which bounded floats could (0 and 5e-324, + 1.0),
# so the invariances are exact properties on this domain.
GRID = st.integers(-128, 128).map(lambda k: k / 8.0)
SHAPES = st.tuples(st.integers(1, 6), st.integers(2, 8))
BOUNDED = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)
PROPERTY_SETTINGS = settings(max_examples=60, deadline=None)


def grid_rewards():
    return hnp.arrays(np.float64, SHAPES, elements=GRID)


def float_rewards():
    return hnp.arrays(np.float64, SHAPES, elements=BOUNDED)


def binary_rewards():
    return hnp.arrays(np.float64, SHAPES, elements=st.sampled_from([0.0, 1.0]))


def _close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)


@PROPERTY_SETTINGS
@given(r=grid_rewards(), data=st.data())
def test_per_group_shift_invariance(r, data):
    shifts = data.draw(hnp.arrays(np.float64, (r.shape[0], 1), elements=GRID))  # (n_groups, 1)
    for method in ("group_std", "none", "rloo"):
        _close(normalize(r + shifts, method), normalize(r, method))


@PROPERTY_SETTINGS
@given(r=grid_rewards(), c=GRID)
def test_batch_shift_invariance(r, c):
    # batch_std's scale is the std of the whole batch: invariant to one shift of all rewards,
    # not to per-group shifts.
    for method in REAL_VALUED:
        _close(normalize(r + c, method), normalize(r, method))


@PROPERTY_SETTINGS
@given(r=binary_rewards())
def test_bernoulli_label_flip_antisymmetry(r):
    # Bernoulli normalizers only accept {0, 1}; their shift-like symmetry is r -> 1 - r.
    for method in sorted(BINARY_ONLY):
        _close(normalize(1.0 - r, method), -normalize(r, method))


@PROPERTY_SETTINGS
@given(r=grid_rewards(), a=st.floats(1e-2, 1e2), ddof=st.sampled_from([0, 1]))
def test_positive_scale_invariance(r, a, ddof):
    for method in ("group_std", "batch_std"):
        opts = {"eps": 0.0, "ddof": ddof}
        _close(normalize(a * r, method, **opts), normalize(r, method, **opts))
    for method in ("none", "rloo"):  # no std: scale-equivariant instead
        _close(normalize(a * r, method), a * normalize(r, method))


@PROPERTY_SETTINGS
@given(r=float_rewards())
def test_per_group_zero_mean_real_valued(r):
    for method in REAL_VALUED:
        adv = normalize(r, method)
        scale = 1.0 + np.abs(adv).max()
        assert np.all(np.abs(adv.mean(axis=1)) <= 1e-12 * scale), method


@PROPERTY_SETTINGS
@given(r=binary_rewards(), alpha=st.floats(0.0, 10.0))
def test_per_group_zero_mean_bernoulli(r, alpha):
    for adv in (normalize(r, "bernoulli_std"), normalize(r, "bernoulli_smoothed", alpha=alpha)):
        np.testing.assert_allclose(adv.mean(axis=1), 0.0, atol=1e-12)


@PROPERTY_SETTINGS
@given(r=binary_rewards(), alpha=st.floats(0.0, 10.0))
def test_smoothing_never_amplifies_more_than_bernoulli_std(r, alpha):
    # p~ lies between p and 1/2, so p~(1 - p~) >= p(1 - p): |smoothed| <= |bernoulli_std|.
    smooth = np.abs(normalize(r, "bernoulli_smoothed", alpha=alpha))
    exact = np.abs(normalize(r, "bernoulli_std"))
    assert np.all(smooth <= exact * (1 + 1e-12))


@PROPERTY_SETTINGS
@given(r=float_rewards(), data=st.data())
def test_all_equal_groups_exactly_zero_property(r, data):
    n_groups, group_size = r.shape
    const_rows = data.draw(hnp.arrays(np.bool_, (n_groups,)))
    values = data.draw(hnp.arrays(np.float64, (n_groups,), elements=BOUNDED))
    r = np.where(const_rows[:, None], values[:, None], r)
    np.testing.assert_array_equal(zero_variance_mask(r), (r == r[:, :1]).all(axis=1))
    for method in REAL_VALUED:
        adv = normalize(r, method)
        assert np.all(adv[const_rows] == 0.0), method
        adv, stats = normalize_with_stats(r, method)
        assert stats.n_flat == int((r == r[:, :1]).all(axis=1).sum())
        assert stats.n_zero_adv == int((adv == 0).all(axis=1).sum()) >= stats.n_flat


@PROPERTY_SETTINGS
@given(
    r=float_rewards(),
    data=st.data(),
    bad=st.sampled_from([math.nan, math.inf, -math.inf]),
    method=st.sampled_from(BUILTINS),
)
def test_non_finite_rejected_with_position(r, data, bad, method):
    n_groups, group_size = r.shape
    i = data.draw(st.integers(0, n_groups - 1))
    j = data.draw(st.integers(0, group_size - 1))
    r = r.copy()
    r[i, j] = bad
    with pytest.raises(ValueError, match=rf"\(group {i}, sample {j}\)"):
        normalize(r, method)
