"""Bandit simulator throughput: question-updates per second, measured in one run.

    python benchmarks/bench_bandit.py [--n 1000] [--K 50] [--seeds 10] [--T 200000]

Paths compared (orthogonal features, diagonal Gram, GRPO at the paper's step size):
    plain loop   one question per step in a Python loop over NumPy (logit space) - baseline
    fast/shared  `simulate_exact`, every seed starts from the same logits: the local-time
                 chains are computed once and shared; seeds cost only their bookkeeping
    fast/seeded  `simulate_exact` with per-seed initial logits: every (seed, question) chain
                 is computed, vectorized over seeds and questions (the raw kernel rate)
    dense        `simulate_exact(path="dense")` on Gaussian features (n, K, d): parameter
                 space, one global step at a time, all logits recomputed each step
    sampled      `simulate_sampled` (G samples per question per step, group_std): counts
                 n question-updates per seed and step
A question-update is one exact update of one question's K logits in one seed.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

from grponorm.bandit.features import gaussian_features, initial_logits, orthogonal_features
from grponorm.bandit.simulate import selection_sequence, simulate_exact, simulate_sampled


def plain_loop(gram_diag: np.ndarray, z0: np.ndarray, a: np.ndarray, eta: float, T: int,
               seed: int) -> np.ndarray:
    """The straightforward implementation: one step at a time, one seed."""
    z = z0.copy()
    for i in selection_sequence(seed, z.shape[0], T):
        zi = z[i]
        e = np.exp(zi - zi.max())
        p = e / e.sum()
        pa = p[a[i]]
        qa = (e.sum() - e[a[i]]) / e.sum()
        u = -p
        u[a[i]] += 1.0
        if qa > 0:
            z[i] = zi + eta * np.sqrt(pa / qa) * gram_diag[i] * u
    return z


def timed(fn, repeat: int = 3) -> float:
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--K", type=int, default=50)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--T", type=int, default=200_000)
    ap.add_argument("--T-plain", type=int, default=20_000)
    ap.add_argument("--dense-d", type=int, default=64)
    ap.add_argument("--dense-T", type=int, default=300)
    args = ap.parse_args()
    n, K, S, T = args.n, args.K, args.seeds, args.T

    feats = orthogonal_features(n, K, seed=0, materialize=False)
    a = np.random.default_rng(0).integers(0, K, size=n)
    z0 = initial_logits(n, K, a, None)
    z0_seeded = z0 + 0.01 * np.random.default_rng(1).standard_normal((S, n, K))
    eta = 0.5 / feats.xmax2
    gd = feats.gram_diag

    rows = []
    t = timed(lambda: plain_loop(gd, z0, a, eta, args.T_plain, 0))
    rows.append(("plain loop", args.T_plain, t))
    t = timed(lambda: simulate_exact(feats, a, z0, method="grpo", eta=eta, T=T,
                                     seeds=range(S), record_every=T))
    rows.append((f"fast/shared ({S} seeds)", S * T, t))
    t = timed(lambda: simulate_exact(feats, a, z0_seeded, method="grpo", eta=eta, T=T,
                                     seeds=range(S), record_every=T), repeat=1)
    rows.append((f"fast/seeded ({S} seeds)", S * T, t))
    gfeats = gaussian_features(n, K, args.dense_d, seed=0)
    Sd = min(S, 4)
    t = timed(lambda: simulate_exact(gfeats, a, np.zeros((n, K)), method="grpo", eta=eta,
                                     T=args.dense_T, seeds=range(Sd), path="dense",
                                     theta0=np.zeros(args.dense_d), record_every=args.dense_T),
              repeat=1)
    rows.append((f"dense (d={args.dense_d}, {Sd} seeds)", Sd * args.dense_T, t))
    Ts = 20
    t = timed(lambda: simulate_sampled(feats, a, z0, normalizer="group_std", eta=1.0, T=Ts,
                                       G=8, seeds=range(S), record_every=Ts), repeat=1)
    rows.append((f"sampled (G=8, {S} seeds)", S * n * Ts, t))

    base = rows[0][1] / rows[0][2]
    print(f"bandit throughput: n={n}, K={K}, numpy {np.__version__}, "
          f"{platform.processor() or platform.machine()}")
    print(f"{'path':32s} {'updates':>12s} {'seconds':>9s} {'updates/s':>12s} {'vs plain':>9s}")
    for name, count, secs in rows:
        rate = count / secs
        print(f"{name:32s} {count:12d} {secs:9.3f} {rate:12.3e} {rate / base:8.1f}x")


if __name__ == "__main__":
    main()
