"""Bandit simulator throughput: question-updates per second, measured in one run.

    python benchmarks/bench_bandit.py [--n 1000] [--K 50] [--seeds 10] [--T 200000] [--repeats 3]

Paths compared (orthogonal features, diagonal Gram, GRPO at the paper's step size):
    plain loop   one question per step in a Python loop over NumPy (logit space) - baseline
    fast/shared  `simulate_exact(path="fast")` (NumPy), every seed starts from the same
                 logits: the local-time chains are computed once and shared; seeds cost only
                 their bookkeeping
    fast/seeded  `simulate_exact(path="fast")` with per-seed initial logits: every (seed,
                 question) chain is computed, vectorized over seeds and questions
    numba/shared, numba/seeded  the same two with `path="numba"` (grponorm.bandit.kernels,
                 the compiled twin of the NumPy chains; what path="auto" runs when numba
                 imports; one thread). numba/seeded computes every (seed, question) chain
                 (`kernels.seed_records`: chains in blocks side by side in the vector lanes,
                 packed rows, no tables): the raw per-seed rate, bookkeeping included
    dense        `simulate_exact(path="dense")` on Gaussian features (n, K, d): parameter
                 space, one global step at a time, all logits recomputed each step
    sampled      `simulate_sampled` (G samples per question per step, group_std): counts
                 n question-updates per seed and step
A question-update is one exact update of one question's K logits in one seed.

Every path runs once per round, --repeats rounds; each round's ratio "vs plain" divides by
the plain loop of that round. The table gives the range over rounds, updates per CPU second
(median) and the per-round ratio of CPU rates ("CPU vs plain"): on a busy machine wall time
is a lower bound on the rate, CPU time is not.
numba's first call (cache load, or compile on a new machine) is timed apart, before round 1.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import time

import numpy as np

from grponorm.bandit.features import gaussian_features, initial_logits, orthogonal_features
from grponorm.bandit.kernels import numba_available, numba_missing_reason
from grponorm.bandit.sampled import simulate_sampled
from grponorm.bandit.simulate import selection_sequence, simulate_exact


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


def cpu_line() -> str:
    """lscpu's model name, and whether the CPU has AVX-512 (avx512f)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        out = ""
    model = next((ln.split(":", 1)[1].strip() for ln in out.splitlines()
                  if ln.startswith("Model name")), platform.processor() or platform.machine())
    flags = next((ln for ln in out.splitlines() if ln.startswith("Flags")), "")
    if not flags:
        try:
            flags = open("/proc/cpuinfo").read()
        except OSError:
            flags = ""
    return f"CPU: {model}; avx512f: {'yes' if ' avx512f' in flags else 'no'}"


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--K", type=int, default=50)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--T", type=int, default=200_000)
    ap.add_argument("--T-plain", type=int, default=20_000)
    ap.add_argument("--dense-d", type=int, default=64)
    ap.add_argument("--dense-T", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3, help="rounds of every path (>= 1)")
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    n, K, S, T = args.n, args.K, args.seeds, args.T

    feats = orthogonal_features(n, K, seed=0, materialize=False)
    a = np.random.default_rng(0).integers(0, K, size=n)
    z0 = initial_logits(n, K, a, None)
    z0_seeded = z0 + 0.01 * np.random.default_rng(1).standard_normal((S, n, K))
    eta = 0.5 / feats.xmax2
    gd = feats.gram_diag

    gfeats = gaussian_features(n, K, args.dense_d, seed=0)
    Sd, Ts = min(S, 4), 20

    def exact(z, path):
        return lambda: simulate_exact(feats, a, z, method="grpo", eta=eta, T=T, seeds=range(S),
                                      record_every=T, path=path)

    paths = [("plain loop", args.T_plain, lambda: plain_loop(gd, z0, a, eta, args.T_plain, 0)),
             (f"fast/shared ({S} seeds)", S * T, exact(z0, "fast")),
             (f"fast/seeded ({S} seeds)", S * T, exact(z0_seeded, "fast"))]
    print(cpu_line())
    print(f"bandit throughput: n={n}, K={K}, T={T}, numpy {np.__version__}, "
          f"{args.repeats} rounds")
    if numba_available():
        import numba

        paths += [(f"numba/shared ({S} seeds)", S * T, exact(z0, "numba")),
                  (f"numba/seeded ({S} seeds)", S * T, exact(z0_seeded, "numba"))]
        wall, _ = timed(lambda: simulate_exact(feats, a, z0, method="grpo", eta=eta, T=1,
                                               path="numba"))
        print(f"numba {numba.__version__}: first call (cache load or compile) {wall:.2f} s")
    else:
        print(f"numba rows skipped: {numba_missing_reason()}")
    paths += [(f"dense (d={args.dense_d}, {Sd} seeds)", Sd * args.dense_T,
               lambda: simulate_exact(gfeats, a, np.zeros((n, K)), method="grpo", eta=eta,
                                      T=args.dense_T, seeds=range(Sd), path="dense",
                                      theta0=np.zeros(args.dense_d), record_every=args.dense_T)),
              (f"sampled (G=8, {S} seeds)", S * n * Ts,
               lambda: simulate_sampled(feats, a, z0, normalizer="group_std", eta=1.0, T=Ts,
                                        G=8, seeds=range(S), record_every=Ts))]

    walls = np.empty((args.repeats, len(paths)))
    cpus = np.empty_like(walls)
    for r in range(args.repeats):
        for j, (_, _, fn) in enumerate(paths):
            walls[r, j], cpus[r, j] = timed(fn)
    counts = np.array([c for _, c, _ in paths], dtype=float)
    rates = counts / walls  # (repeats, paths)
    ratios = rates / rates[:, :1]  # each round against its own plain loop
    cpu_all = counts / cpus
    cpu_ratios = cpu_all / cpu_all[:, :1]
    cpu_rates = np.median(cpu_all, axis=0)
    print(f"{'path':28s} {'updates':>9s} {'wall s':>7s} {'updates/s (min-max)':>21s} "
          f"{'vs plain (min-max)':>18s} {'per CPU-s':>9s} {'CPU vs plain':>17s}")
    for j, (name, count, _) in enumerate(paths):
        print(f"{name:28s} {count:9d} {np.median(walls[:, j]):7.3f} "
              f"{rates[:, j].min():9.3e}-{rates[:, j].max():9.3e} "
              f"{ratios[:, j].min():7.1f}x-{ratios[:, j].max():7.1f}x {cpu_rates[j]:9.3e} "
              f"{cpu_ratios[:, j].min():7.1f}x-{cpu_ratios[:, j].max():7.1f}x")


if __name__ == "__main__":
    main()
