"""The registry's specs, options check, context and state, and the nine normalizers of issue 17:
hand-computed values, peer formulas, edge cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from grponorm.normalizers import (
    NORMALIZERS,
    SPECS,
    MissingContextError,
    NormalizerContext,
    NormalizerOptionError,
    available_normalizers,
    check_options,
    get_spec,
    make_state,
    normalize,
    normalize_ragged,
    normalize_with_stats,
    ops,
    register_normalizer,
)

S2 = math.sqrt(0.5)


def ctx(**fields):
    return NormalizerContext(**fields)


# ------------------------------------------------------------------------------------------
# Specs, options check, context and state
# ------------------------------------------------------------------------------------------


def test_specs_declare_batch_level_context_state_and_flat_rule():
    assert not get_spec("group_std").is_batch_level({})
    assert get_spec("batch_std").is_batch_level({})
    assert get_spec("bnpo").is_batch_level({}) and not get_spec("bnpo").is_batch_level(
        {"alpha": 1.5, "beta": 1.5}
    )
    assert get_spec("opo").needs({}) == ("lengths",)
    assert get_spec("gdpo").needs({}) == ("components",)
    assert get_spec("gdpo").needs({"token_weighted": True}) == ("components", "lengths")
    assert get_spec("krpo").needs({}) == () and not get_spec("krpo").has_state({})
    assert get_spec("krpo").needs({"persist": True}) == ("prompt_ids",)
    assert get_spec("krpo").has_state({"persist": True})
    assert get_spec("running_std").has_state({})
    assert not get_spec("batch_zscore").zeroes_flat({})
    assert get_spec("running_std").zeroes_flat({"mean": "group"})
    assert get_spec("group_std").options == ("ddof", "eps")
    with pytest.raises(AttributeError):
        get_spec("group_std").batch_level = True  # frozen


def test_rewards_only_lists_what_the_bandit_can_call():
    plain = available_normalizers(rewards_only=True)
    assert "group_std" in plain and "batch_zscore" in plain
    assert "krpo" in plain  # the authors' fresh filter per group: no context, no state
    assert not {"opo", "gdpo", "running_std"} & set(plain)
    r = np.array([[1.0, 0, 0, 1], [0, 0, 0, 1]])
    for name in plain:
        normalize(r, name)


def test_check_options_one_error_type():
    assert check_options("group_std", {"eps": 1e-4}) == {"eps": 1e-4}
    with pytest.raises(NormalizerOptionError, match="'epsilon'.*its options: ddof, eps"):
        check_options("group_std", {"epsilon": 1e-4})
    with pytest.raises(NormalizerOptionError, match="eps") as err:
        check_options("group_std", {"eps": -1.0})
    assert isinstance(err.value, ValueError) and isinstance(err.value, TypeError)
    with pytest.raises(NormalizerOptionError, match="weights"):
        check_options("gdpo", {"weights": "ab"})
    with pytest.raises(NormalizerOptionError, match="process_var"):
        check_options("krpo", {"process_var": 0.0})
    with pytest.raises(NormalizerOptionError, match="mean"):
        check_options("running_std", {"mean": "batch"})
    with pytest.raises(NormalizerOptionError, match="context and state"):
        check_options("opo", {"lengths": [1, 2]})
    with pytest.raises(KeyError, match="available"):
        check_options("nope", {})
    for name in available_normalizers():  # every built-in passes its own probe with defaults
        check_options(name, {})


def test_missing_context_or_state_is_a_clear_error_never_a_fallback():
    r = np.array([[1.0, 0.0, 0.0]])
    with pytest.raises(MissingContextError, match="'opo' needs context lengths"):
        normalize(r, "opo")
    with pytest.raises(MissingContextError, match="components"):
        normalize(r, "gdpo", context=ctx(lengths=[[1, 1, 1]]))
    with pytest.raises(MissingContextError, match="prompt_ids"):
        normalize(r, "krpo", persist=True, state=make_state("krpo", persist=True))
    with pytest.raises(MissingContextError, match="state=make_state"):
        normalize(r, "running_std")
    with pytest.raises(ValueError, match="keeps no state"):
        normalize(r, "group_std", state=make_state("running_std"))
    with pytest.raises(ValueError, match=r"lengths must have shape \(1, 3\)"):
        normalize(r, "opo", context=ctx(lengths=[1, 2, 3]))
    with pytest.raises(ValueError, match="lengths must be finite and >= 0"):
        normalize(r, "opo", context=ctx(lengths=[[1, -2, 3]]))
    with pytest.raises(ValueError, match="prompt_ids has 2 ids for 1 groups"):
        normalize(r, "krpo", persist=True, context=ctx(prompt_ids=["a", "b"]),
                  state=make_state("krpo", persist=True))
    assert make_state("group_std") is None


def test_public_helpers_and_private_aliases():
    assert ops._center is ops.center and ops._std is ops.std and ops._sum is ops.total
    x = np.array([[1.0, 2.0, 4.0]])
    np.testing.assert_allclose(ops.whiten(x, eps=0.0), (x - x.mean()) / x.std(ddof=1))
    w = np.array([[1.0, 1.0, 2.0]])  # row 3 counted twice: [1, 2, 4, 4]
    flat = np.array([1.0, 2.0, 4.0, 4.0])
    want = (x - flat.mean()) / flat.std(ddof=1)
    np.testing.assert_allclose(ops.whiten(x, w, eps=0.0), want)


@pytest.fixture
def scratch():
    names = []
    yield names
    for name in names:
        NORMALIZERS.pop(name, None)
        SPECS.pop(name, None)


def test_register_with_spec_and_plain_case_unchanged(scratch):
    scratch.append("_t_len_scaled")

    @register_normalizer("_t_len_scaled", context=("lengths",))
    def len_scaled(rewards, *, lengths, k=1.0):
        return k * ops.center(rewards, axis=1) / lengths

    r = np.array([[1.0, 0.0]])
    np.testing.assert_allclose(
        normalize(r, "_t_len_scaled", context=ctx(lengths=[[2.0, 4.0]])), [[0.25, -0.125]]
    )
    assert get_spec("_t_len_scaled").options == ("k",)
    with pytest.raises(ValueError, match="unknown context"):
        register_normalizer("_t_bad", context=("tokens",))


# ------------------------------------------------------------------------------------------
# loo_std (NeMo-RL)
# ------------------------------------------------------------------------------------------


def nemo_loo(r: torch.Tensor) -> torch.Tensor:
    """NeMo-RL's calculate_baseline_and_std_per_prompt + GRPOAdvantageEstimator, one group."""
    n = r.numel()
    mask = 1 - torch.eye(n, dtype=r.dtype)
    num = n - 1
    base = mask @ r / num
    sq = mask @ r.square() / num
    std = ((sq - base.square()) * (num / (num - 1))).sqrt().nan_to_num(0)
    adv = r - base
    ok = std > 0
    adv[ok] = adv[ok] / (std[ok] + 1e-6)
    return adv


def test_loo_std_hand_computed():
    got = normalize(np.array([[1.0, 0.0, 0.0]]), "loo_std")
    # sample 0: others [0, 0], std 0 -> unscaled 1; samples 1, 2: others [1, 0], Bessel sqrt(.5)
    np.testing.assert_allclose(got, [[1.0, -0.5 / (S2 + 1e-6), -0.5 / (S2 + 1e-6)]], rtol=1e-14)
    # G = 2: the other sample's Bessel std is 0/0 -> 0: r_g - r_h unscaled
    np.testing.assert_allclose(normalize(np.array([[1.0, 0.0]]), "loo_std"), [[1.0, -1.0]])
    # G = 4, [1, 0, 0, 1]: sample 0's others [0, 0, 1]: mean 1/3, Bessel var 1/3
    got = normalize(np.array([[1.0, 0.0, 0.0, 1.0]]), "loo_std", eps=0.0)
    np.testing.assert_allclose(got[0, 0], (2 / 3) / math.sqrt(1 / 3), rtol=1e-14)
    # ddof=0: population std of the others
    got = normalize(np.array([[1.0, 0.0, 0.0]]), "loo_std", ddof=0, eps=0.0)
    np.testing.assert_allclose(got, [[1.0, -1.0, -1.0]], rtol=1e-14)


def test_loo_std_matches_nemo_rl_formula():
    g = torch.Generator().manual_seed(0)
    r = torch.rand(5, 6, generator=g, dtype=torch.float64)
    r[1] = (r[1] > 0.5).double()
    want = torch.stack([nemo_loo(row.clone()) for row in r])
    torch.testing.assert_close(normalize(r, "loo_std"), want, rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------------------------------
# reinforce_pp_baseline, batch_zscore, max_rl, opo, shrinkage
# ------------------------------------------------------------------------------------------


def test_reinforce_pp_baseline_hand_computed():
    r = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [2.0, 0.0]])
    c = np.array([[0.5, -0.5], [0, 0], [0, 0], [1.0, -1.0]])  # mean of c: 0
    var = (0.25 * 2 + 1.0 * 2) / 7  # Bessel over the 8 samples
    got = normalize(r, "reinforce_pp_baseline")
    np.testing.assert_allclose(got, c / math.sqrt(var + 1e-8), rtol=1e-14)
    assert (got[1:3] == 0).all()
    # token-weighted (verl's masked_whiten): lengths 1 and 3 -> c values [.5, -.5 x3, ...]
    lengths = np.array([[1.0, 3.0], [1, 1], [1, 1], [1, 1]])
    vals = np.array([0.5, -0.5, -0.5, -0.5, 0, 0, 0, 0, 1.0, -1.0])
    want_mean, want_var = vals.mean(), vals.var(ddof=1)
    got = normalize(r, "reinforce_pp_baseline", token_weighted=True, context=ctx(lengths=lengths))
    np.testing.assert_allclose(got, (c - want_mean) / math.sqrt(want_var + 1e-8), rtol=1e-12)
    assert (got[1] != 0).all()  # whitening moves a flat group: declared zero_flat=False


def test_batch_zscore_hand_computed_flat_group_not_zero():
    got = normalize(np.array([[1.0, 0.0], [1.0, 1.0]]), "batch_zscore")
    # mean .75, Bessel std .5
    np.testing.assert_allclose(got, np.array([[0.25, -0.75], [0.25, 0.25]]) / (0.5 + 1e-6))
    assert (normalize(np.ones((2, 3)), "batch_zscore") == 0).all()


def test_max_rl_hand_computed():
    r = np.array([[1.0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0]])
    prime = dict(eps=0.0, scale_by_group_size=False, negative_mean="zero")  # prime-rl's form
    got = normalize(r, "max_rl", **prime)
    np.testing.assert_allclose(got, [[3, -1, -1, -1], [0, 0, 0, 0], [1, 1, -1, -1]], rtol=1e-14)
    assert (normalize(np.array([[-3.0, 1.0]]), "max_rl", **prime) == 0).all()  # mean <= 0: 0
    np.testing.assert_allclose(normalize(r[:1], "max_rl", eps=0.25, scale_by_group_size=False),
                               [[1.5, -0.5, -0.5, -0.5]])
    # the default is the authors' code: (r - mean)/(mean + 1e-6) / G
    want = [[0.75 / 1.000004, -0.25 / 1.000004, -0.25 / 1.000004, -0.25 / 1.000004], [0] * 4,
            [0.5 / 2.000004, 0.5 / 2.000004, -0.5 / 2.000004, -0.5 / 2.000004]]
    np.testing.assert_allclose(normalize(r, "max_rl"), want, rtol=1e-12)


def test_opo_hand_computed():
    r = np.array([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    lengths = np.array([[2.0, 1.0, 1.0], [5.0, 1.0, 7.0]])
    got = normalize(r, "opo", context=ctx(lengths=lengths))
    np.testing.assert_allclose(got, [[0.5, -0.5, -0.5], [0, 0, 0]], rtol=1e-14)  # b = 2/4
    assert (got[1] == 0).all()
    with pytest.raises(ValueError, match="sum to > 0"):
        normalize(r, "opo", context=ctx(lengths=np.zeros((2, 3))))


def test_james_stein_hand_computed():
    r = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [1.0, 0.0]])
    # mu = [.5, 1, 0, .5], mu_bar = .5, S = .5, sigma^2 = mean([.5, 0, 0, .5]) = .25,
    # tau^2 = .125, c = 1 - (4 - 3) * .125 / .5 = .75, b = .5 + .75 (mu - .5)
    want = [[0.5, -0.5], [0.125, 0.125], [-0.125, -0.125], [0.5, -0.5]]
    np.testing.assert_allclose(normalize(r, "james_stein"), want, rtol=1e-14)
    # three groups or fewer: no shrinkage (c = 1), the Dr. GRPO baseline
    np.testing.assert_allclose(normalize(r[:3], "james_stein"), normalize(r[:3], "none"))
    # JSPO's shrinkage baseline (leave-one-out) is tested in test_normalizers_authors.py


# ------------------------------------------------------------------------------------------
# krpo, running_std (state)
# ------------------------------------------------------------------------------------------


def kalman_reference(values, x=0.0, p=1.0, q=1e-5, rr=1e-2, eps=1e-8):
    out = []
    for z in values:
        p_pred = p + q
        k = p_pred / (p_pred + rr)
        x = x + k * (z - x)
        p = (1 - k) * p_pred
        out.append((z - x) / (math.sqrt(p) + eps))
    return out, x, p


def test_krpo_fresh_filter_is_the_authors_code():
    r = np.array([[1.0, 0.0, 0.5], [1.0, 1.0, 1.0]])
    got = normalize(r, "krpo")  # the default: persist=False
    want = [kalman_reference(row)[0] for row in r.tolist()]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    # first sample by hand: P- = 1 + 1e-5, K = P- / (P- + .01), x = K, P = (1 - K) P-
    pm = 1 + 1e-5
    k = pm / (pm + 1e-2)
    assert got[0, 0] == pytest.approx((1 - k) / (math.sqrt((1 - k) * pm) + 1e-8), rel=1e-12)
    assert (got[1] != 0).all()  # the flat group is not zero: declared zero_flat=False


def test_krpo_carries_each_prompts_filter_and_round_trips_through_json():
    state = make_state("krpo", persist=True)
    step1 = np.array([[1.0, 0.0], [0.0, 0.0]])
    normalize(step1, "krpo", persist=True, context=ctx(prompt_ids=["a", "b"]), state=state)
    _, xa, pa = kalman_reference([1.0, 0.0])
    assert state.filters["a"] == pytest.approx((xa, pa), rel=1e-12)
    saved = json.loads(json.dumps(state.state_dict()))
    step2 = np.array([[1.0, 1.0]])
    got = normalize(step2, "krpo", persist=True, context=ctx(prompt_ids=["a"]), state=state)
    np.testing.assert_allclose(got[0], kalman_reference([1.0, 1.0], xa, pa)[0], rtol=1e-12)
    restored = make_state("krpo", persist=True)
    restored.load_state_dict(saved)
    again = normalize(step2, "krpo", persist=True, context=ctx(prompt_ids=["a"]), state=restored)
    np.testing.assert_array_equal(again, got)


def test_running_std_hand_computed_across_steps_and_resume():
    state = make_state("running_std")
    a1 = normalize(np.array([[1.0, 0.0]]), "running_std", state=state)
    np.testing.assert_allclose(a1, [[0.5 / (S2 + 1e-6), -0.5 / (S2 + 1e-6)]], rtol=1e-14)
    saved = json.loads(json.dumps(state.state_dict()))
    assert saved == {"count": 2, "mean": 0.5, "m2": 0.5}
    a2 = normalize(np.array([[1.0, 1.0]]), "running_std", state=state)
    # seen [1, 0, 1, 1]: mean .75, Bessel std .5; the running mean moves the flat group
    np.testing.assert_allclose(a2, [[0.25 / (0.5 + 1e-6)] * 2], rtol=1e-14)
    resumed = make_state("running_std")
    resumed.load_state_dict(saved)
    np.testing.assert_array_equal(normalize(np.array([[1.0, 1.0]]), "running_std",
                                            state=resumed), a2)
    group = normalize(np.array([[1.0, 1.0]]), "running_std", mean="group",
                      state=make_state("running_std"))
    assert (group == 0).all()


# ------------------------------------------------------------------------------------------
# gdpo
# ------------------------------------------------------------------------------------------


def test_gdpo_hand_computed():
    comp = np.zeros((2, 2, 2))
    comp[:, :, 0] = [[1, 0], [1, 1]]
    comp[:, :, 1] = [[0, 1], [1, 0]]
    rewards = comp.sum(-1)  # [[1, 1], [2, 1]]: group 0 flat in the sum, not in its components
    z = 0.5 / (S2 + 1e-6)  # a [1, 0] group's z-score (Bessel std sqrt(.5))
    got = normalize(rewards, "gdpo", context=ctx(components=comp))
    # sums: group 0 [z - z, -z + z] = 0, group 1 [z, -z]; whitening: mean 0, var 2 z^2 / 3
    want = np.array([[0, 0], [z, -z]]) / math.sqrt(2 * z * z / 3 + 1e-8)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    got = normalize(rewards, "gdpo", weights=[2.0, 1.0], context=ctx(components=comp))
    sums = np.array([[z, -z], [z, -z]])  # 2 [z, -z] + [-z, z]; 2 * 0 + [z, -z]
    want = sums / math.sqrt(4 * z * z / 3 + 1e-8)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert (got[0] != 0).all()  # flat summed reward, informative components: not zeroed
    with pytest.raises(ValueError, match="3 weights for 2 reward components"):
        normalize(rewards, "gdpo", weights=[1, 1, 1], context=ctx(components=comp))


def test_gdpo_matches_trl_normalize_then_sum_formula():
    g = torch.Generator().manual_seed(1)
    comp = torch.rand(4, 4, 3, generator=g, dtype=torch.float64)
    w = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    # TRL: per component (r - mean)/(std + 1e-4), weighted sum, then (x - mean)/(std + 1e-4)
    z = (comp - comp.mean(1, keepdim=True)) / (comp.std(1, keepdim=True) + 1e-4)
    s = (z * w).sum(-1)
    trl = (s - s.mean()) / (s.std() + 1e-4)
    ours = normalize(comp.sum(-1), "gdpo", weights=w.tolist(), eps=1e-4,
                     context=ctx(components=comp))
    # the final floor differs (TRL: std + 1e-4; here sqrt(var + 1e-8)): agree to ~1e-4
    torch.testing.assert_close(ours, trl, rtol=2e-4, atol=2e-4)


# ------------------------------------------------------------------------------------------
# Backends, stats, ragged
# ------------------------------------------------------------------------------------------

NEW = ["loo_std", "reinforce_pp_baseline", "batch_zscore", "max_rl", "opo", "shrinkage",
       "james_stein", "krpo", "running_std", "gdpo"]


def _call(x, name):
    n, g = x.shape
    t = torch.as_tensor(x)
    lengths = torch.arange(1, n * g + 1, dtype=torch.float64).reshape(n, g) % 5 + 1
    comp = torch.stack([t, (t > 0.5).to(t.dtype)], dim=-1)
    context = ctx(lengths=lengths if torch.is_tensor(x) else lengths.numpy(),
                  prompt_ids=[f"p{i}" for i in range(n)],
                  components=comp if torch.is_tensor(x) else comp.numpy())
    return normalize(x, name, context=context, state=make_state(name))


@pytest.mark.parametrize("name", NEW)
def test_numpy_and_torch_agree_and_keep_dtype(name):
    g = torch.Generator().manual_seed(3)
    r = torch.rand(5, 4, generator=g, dtype=torch.float64)
    r[2] = 0.7
    got_np = _call(r.numpy(), name)
    got_t = _call(r, name)
    assert isinstance(got_np, np.ndarray) and got_t.dtype == torch.float64
    np.testing.assert_allclose(got_t.numpy(), got_np, rtol=1e-10, atol=1e-12)
    assert _call(r.float(), name).dtype == torch.float32


def test_stats_count_flat_groups_for_every_normalizer():
    r = np.array([[1.0, 0.0], [1.0, 1.0]])
    adv, stats = normalize_with_stats(r, "batch_zscore")
    assert stats.n_flat == 1 and stats.adv_abs_max > 0
    assert np.all(adv[1] != 0) and stats.n_zero_adv == 0  # the flat group is moved, not zeroed


def test_ragged_batch_level_uses_its_ragged_implementation():
    uids = ["a", "a", "b", "b", "b", "c", "c"]
    scores = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 0.5, 0.5])
    got = normalize_ragged(scores, uids, "batch_zscore")
    np.testing.assert_allclose(got, (scores - scores.mean()) / (scores.std(ddof=1) + 1e-6))
    got = normalize_ragged(scores, uids, "reinforce_pp_baseline")
    c = np.array([0.5, -0.5, 1 / 3, 1 / 3, -2 / 3, 0.0, 0.0])
    np.testing.assert_allclose(got, c / math.sqrt(c.var(ddof=1) + 1e-8), rtol=1e-12, atol=1e-15)
    assert got[5] == 0.0 and got[6] == 0.0
    state = make_state("running_std")
    got = normalize_ragged(scores, uids, "running_std", state=state)
    np.testing.assert_allclose(got, (scores - scores.mean()) / (scores.std(ddof=1) + 1e-6))
    assert state.count == 7


def test_ragged_context_is_sliced_per_group():
    uids = ["a", "b", "a", "b", "b"]
    scores = np.array([1.0, 1.0, 0.0, 0.0, 0.0])
    lengths = np.array([3.0, 1.0, 1.0, 1.0, 2.0])
    got = normalize_ragged(scores, uids, "opo", context=ctx(lengths=lengths))
    # group a: rows 0, 2, b = 3/4; group b: rows 1, 3, 4, b = 1/4
    np.testing.assert_allclose(got, [0.25, 0.75, -0.75, -0.25, -0.25])
    with pytest.raises(ValueError, match="lengths has 2 rows for 5 scores"):
        normalize_ragged(scores, uids, "opo", context=ctx(lengths=lengths[:2]))
