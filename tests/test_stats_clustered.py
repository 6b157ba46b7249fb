"""stats.clustered: the pooled mean over seeds and its cluster-bootstrap t interval."""

import numpy as np
import pytest
from scipy import stats as st

from grponorm.stats.clustered import cluster_bootstrap_mean


def test_pooled_mean_weighs_every_value_once():
    m = cluster_bootstrap_mean([[1.0, 1.0, 1.0], [0.0]], reps=200)
    assert m.mean == pytest.approx(0.75) and m.clusters == 2 and m.values == 4


def test_interval_is_the_t_interval_around_the_bootstrap_se():
    clusters = [[0.1, 0.3], [0.2], [0.5, 0.4, 0.6], [-0.1]]
    m = cluster_bootstrap_mean(clusters, reps=4000, seed=3)
    t = st.t.ppf(0.975, 3)
    assert (m.low, m.high) == pytest.approx((m.mean - t * m.se, m.mean + t * m.se))
    # the se of a ratio of cluster sums, by brute force with the same draws
    rng = np.random.default_rng(3)
    sums, counts = np.array([0.4, 0.2, 1.5, -0.1]), np.array([2, 1, 3, 1])
    idx = rng.integers(0, 4, size=(4000, 4))
    assert m.se == pytest.approx((sums[idx].sum(1) / counts[idx].sum(1)).std(ddof=1))


def test_one_cluster_has_no_interval_and_empty_ones_are_dropped():
    m = cluster_bootstrap_mean([[0.2, 0.4], []])
    assert m.mean == pytest.approx(0.3) and m.low is None and m.high is None and m.clusters == 1


@pytest.mark.parametrize("bad", [[], [[]], [[np.nan]]])
def test_bad_input_is_refused(bad):
    with pytest.raises(ValueError):
        cluster_bootstrap_mean(bad)


def test_coverage_with_correlated_values_within_a_seed():
    """8 seeds, each with a shared seed effect plus noise over 30 values: the clustered
    interval covers the true mean near its nominal 95% (an interval that treated the 240 values
    as independent would cover far less)."""
    rng = np.random.default_rng(0)
    hits, naive_hits, sims = 0, 0, 300
    for _ in range(sims):
        seed_effect = rng.normal(0.0, 0.1, size=8)
        clusters = [e + rng.normal(0.0, 0.1, size=30) for e in seed_effect]
        m = cluster_bootstrap_mean(clusters, reps=400, seed=int(rng.integers(1 << 30)))
        hits += m.low <= 0.0 <= m.high
        flat = np.concatenate(clusters)
        half = 1.96 * flat.std(ddof=1) / np.sqrt(flat.size)
        naive_hits += abs(flat.mean()) <= half
    assert 0.88 <= hits / sims <= 0.99
    assert naive_hits / sims < 0.6
