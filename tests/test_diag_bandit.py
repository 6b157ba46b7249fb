"""Curvature diagnostics with known answers: exact bandit Hessian/Fisher, correlations."""

import numpy as np
import pytest

from grponorm.bandit.exact import hess_J
from grponorm.bandit.features import orthogonal_features
from grponorm.bandit.sampled import sample_outputs
from grponorm.diagnostics import bandit_proxy as bp
from grponorm.diagnostics.correlation import correlation, lag_table, per_step, summarize


@pytest.mark.parametrize("rank", [None, 3])
def test_hessian_norms_match_parameter_space_hessian(rank):
    f = orthogonal_features(5, 4, rank=rank, seed=3)
    rng = np.random.default_rng(0)
    theta = rng.standard_normal(f.X.shape[2]) * 2
    a = rng.integers(0, 4, size=5)
    z = np.stack([f.X[i] @ theta for i in range(5)])[None]  # (1, n, K) logits
    got = bp.hessian_norms(bp.gram_sqrt(f.gram), z, a)[0]
    want = [np.linalg.norm(hess_J(f.X[i], int(a[i]), theta), 2) for i in range(5)]
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-15)


def test_hessian_norms_two_outputs_next_to_one_half():
    """K = 2 at pi* = 1/2 + 1e-12: the Hessian (~1e-12) keeps full relative accuracy, as the
    parameter-space hess_J does (both use the tanh form)."""
    f = orthogonal_features(1, 2, seed=0)
    theta = np.linalg.lstsq(f.X[0], np.array([2e-12, 0.0]), rcond=None)[0]
    z = (f.X[0] @ theta)[None, None]  # (1, 1, 2)
    got = bp.hessian_norms(bp.gram_sqrt(f.gram), z, np.array([0]))[0, 0]
    want = np.linalg.norm(hess_J(f.X[0], 0, theta), 2)
    assert 0 < want < 1e-10
    assert got == pytest.approx(want, rel=1e-9)


def test_fisher_trace_closed_form_for_linear_softmax():
    f = orthogonal_features(3, 5, seed=1)
    rng = np.random.default_rng(2)
    p = rng.dirichlet(np.ones(5), size=(2, 3))  # (S, n, K)
    got = bp.fisher_trace(f.gram, p)
    for s in range(2):
        for i in range(3):
            C = np.diag(p[s, i]) - np.outer(p[s, i], p[s, i])
            F = f.X[i].T @ C @ f.X[i]  # Fisher of log softmax(X theta) in theta
            assert got[s, i] == pytest.approx(np.trace(F), rel=1e-12)


def test_fisher_proxy_is_unbiased():
    f = orthogonal_features(2, 4, seed=0)
    p = np.array([[[0.1, 0.2, 0.3, 0.4], [0.7, 0.1, 0.1, 0.1]]])  # (1, 2, 4)
    rng = np.random.default_rng(0)
    draws = [bp.fisher_proxy(f.gram, p, sample_outputs(rng, p[0], 8)[None])[0]
             for _ in range(4000)]
    mean = np.mean(draws, axis=0)
    sem = np.std(draws, axis=0) / np.sqrt(len(draws))
    truth = bp.fisher_trace(f.gram, p)[0]
    assert np.all(np.abs(mean - truth) < 4 * sem)


def test_pi_star_complement_keeps_tiny_gaps():
    p = np.array([[1.0 - 1e-20, 1e-20, 0.0]])
    pa, qa = bp.pi_star_and_complement(p, np.array([0]))
    assert qa[0] == 1e-20


def test_correlation_known_values_and_degenerate_input():
    x = np.arange(10.0)
    assert correlation(x, 3 * x + 1)["pearson"] == pytest.approx(1.0)
    assert correlation(x, -x)["spearman"] == pytest.approx(-1.0)
    c = correlation(x, np.ones(10))
    assert np.isnan(c["pearson"]) and c["n"] == 10
    c = correlation(np.array([1.0, np.nan, 3.0, 4.0]), np.array([1.0, 2.0, 2.5, 5.0]))
    assert c["n"] == 3 and c["dropped"] == 1


def test_lag_pairs_step_t_with_step_t_plus_lag():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((6, 50))
    y = np.roll(base, 2, axis=0)  # y[t + 2] = base[t]
    rows = per_step(base, y, lag=2)
    assert len(rows) == 4
    assert all(r["pearson"] == pytest.approx(1.0) for r in rows)
    table = lag_table(base, y, lags=(0, 2, 9))
    assert set(table) == {0, 2}
    assert table[2]["pearson"]["mean"] == pytest.approx(1.0)
    assert abs(table[0]["pearson"]["mean"]) < 0.2


def test_summary_p_value_separates_signal_from_noise():
    rng = np.random.default_rng(1)
    noise = [correlation(rng.standard_normal(40), rng.standard_normal(40)) for _ in range(30)]
    signal = []
    for _ in range(30):
        x = rng.standard_normal(40)
        signal.append(correlation(x, x + rng.standard_normal(40)))
    assert summarize(signal)["p"] < 1e-6 < summarize(noise)["p"]
    assert summarize(signal)["frac_significant"] > 0.9


def test_bandit_proxy_command(tmp_path):
    import json

    import matplotlib.image as mpimg

    from grponorm.cli import main

    rc = main(["diag", "bandit-proxy", "--n", "16", "--K", "4", "--T", "12", "--seeds", "2",
               "--lags", "0,3", "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    (run,) = (tmp_path / "diag_bandit_proxy").iterdir()
    s = json.loads((run / "summary.json").read_text())
    exact = s["correlations"]["exact Hessian vs exact variance"]
    assert set(exact) == {"0", "3"}
    assert exact["0"]["spearman"]["mean"] > 0.5  # Lemma 2: curvature tracks variance
    img = mpimg.imread(run / "bandit_proxy.png")
    assert img[..., :3].std() > 0.05
