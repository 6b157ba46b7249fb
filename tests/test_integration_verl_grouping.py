"""The verl integration's ragged-group logic, without verl (the comparisons with verl's real code
live in tests/verl and run in `.venv-verl`)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from grponorm.integrations import verl as gv
from grponorm.normalizers import available_normalizers, normalize


def ragged(seed: int, sizes=(1, 2, 3, 3, 5, 8)):
    """Shuffled uids (object array of strings) and float64 scores, one all-equal group."""
    rng = np.random.default_rng(seed)
    uids = np.array([f"u{g}" for g, n in enumerate(sizes) for _ in range(n)], dtype=object)
    scores = rng.normal(size=uids.size)
    scores[uids == "u3"] = 0.9
    perm = rng.permutation(uids.size)
    return uids[perm], scores[perm]


def per_group_reference(scores, uids, method, **options):
    """Normalizes each group on its own (one row), singletons 0: the definition, slowly."""
    out = np.zeros_like(scores)
    for u in dict.fromkeys(uids.tolist()):
        rows = np.flatnonzero(uids == u)
        if rows.size > 1:
            out[rows] = normalize(scores[rows][None, :], method, **options)[0]
    return out


def test_group_ids_first_appearance_order_any_sequence():
    inverse, n = gv.group_ids(np.array(["b", "a", "b", "c"], dtype=object))
    assert n == 3 and inverse.tolist() == [0, 1, 0, 2]
    assert gv.group_ids(["x", "y", "x"])[0].tolist() == [0, 1, 0]
    assert gv.group_ids(torch.tensor([7, 7, 3]))[0].tolist() == [0, 0, 1]
    with pytest.raises(TypeError):
        gv.group_ids("abc")


def test_size_buckets_cover_every_row_once_in_batch_order():
    uids, _ = ragged(0)
    inverse, n = gv.group_ids(uids)
    buckets = gv.size_buckets(inverse, n)
    assert sorted(buckets) == [1, 2, 3, 5, 8]
    assert buckets[3].shape == (2, 3)
    rows = np.concatenate([b.reshape(-1) for b in buckets.values()])
    assert sorted(rows.tolist()) == list(range(uids.size))
    for size, b in buckets.items():
        for group_rows in b:
            assert len(set(uids[group_rows])) == 1 and (uids == uids[group_rows[0]]).sum() == size
            assert np.all(np.diff(group_rows) > 0)


@pytest.mark.parametrize("method", ["group_std", "none", "rloo", "bernoulli_smoothed"])
def test_normalize_ragged_equals_per_group_normalization(method):
    uids, scores = ragged(1)
    if method.startswith("bernoulli"):
        scores = (scores > 0).astype(np.float64)
    got, stats = gv.normalize_ragged(scores, uids, method)
    np.testing.assert_allclose(got, per_group_reference(scores, uids, method), atol=1e-12)
    assert stats.n_groups == 6


def test_singletons_and_all_equal_groups_are_exactly_zero_numpy_and_torch():
    uids, scores = ragged(2)
    zero = np.isin(uids, ["u0", "u3"])  # the singleton and the all-equal group
    for x in (scores, torch.tensor(scores, dtype=torch.float32)):
        for method in ("group_std", "none", "rloo"):
            got, stats = gv.normalize_ragged(x, uids, method)
            assert type(got) is type(x) and got.dtype == x.dtype
            assert np.all(np.asarray(got)[zero] == 0) and stats.n_flat == 2
            assert stats.n_zero_adv == 2  # the flat groups, and no other


def test_only_singletons_never_calls_the_normalizer():
    got, stats = gv.normalize_ragged(np.array([1.0, 2.0]), ["a", "b"], "rloo")
    assert got.tolist() == [0.0, 0.0] and stats.frac_flat == stats.frac_zero_adv == 1.0


def test_batch_level_normalizer_raises_on_ragged_and_is_exact_on_uniform():
    uids, scores = ragged(3)
    with pytest.raises(ValueError, match="same size"):
        gv.normalize_ragged(scores, uids, "batch_std")
    uids, scores = ragged(3, sizes=(4, 4, 4))
    got, _ = gv.normalize_ragged(scores, uids, "batch_std", eps=1e-4)
    order = np.argsort(uids, kind="stable")
    want = np.empty_like(scores)
    want[order] = normalize(scores[order].reshape(3, 4), "batch_std", eps=1e-4).reshape(-1)
    np.testing.assert_allclose(got, want, atol=1e-12)


@pytest.mark.skipif("bnpo" not in available_normalizers(), reason="no bnpo normalizer")
def test_bnpo_with_fixed_beta_parameters_is_group_wise():
    uids, scores = ragged(4)
    binary = (scores > 0).astype(np.float64)
    with pytest.raises(ValueError, match="same size"):
        gv.normalize_ragged(binary, uids, "bnpo")
    got, _ = gv.normalize_ragged(binary, uids, "bnpo", alpha=1.5, beta=1.5)
    want = per_group_reference(binary, uids, "bnpo", alpha=1.5, beta=1.5)
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_bad_input_is_rejected_with_a_clear_message():
    with pytest.raises(ValueError, match="3 labels for 2 rows"):
        gv.normalize_ragged(np.zeros(2), ["a", "b", "c"], "none")
    with pytest.raises(ValueError, match="finite.*row 1"):
        gv.normalize_ragged(np.array([0.0, np.nan]), ["a", "a"], "none")
    with pytest.raises(KeyError, match="unknown normalizer"):
        gv.normalize_ragged(np.zeros(2), ["a", "a"], "nope")
    with pytest.raises(TypeError):
        gv.estimator("group_std", alpha=1.0)  # not an option of group_std: fails at once


def test_estimator_broadcasts_over_the_mask_without_verl():
    fn = gv.estimator("group_std")
    rewards = torch.zeros(4, 3)
    rewards[:, -1] = torch.tensor([1.0, 0.0, 1.0, 5.0])  # (bs, T)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]])  # (bs, T), ints as in verl
    adv, ret = fn(rewards, mask, index=np.array(["p", "q", "p", "q"], dtype=object))
    assert adv is ret and adv.shape == (4, 3) and adv.dtype == torch.float32
    q = 2.5 / (np.sqrt(12.5) + 1e-6)  # group q: scores (0, 5), Bessel std sqrt(12.5)
    torch.testing.assert_close(adv[0], torch.zeros(3))  # group p: scores (1, 1), all equal
    torch.testing.assert_close(adv[1], torch.tensor([-q, -q, 0.0], dtype=torch.float32))
    torch.testing.assert_close(adv[3], torch.full((3,), q, dtype=torch.float32))
    assert (fn.last_stats.n_flat, fn.last_stats.n_zero_adv) == (1, 1)
    with pytest.raises(ValueError, match="uid"):
        fn(rewards, mask)


def test_options_from_config():
    assert gv.options_from_config(None) == {}
    assert gv.options_from_config({"gamma": 1.0}) == {}
    assert gv.options_from_config({"grponorm": {"eps": 1e-4}}) == {"eps": 1e-4}
    assert gv.options_from_config(object()) == {}
    with pytest.raises(TypeError, match="mapping"):
        gv.options_from_config({"grponorm": 1e-4})


def test_run_config_options_win_over_the_estimators_own():
    defaults = {"eps": 1.0, "ddof": 0}
    config = {"grponorm": {"eps": 1e-4}, "gamma": 1.0}
    assert gv.merged_options(defaults, config) == {"eps": 1e-4, "ddof": 0}
    assert gv.merged_options(defaults, None) == defaults
    assert defaults == {"eps": 1.0, "ddof": 0}  # not changed
    # through an estimator call: the config's eps is the one applied
    fn = gv.estimator("group_std", eps=1.0)
    rewards = torch.tensor([[1.0], [0.0], [1.0], [1.0]])  # (bs, T=1)
    mask = torch.ones(4, 1)
    uids = np.array(["p", "p", "q", "q"], dtype=object)
    got, _ = fn(rewards, mask, index=uids, config={"grponorm": {"eps": 1e-4}})
    want = normalize(np.array([[1.0, 0.0]]), "group_std", eps=1e-4)[0]
    np.testing.assert_allclose(got[:2, 0].numpy(), want, rtol=1e-6)
    got, _ = fn(rewards, mask, index=uids)  # no config: the estimator's own eps
    want = normalize(np.array([[1.0, 0.0]]), "group_std", eps=1.0)[0]
    np.testing.assert_allclose(got[:2, 0].numpy(), want, rtol=1e-6)


def test_estimator_context_comes_from_the_response_mask():
    fn = gv.estimator("opo")
    rewards = torch.tensor([[0.0, 1.0], [0.0, 0.0], [0.0, 0.0], [1.0, 0.0]])  # (bs, T=2)
    mask = torch.tensor([[1, 1], [1, 0], [1, 1], [1, 0]])  # lengths 2, 1, 2, 1
    uids = np.array(["a", "a", "b", "b"], dtype=object)
    got, _ = fn(rewards, mask, index=uids)
    # group a: scores (1, 0), lengths (2, 1): baseline 2/3; group b: (0, 1), (2, 1): 1/3
    want = torch.tensor([[1 / 3, 1 / 3], [-2 / 3, 0.0], [-1 / 3, -1 / 3], [2 / 3, 0.0]])
    torch.testing.assert_close(got, want)


def test_stats_metrics_name_flat_and_zero_adv_groups():
    fn = gv.estimator("batch_zscore")  # moves flat groups: the two counts differ
    rewards = torch.tensor([[1.0], [1.0], [1.0], [0.0]])
    fn(rewards, torch.ones(4, 1), index=np.array(["a", "a", "b", "b"], dtype=object))
    m = gv.stats_metrics(fn.last_stats)
    assert list(m) == ["grponorm/n_groups", "grponorm/n_flat", "grponorm/frac_flat",
                       "grponorm/n_zero_adv", "grponorm/frac_zero_adv", "grponorm/adv_mean",
                       "grponorm/adv_std", "grponorm/adv_abs_max"]
    assert (m["grponorm/frac_flat"], m["grponorm/frac_zero_adv"]) == (0.5, 0.0)


def test_stats_metrics_and_unknown_attribute():
    assert gv.stats_metrics(None) == {}
    with pytest.raises(AttributeError):
        gv.not_an_attribute  # noqa: B018


def _verl_installed() -> bool:
    spec = importlib.util.find_spec("verl")  # tests/verl looks like a namespace package "verl"
    return spec is not None and spec.origin is not None


@pytest.mark.skipif(_verl_installed(), reason="verl is installed")
def test_register_without_verl_is_an_import_error():
    with pytest.raises(ImportError):
        gv.register()


def test_user_registered_batch_level_normalizer_on_ragged_batches():
    """Declared batch_level: refused on ragged groups (not bucketed), or run by its own ragged
    implementation; the verl estimator does the same."""
    from grponorm.normalizers import NORMALIZERS, SPECS, ops, register_normalizer

    def scale_by_batch_max(rewards):
        return ops.center(rewards, axis=1) / abs(rewards).max()

    def ragged_impl(scores, inverse, n_groups):
        counts = np.bincount(inverse, minlength=n_groups)
        means = np.bincount(inverse, weights=scores, minlength=n_groups) / counts
        return (scores - means[inverse]) / np.abs(scores).max()

    try:
        register_normalizer("_t_batch_max", batch_level=True)(scale_by_batch_max)
        uids, scores = ragged(5)
        with pytest.raises(ValueError, match="same size"):
            gv.normalize_ragged(scores, uids, "_t_batch_max")
        with pytest.raises(ValueError, match="same size"):
            gv.estimator("_t_batch_max")(
                torch.tensor(scores)[:, None], torch.ones(len(scores), 1), index=uids
            )
        NORMALIZERS.pop("_t_batch_max")
        SPECS.pop("_t_batch_max")
        register_normalizer("_t_batch_max", batch_level=True, ragged=ragged_impl)(
            scale_by_batch_max
        )
        got, stats = gv.normalize_ragged(scores, uids, "_t_batch_max")
        want = ragged_impl(scores, *gv.group_ids(uids))
        want[np.isin(uids, ["u0", "u3"])] = 0.0  # singleton and all-equal group: exactly 0
        np.testing.assert_allclose(got, want, atol=1e-15)
        assert stats.n_flat == stats.n_zero_adv == 2
    finally:
        NORMALIZERS.pop("_t_batch_max", None)
        SPECS.pop("_t_batch_max", None)
