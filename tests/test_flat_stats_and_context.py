"""Flat groups vs zero-advantage groups in AdvantageStats, the one context constructor
(NormalizerContext.build, probe_context), and ragged singletons of normalizers whose formula
moves them (zero_flat=False)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from grponorm.normalizers import (
    NORMALIZERS,
    SPECS,
    MissingContextError,
    NormalizerContext,
    flat_mask,
    get_spec,
    make_state,
    normalize,
    normalize_ragged_with_stats,
    normalize_with_stats,
    probe_context,
    register_normalizer,
    zero_advantage_mask,
)

# ------------------------------------------------------------------------------------------
# n_flat / n_zero_adv
# ------------------------------------------------------------------------------------------


def test_flat_and_zero_adv_differ_for_a_normalizer_that_moves_flat_groups():
    r = np.array([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # (3, 3), two flat
    adv, stats = normalize_with_stats(r, "group_std")
    assert (stats.n_flat, stats.n_zero_adv) == (2, 2)
    adv, stats = normalize_with_stats(r, "batch_zscore")  # batch baseline: flat groups move
    assert np.all(adv != 0)
    assert (stats.n_flat, stats.frac_flat) == (2, pytest.approx(2 / 3))
    assert (stats.n_zero_adv, stats.frac_zero_adv) == (0, 0.0)


def test_zero_adv_counts_groups_that_are_not_flat_but_get_no_signal():
    # grpo_passk: (r_max - r_2nd) / std at the argmax, 0 elsewhere; a tie at the top (0, 1, 1)
    # is not flat, yet every advantage is 0
    r = np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    adv, stats = normalize_with_stats(r, "grpo_passk")
    assert (stats.n_flat, stats.n_zero_adv) == (0, 1)
    assert zero_advantage_mask(adv).tolist() == [True, False]


def test_flat_counts_every_component_for_a_normalizer_that_reads_them():
    # group 0: the combined reward is flat (1, 1) but the components are not (GDPO's point);
    # group 1: flat in every component; group 2: not flat at all
    rewards = np.array([[1.0, 1.0], [1.0, 1.0], [1.0, 0.0]])  # (3, 2)
    comps = np.array([[[1.0, 0.0], [0.0, 1.0]],
                      [[1.0, 0.0], [1.0, 0.0]],
                      [[1.0, 0.0], [0.0, 0.0]]])  # (3, 2, K=2)
    adv, stats = normalize_with_stats(rewards, "gdpo", context=NormalizerContext(components=comps),
                                      weights=[1.0, 2.0])
    assert stats.n_flat == 1  # only group 1
    assert np.all(adv[0] != 0) and np.all(adv[1] == 0)  # group 0 has a signal, group 1 none
    assert stats.n_zero_adv == 1
    np.testing.assert_array_equal(flat_mask(rewards, comps), [False, True, False])
    np.testing.assert_array_equal(flat_mask(rewards), [True, True, False])
    t = flat_mask(torch.tensor(rewards), torch.tensor(comps))
    assert t.tolist() == [False, True, False]
    # a normalizer that does not read components: the rewards alone decide
    _, stats = normalize_with_stats(rewards, "group_std",
                                    context=NormalizerContext(components=comps))
    assert stats.n_flat == 2


def test_torch_stats_match_numpy_for_both_counts():
    r = np.array([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    for method in ("group_std", "batch_zscore"):
        _, s_np = normalize_with_stats(r, method)
        _, s_t = normalize_with_stats(torch.tensor(r, dtype=torch.float32), method)
        assert (s_t.n_flat, s_t.n_zero_adv) == (s_np.n_flat, s_np.n_zero_adv)


def test_ragged_stats_count_flat_and_zero_adv_over_groups():
    uids = ["a", "a", "b", "c", "c", "c"]  # sizes 2, 1, 3
    scores = np.array([1.0, 1.0, 0.5, 1.0, 0.0, 0.0])
    _, stats = normalize_ragged_with_stats(scores, uids, "group_std")
    assert (stats.n_groups, stats.n_flat, stats.n_zero_adv) == (3, 2, 2)  # a and the singleton
    adv, stats = normalize_ragged_with_stats(scores, uids, "batch_zscore")  # its ragged form
    assert (stats.n_flat, stats.n_zero_adv) == (2, 0)
    assert np.all(adv != 0)


def test_ragged_batch_level_flat_reads_the_components_it_needs():
    """A batch-level normalizer with its own ragged implementation that reads components:
    a group flat in the scores but not in a component is not flat."""
    def fn(rewards, *, components):
        return components.sum(axis=2) - components.sum(axis=2).mean()

    def ragged_fn(scores, inverse, n_groups, *, components):
        s = np.asarray(components, dtype=np.float64).sum(axis=1)
        return s - s.mean()

    try:
        register_normalizer("_t_comp", batch_level=True, context=("components",),
                            zero_flat=False, ragged=ragged_fn)(fn)
        uids = ["a", "a", "b", "b", "b"]  # ragged: sizes 2, 3
        scores = np.array([1.0, 1.0, 0.0, 0.0, 0.0])  # both groups flat in the scores
        comps = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
        adv, stats = normalize_ragged_with_stats(
            scores, uids, "_t_comp", context=NormalizerContext(components=comps))
        assert stats.n_flat == 1  # b only: a differs in its components
        np.testing.assert_allclose(adv, [0.6, 0.6, -0.4, -0.4, -0.4])
        assert stats.n_zero_adv == 0
    finally:
        NORMALIZERS.pop("_t_comp", None)
        SPECS.pop("_t_comp", None)


# ------------------------------------------------------------------------------------------
# NormalizerContext.build
# ------------------------------------------------------------------------------------------


def _counting(value):
    calls = []

    def source():
        calls.append(1)
        return value

    return source, calls


def test_build_calls_only_the_sources_of_needed_fields():
    lengths, l_calls = _counting(np.ones((1, 3)))
    ids, i_calls = _counting(["p"])
    comps, c_calls = _counting(np.ones((1, 3, 1)))
    ctx = NormalizerContext.build("opo", {}, caller="a test", lengths=lengths, prompt_ids=ids,
                                  components=comps)
    assert ctx.given() == ("lengths",) and (len(l_calls), len(i_calls), len(c_calls)) == (1, 0, 0)
    assert NormalizerContext.build("group_std", {}, caller="a test", lengths=lengths) is None
    assert len(l_calls) == 1  # not called for a normalizer that needs nothing
    ctx = NormalizerContext.build("gdpo", {"token_weighted": True}, caller="a test",
                                  lengths=lengths, components=comps)
    assert ctx.given() == ("lengths", "components") and len(c_calls) == 1
    ctx = NormalizerContext.build("krpo", {"persist": True}, caller="a test", prompt_ids=ids)
    assert ctx.given() == ("prompt_ids",) and ctx.prompt_ids == ["p"]


def test_build_names_the_missing_field_and_the_caller():
    with pytest.raises(MissingContextError, match="'opo' needs context lengths, which verl "
                                                  "does not provide"):
        NormalizerContext.build("opo", {}, caller="verl", prompt_ids=lambda: ["p"])
    with pytest.raises(MissingContextError, match="components.*the bandit"):
        NormalizerContext.build("gdpo", {}, caller="the bandit", prompt_ids=lambda: ["p"])
    with pytest.raises(TypeError, match="zero-argument callable"):
        NormalizerContext.build("opo", {}, caller="x", lengths=np.ones((1, 3)))


def test_probe_context_has_the_right_shapes():
    r = np.zeros((2, 1))
    ctx = probe_context("gdpo", {"weights": [1.0, 2.0, 3.0], "token_weighted": True}, r)
    assert ctx.components.shape == (2, 1, 3) and ctx.lengths.shape == (2, 1)
    ctx = probe_context("krpo", {"persist": True}, r)
    assert ctx.prompt_ids == ["probe0", "probe1"] and ctx.given() == ("prompt_ids",)
    assert probe_context("group_std", {}, r) is None
    normalize(r, "gdpo", context=probe_context("gdpo", {}, r))  # accepted as it is


# ------------------------------------------------------------------------------------------
# Ragged singletons of zero_flat=False normalizers
# ------------------------------------------------------------------------------------------


def _singletons_moved(method, **options):
    """On a batch of singletons and on a mixed batch, a zero_flat=False normalizer's singletons
    get what its formula gives on them (not 0)."""
    assert not get_spec(method).zeroes_flat(options)
    scores = np.array([0.0, 1.0, 1.0, 0.0])
    want = normalize(scores[:, None], method, state=make_state(method, **options),
                     **options)[:, 0]  # (4,) each row its own group
    got, stats = normalize_ragged_with_stats(
        scores, ["a", "b", "c", "d"], method, state=make_state(method, **options), **options)
    assert np.any(want != 0)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert stats.n_flat == 4 and stats.n_zero_adv == int(np.sum(want == 0))


@pytest.mark.parametrize("method, options", [
    ("batch_zscore", {}),
    ("running_std", {}),
    ("krpo", {"persist": False}),
])
def test_ragged_singletons_of_a_normalizer_that_moves_them(method, options):
    _singletons_moved(method, **options)


def test_ragged_singletons_of_krpo_in_a_mixed_batch():
    """krpo is group-wise: a singleton beside larger groups goes through the singleton rule."""
    uids = ["a", "b", "b", "c", "c", "c"]
    scores = np.array([1.0, 1.0, 0.0, 0.0, 1.0, 1.0])
    got, stats = normalize_ragged_with_stats(scores, uids, "krpo", persist=False)
    assert got[0] == pytest.approx(float(normalize([[1.0]], "krpo", persist=False)[0, 0]))
    assert got[0] != 0
    np.testing.assert_allclose(got[1:3], normalize([[1.0, 0.0]], "krpo", persist=False)[0])
    assert stats.n_flat == 1


def test_ragged_singletons_of_krpo_at_its_default_options():
    if get_spec("krpo").needs({}) or get_spec("krpo").has_state({}):
        pytest.skip("krpo keeps per-prompt state at its default options")
    _singletons_moved("krpo")
    got, _ = normalize_ragged_with_stats(np.array([1.0, 0.0, 1.0]), ["a", "b", "b"], "krpo")
    assert got[0] == pytest.approx(float(normalize([[1.0]], "krpo")[0, 0])) != 0
