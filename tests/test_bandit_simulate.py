"""Simulator: fast (logit-space) and dense paths agree; features and samplers behave."""

import numpy as np
import pytest

from grponorm.bandit.exact import pi_star, update
from grponorm.bandit.features import (
    gaussian_features,
    initial_logits,
    orthogonal_features,
    overlap_features,
    theta_for_logits,
)
from grponorm.bandit.sampled import sample_outputs, sampled_direction, simulate_sampled
from grponorm.bandit.simulate import (
    first_crossing,
    local_times,
    selection_sequence,
    simulate_exact,
)


def _instance(n=12, K=5, rank=None, pi0=0.05, seed=0):
    f = orthogonal_features(n, K, rank=rank, seed=seed)
    a = np.random.default_rng(seed).integers(0, K, size=n)
    if rank is None:
        return f, a, initial_logits(n, K, a, pi0), None
    theta0 = np.random.default_rng(seed + 1).standard_normal(f.X.shape[2])
    return f, a, np.einsum("nkd,d->nk", f.X, theta0), theta0


# ------------------------------------------------------------------------------- features


def test_orthogonal_features_satisfy_assumption_2():
    f = orthogonal_features(6, 4, seed=1)
    X = f.X
    for i in range(6):
        for j in range(6):
            if i != j:
                assert np.abs(X[i] @ X[j].T).max() == 0.0  # every x_{i,k} . x_{j,l} = 0
    assert f.xmax2 == pytest.approx(1.0)
    assert f.gram_diag is not None
    assert np.allclose(f.gram, X @ np.swapaxes(X, 1, 2))


def test_low_rank_orthogonal_features_have_full_gram():
    f = orthogonal_features(5, 4, rank=2, seed=2)
    assert f.gram_diag is None
    assert np.linalg.matrix_rank(f.gram[0]) == 2
    assert f.xmax2 == pytest.approx(1.0)


def test_overlap_features_have_the_requested_cosine():
    rho = 0.3
    f = overlap_features(4, 3, rho, seed=0)
    X = f.X
    assert not f.orthogonal
    assert np.allclose(X[0] @ X[1].T, rho * np.eye(3), atol=1e-12)  # x_{0,k} . x_{1,k} = rho
    assert np.allclose(f.gram[2], np.eye(3), atol=1e-12)
    assert overlap_features(3, 3, 0.0).orthogonal


def test_initial_logits_give_requested_pi_star():
    a = np.array([0, 2, 1])
    z = initial_logits(3, 4, a, np.array([1e-3, 0.5, 0.9]))
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    assert p[np.arange(3), a] == pytest.approx([1e-3, 0.5, 0.9], rel=1e-12)
    with pytest.raises(ValueError, match="pi0"):
        initial_logits(3, 4, a, 1.0)


def test_theta_for_logits_reaches_the_logits():
    f = orthogonal_features(4, 3, seed=0)
    a = np.zeros(4, dtype=int)
    z0 = initial_logits(4, 3, a, 0.2)
    theta = theta_for_logits(f, z0)
    assert np.allclose(np.einsum("nkd,d->nk", f.X, theta), z0, atol=1e-12)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: orthogonal_features(0, 3), "n"),
        (lambda: orthogonal_features(3, 1), "K"),
        (lambda: orthogonal_features(3, 3, rank=4), "rank"),
        (lambda: overlap_features(3, 3, 1.5), "rho"),
        (lambda: gaussian_features(3, 3, 0), "d"),
    ],
)
def test_feature_generators_reject_bad_sizes(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ----------------------------------------------------------------------- exact schedule


def test_local_times_count_previous_occurrences():
    seq = np.array([2, 0, 2, 2, 1, 0])
    assert local_times(seq, 3).tolist() == [0, 0, 1, 2, 0, 1]


@pytest.mark.parametrize("method", ["reinforce", "grpo"])
@pytest.mark.parametrize("rank", [None, 3])
def test_fast_and_dense_exact_paths_agree(method, rank):
    f, a, z0, theta0 = _instance(rank=rank)
    eta = 1.0 if method == "reinforce" else 0.5
    kw = dict(method=method, eta=eta, T=400, seeds=[0, 3], track_grad=True)
    fast = simulate_exact(f, a, z0, path="fast", **kw)
    dense = simulate_exact(f, a, z0, path="dense", theta0=theta0, **kw)
    assert fast.path == "fast" and dense.path == "dense"
    np.testing.assert_allclose(fast.mean_pi, dense.mean_pi, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(fast.final_pi, dense.final_pi, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(fast.sel_grad2, dense.sel_grad2, rtol=1e-9, atol=1e-16)
    np.testing.assert_allclose(fast.C, dense.C, rtol=1e-10)
    for h in fast.steps_to:
        assert np.array_equal(fast.steps_to[h], dense.steps_to[h])


def test_fast_exact_path_matches_a_plain_loop_of_update():
    f, a, z0, _ = _instance(n=5, K=4, pi0=0.1)
    T = 200
    run = simulate_exact(f, a, z0, method="grpo", eta=0.5, T=T, seeds=[7])
    theta = theta_for_logits(f, z0)
    curve = []
    for i in selection_sequence(7, f.n, T):
        curve.append(np.mean([pi_star(f.X[j], int(a[j]), theta)[0] for j in range(f.n)]))
        theta = update(f.X[i], int(a[i]), theta, "grpo", eta=0.5)
    curve.append(np.mean([pi_star(f.X[j], int(a[j]), theta)[0] for j in range(f.n)]))
    np.testing.assert_allclose(run.mean_pi[0], curve, rtol=1e-11)


def test_per_seed_initial_logits_are_used():
    f, a, z0, _ = _instance()
    z0s = np.stack([z0, z0 + 0.0, initial_logits(f.n, f.K, a, 0.5)])
    run = simulate_exact(f, a, z0s, method="grpo", eta=0.5, T=50, seeds=[0, 0, 0])
    assert np.array_equal(run.mean_pi[0], run.mean_pi[1])
    assert run.mean_pi[2, 0] == pytest.approx(0.5)


def test_grpo_reaches_high_pi_faster_than_reinforce_from_low_init():
    f, a, z0, _ = _instance(n=10, K=5, pi0=1e-3)
    r = simulate_exact(f, a, z0, method="reinforce", eta=1.0, T=4000, seeds=[0])
    g = simulate_exact(f, a, z0, method="grpo", eta=0.5, T=4000, seeds=[0])
    assert g.mean_pi[0, -1] > 0.9 > r.mean_pi[0, -1]


def test_first_crossing():
    c = np.array([[0.1, 0.5, 0.95, 0.99], [0.1, 0.2, 0.3, 0.4]])
    assert first_crossing(c, 0.9).tolist() == [2, -1]


def test_exact_simulation_rejects_bad_arguments():
    f, a, z0, _ = _instance()
    with pytest.raises(ValueError, match="eta"):
        simulate_exact(f, a, z0, method="grpo", eta=np.nan, T=5)
    with pytest.raises(ValueError, match="a must"):
        simulate_exact(f, a[:-1], z0, method="grpo", eta=0.5, T=5)
    with pytest.raises(ValueError, match="z0"):
        simulate_exact(f, a, z0[:, :-1], method="grpo", eta=0.5, T=5)
    g = gaussian_features(4, 3, 5)
    with pytest.raises(ValueError, match="orthogonal"):
        simulate_exact(g, np.zeros(4, int), np.zeros((4, 3)), method="grpo", eta=0.5, T=5,
                       path="fast")


# --------------------------------------------------------------------- sampled schedule


def test_sample_outputs_follow_the_policy():
    rng = np.random.default_rng(0)
    p = np.array([[0.1, 0.6, 0.3], [1.0, 0.0, 0.0]])
    out = sample_outputs(rng, p, 20000)
    freq = np.stack([np.bincount(o, minlength=3) / 20000 for o in out])
    assert np.abs(freq[0] - p[0]).max() < 0.015  # ~4 sd at n = 20000
    assert np.array_equal(freq[1], [1.0, 0.0, 0.0])


def test_sampled_direction_matches_explicit_sum():
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(4), size=3)
    out = rng.integers(0, 4, size=(3, 5))
    adv = rng.standard_normal((3, 5))
    ref = np.zeros((3, 4))
    for i in range(3):
        for g in range(5):
            e = np.zeros(4)
            e[out[i, g]] = 1.0
            ref[i] += adv[i, g] * (e - p[i]) / 5
    np.testing.assert_allclose(sampled_direction(p, out, adv), ref, atol=1e-15)


@pytest.mark.parametrize("normalizer", ["group_std", "none", "batch_std", "rloo"])
def test_fast_and_dense_sampled_paths_agree(normalizer):
    f, a, z0, _ = _instance(n=8, K=4, pi0=0.3)
    kw = dict(normalizer=normalizer, eta=1.0, T=30, G=6, seeds=[0, 1])
    fast = simulate_sampled(f, a, z0, path="fast", **kw)
    dense = simulate_sampled(f, a, z0, path="dense", **kw)
    np.testing.assert_allclose(fast.mean_pi, dense.mean_pi, rtol=1e-9)
    np.testing.assert_array_equal(fast.sample_acc, dense.sample_acc)
    assert fast.mean_pi[:, -1].mean() > fast.mean_pi[:, 0].mean()  # it learns


def test_all_equal_groups_do_not_move_the_policy():
    f, a, _, _ = _instance(n=4, K=3)
    z0 = np.zeros((4, 3))
    z0[np.arange(4), a] = 80.0  # 1 - pi* ~ 1e-35: every sample correct, zero variance
    run = simulate_sampled(f, a, z0, normalizer="group_std", eta=10.0, T=5, G=4)
    assert np.all(run.zero_var_frac[:, :-1] == 1.0)
    assert np.array_equal(run.mean_pi[:, 0], run.mean_pi[:, -1])


def test_sampled_runs_reproducible_and_seed_dependent():
    f, a, z0, _ = _instance(n=6, K=4, pi0=0.2)
    kw = dict(normalizer="group_std", eta=1.0, T=20, G=4)
    r1 = simulate_sampled(f, a, z0, seeds=[0, 1], **kw)
    r2 = simulate_sampled(f, a, z0, seeds=[1], **kw)
    np.testing.assert_array_equal(r1.mean_pi[1], r2.mean_pi[0])  # seed 1 alone == in a batch
    assert not np.array_equal(r1.mean_pi[0], r1.mean_pi[1])


def test_sampled_rejects_small_groups():
    f, a, z0, _ = _instance()
    with pytest.raises(ValueError, match="G"):
        simulate_sampled(f, a, z0, normalizer="group_std", eta=1.0, T=3, G=1)


def test_sampled_normalizer_gets_the_bandits_context():
    """A normalizer that needs prompt ids and components gets each question's index and its one
    reward as the only component; one that needs lengths is refused (the bandit has none)."""
    from grponorm.normalizers import NORMALIZERS, SPECS, register_normalizer

    seen = []

    def spy(rewards, *, prompt_ids, components):
        seen.append((list(prompt_ids), np.array(components), np.array(rewards)))
        return rewards - rewards.mean(axis=1, keepdims=True)

    f, a, z0, _ = _instance(n=4, K=3, pi0=0.3)
    try:
        register_normalizer("_t_spy", context=("prompt_ids", "components"))(spy)
        spied = simulate_sampled(f, a, z0, normalizer="_t_spy", eta=1.0, T=3, G=4)
        plain = simulate_sampled(f, a, z0, normalizer="none", eta=1.0, T=3, G=4)
    finally:
        NORMALIZERS.pop("_t_spy", None)
        SPECS.pop("_t_spy", None)
    assert len(seen) == 3
    for ids, comps, rewards in seen:
        assert ids == ["0", "1", "2", "3"]  # the question index, validated to strings
        assert comps.shape == (4, 4, 1) and np.array_equal(comps[..., 0], rewards)
    np.testing.assert_array_equal(spied.mean_pi, plain.mean_pi)  # the same formula as none
    with pytest.raises(ValueError, match="needs \\['lengths'\\], which the bandit has not"):
        simulate_sampled(f, a, z0, normalizer="opo", eta=1.0, T=3, G=4)
