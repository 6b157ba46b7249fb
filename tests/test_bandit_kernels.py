"""Compiled chains (bandit/kernels.py) against the NumPy reference (`simulate._local_tables`).

Only agreement is tested here; speed is benchmarks/bench_bandit.py's business."""

import logging

import numpy as np
import pytest

from grponorm.bandit import kernels
from grponorm.bandit.features import initial_logits, orthogonal_features, overlap_features
from grponorm.bandit.simulate import _correct_first, _local_tables, simulate_exact

needs_numba = pytest.mark.skipif(not kernels.numba_available(), reason="numba not installed")
RTOL = 1e-12


def _instance(n, K, S, rank=None, seed=0, spread=1.0):
    f = orthogonal_features(n, K, rank=rank, seed=seed)
    a = np.random.default_rng(seed).integers(0, K, size=n)
    z0 = initial_logits(n, K, a, 0.05)[None] + spread * np.random.default_rng(
        seed + 1).standard_normal((S, n, K))  # (S, n, K)
    return f, a, z0


@needs_numba
@pytest.mark.parametrize("method", ["grpo", "reinforce"])
@pytest.mark.parametrize("n,K,S,rank", [(30, 5, 3, None), (20, 50, 2, None), (9, 4, 2, 2),
                                        (5, 2, 1, None), (4, 130, 1, None)])
def test_tables_match_the_numpy_reference(method, n, K, S, rank):
    f, a, z0 = _instance(n, K, S, rank)
    kmax = 30
    ref = _local_tables(f, a, z0, method, 0.7, kmax, True)
    z, gram, diag = _correct_first(f, a, z0)
    nsteps = np.random.default_rng(2).integers(0, kmax + 1, size=(S, n))
    nsteps[0, 0] = kmax
    for block in (None, 3):  # one block (cut short), and many of mixed lengths
        got = kernels.chain_tables(z, gram, diag, method, 0.7, nsteps, True, block=block)
        for r, g in zip(ref, got):  # pi, sqrt(v), ||grad||^2
            assert g.shape == r.shape
            ran = np.arange(kmax + 1) <= nsteps[..., None]  # (S, n, kmax+1): steps it ran
            np.testing.assert_allclose(g[ran], r[ran], rtol=RTOL, atol=0)
            assert np.isnan(g[~ran]).all()  # nothing past a chain's own steps


@needs_numba
@pytest.mark.parametrize("method", ["grpo", "reinforce"])
@pytest.mark.parametrize("shared", [True, False])
def test_simulate_exact_numba_equals_fast(method, shared):
    f, a, z0 = _instance(40, 6, 3, spread=0.5)
    z0 = z0[:1] if shared else z0
    kw = dict(method=method, eta=0.8, T=700, seeds=[0, 5, 9], record_every=7, track_grad=True)
    fast = simulate_exact(f, a, z0, path="fast", **kw)
    comp = simulate_exact(f, a, z0, path="numba", **kw)
    auto = simulate_exact(f, a, z0, path="auto", **kw)
    assert (fast.path, comp.path, auto.path) == ("fast", "numba", "numba")
    assert comp.path_note == "" and auto.path_note == ""
    for name in ("mean_pi", "C", "final_pi", "sel_pi", "sel_sqrtv", "sel_grad2"):
        np.testing.assert_allclose(getattr(comp, name), getattr(fast, name), rtol=RTOL, atol=0,
                                   err_msg=name)
    np.testing.assert_array_equal(auto.sel_pi, comp.sel_pi)  # auto ran the same engine
    assert fast.mean_pi[:, -1].mean() > fast.mean_pi[:, 0].mean()  # it learned something


@needs_numba
@pytest.mark.parametrize("block", [1, 7, None])
@pytest.mark.parametrize("rank", [None, 3])
def test_per_seed_records_match_the_reference_at_any_block_size(block, rank, monkeypatch):
    """The per-seed path (`kernels.seed_records`): blocks of mixed chain lengths, a last block
    cut short, full and diagonal Gram, every output of `simulate_exact`."""
    if block is not None:
        monkeypatch.setattr(kernels, "BLOCK", block)
    f, a, z0 = _instance(23, 5, 3, rank=rank, spread=0.5)
    kw = dict(method="grpo", eta=0.8, T=400, seeds=[0, 5, 9], record_every=3, track_grad=True)
    fast = simulate_exact(f, a, z0, path="fast", **kw)
    comp = simulate_exact(f, a, z0, path="numba", **kw)
    for name in ("mean_pi", "C", "final_pi", "sel_pi", "sel_sqrtv", "sel_grad2"):
        np.testing.assert_allclose(getattr(comp, name), getattr(fast, name), rtol=RTOL, atol=0,
                                   err_msg=name)
    for h in fast.steps_to:
        np.testing.assert_array_equal(comp.steps_to[h], fast.steps_to[h])


@needs_numba
def test_seed_records_refuses_bad_sequences():
    f, a, z0 = _instance(5, 3, 2)
    z, gram, diag = _correct_first(f, a, z0)
    with pytest.raises(ValueError, match="do not match"):
        kernels.seed_records(z, gram, diag, "grpo", 1.0, np.zeros((1, 4), int), False)
    with pytest.raises(ValueError, match="questions in"):
        kernels.seed_records(z, gram, diag, "grpo", 1.0, np.full((2, 4), 5), False)


@needs_numba
@pytest.mark.parametrize("method", ["grpo", "reinforce"])
def test_extremes_q_a_zero_and_pi_zero(method):
    """q_a = 0 (wrong weights underflow: GRPO's update is exactly zero), pi* = 0, subnormal
    weights and K = 2, each against the reference."""
    n, K = 4, 3
    f = orthogonal_features(n, K, seed=3)
    a = np.array([0, 1, 2, 0])
    z0 = np.zeros((n, K))
    z0[0, 0] = 800.0  # q_a underflows to 0
    z0[1, 1] = -800.0  # pi* underflows to 0
    z0[2, 2] = 709.0  # wrong weights subnormal (exp(-709)), q_a still > 1/DBL_MAX
    z0[3] = [0.0, 1e-3, -1e-3]
    kw = dict(method=method, eta=1.0, T=60, seeds=[1, 2])
    fast = simulate_exact(f, a, z0, path="fast", **kw)
    comp = simulate_exact(f, a, z0, path="numba", **kw)
    for name in ("sel_pi", "sel_sqrtv", "final_pi", "mean_pi", "C"):
        assert np.isfinite(getattr(fast, name)).all(), name
        np.testing.assert_allclose(getattr(comp, name), getattr(fast, name), rtol=RTOL, atol=0,
                                   err_msg=name)
    assert comp.final_pi[:, 0].tolist() == [1.0, 1.0] and comp.final_pi[:, 1].tolist() == [0, 0]
    f2, a2, z2 = _instance(6, 2, 2)
    k2 = dict(method=method, eta=0.9, T=300, seeds=[0, 1])
    np.testing.assert_allclose(simulate_exact(f2, a2, z2, path="numba", **k2).sel_pi,
                               simulate_exact(f2, a2, z2, path="fast", **k2).sel_pi, rtol=RTOL)


@needs_numba
def test_vectorized_exp_is_within_two_ulp_of_numpy():
    rng = np.random.default_rng(0)
    z = np.concatenate([-rng.random(20000) * 708.0, -rng.random(2000) * 1e-3, [0.0, -708.0]])
    e = np.empty_like(z)
    kernels._exp_shifted(z, 0.0, e)
    ref = np.exp(z)
    assert e[z.size - 2] == 1.0
    assert np.max(np.abs(e - ref) / ref) <= 2 * np.finfo(float).eps


@needs_numba
def test_chain_tables_refuses_mismatched_shapes():
    f, a, z0 = _instance(5, 3, 2)
    z, gram, diag = _correct_first(f, a, z0)
    with pytest.raises(ValueError, match="do not match"):
        kernels.chain_tables(z, gram, diag, "grpo", 1.0, np.zeros((1, 5), int), False)
    with pytest.raises(ValueError, match=">= 0"):
        kernels.chain_tables(z, gram, diag, "grpo", 1.0, -np.ones((2, 5), int), False)


def test_numba_path_needs_orthogonal_features():
    f = overlap_features(3, 3, 0.3, seed=0)
    with pytest.raises(ValueError, match="orthogonal"):
        simulate_exact(f, np.zeros(3, int), np.zeros((3, 3)), method="grpo", eta=1.0, T=5,
                       path="numba")
    with pytest.raises(ValueError, match="'numba'"):
        simulate_exact(f, np.zeros(3, int), np.zeros((3, 3)), method="grpo", eta=1.0, T=5,
                       path="compiled")


def test_without_numba_auto_says_so_and_numba_raises(monkeypatch, caplog):
    monkeypatch.setattr(kernels, "_IMPORT_ERROR", ImportError("No module named 'numba'"))
    f, a, z0 = _instance(6, 3, 1)
    kw = dict(method="grpo", eta=1.0, T=50, seeds=[0])
    with caplog.at_level(logging.WARNING, logger="grponorm.bandit.simulate"):
        run = simulate_exact(f, a, z0, path="auto", **kw)
    assert run.path == "fast"
    assert "numba is not importable" in run.path_note and "pip install" in run.path_note
    assert any("numba is not importable" in r.getMessage() for r in caplog.records)
    with pytest.raises(ImportError, match="pip install 'numba"):
        simulate_exact(f, a, z0, path="numba", **kw)
    np.testing.assert_array_equal(run.sel_pi, simulate_exact(f, a, z0, path="fast", **kw).sel_pi)
