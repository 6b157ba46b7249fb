"""Compiled kernel (numba) of the exact schedule's local-time chains, Eq. 5/6 in logit space.

For every (seed, question) chain the kernel gives pi*, sqrt(v) and optionally ||grad J||^2
after k = 0, 1, ... of the question's own exact updates (docs/theory.md §1.2-1.3: under
Assumption 2 a step on question i moves only z_i, by eta G_i g); each chain runs only the steps
its seed needs. Two front ends:
    `chain_tables`  what `simulate._local_tables` (the NumPy reference) returns: (S', n, k)
                    tables (the shared-z0 path, and the tests' reference check);
    `seed_records`  the per-seed path in one pass: chains written packed (no padded tables),
                    then read back per step into what `simulate_exact` reports.

Chains run in blocks of `BLOCK`, side by side: logit j of the block's chain b is zb[j, b], so
every loop runs over chains (the vector lanes) and the per-chain reductions over j, the
divisions and square roots are vector work. Chains of similar length share a block. With a
diagonal Gram, once z_0 is a chain's largest logit it stays so (the step raises z_0 and lowers
the rest), so the update and the next step's exp run in one pass over the logits.

It is a transcription of the reference with the correct answer at index 0
(`simulate._correct_first`):
    e = exp(z - max z), rest = sum_{k>=1} e_k, s = e_0 + rest,
    pi* = e_0 / s, 1 - pi* = rest / s, u = e_a - p (u_0 = 1 - pi*),
    coef = pi* (REINFORCE, Eq. 5) or sqrt(pi* / (1 - pi*)), 0 where 1 - pi* = 0 (GRPO, Eq. 6),
    z += G (eta coef u).
Some steps differ by rounding only (about 1 ulp each, so not bit-identical): exp is a
vectorizable Cody-Waite/Taylor evaluation (libm's exp where some z_k - max z < -708, so
subnormal weights and q_a = 0 stay exact), the sums run in the order j = 1, 2, ... (NumPy's is
pairwise), u = e * (-1/s) multiplies by a reciprocal, products may fuse (FMA), and the diagonal
step is G_j (e_j (eta coef (-1/s))). tests/test_bandit_kernels.py checks the tables and
`simulate_exact` against the reference (rtol 1e-12).

numba is optional: `numba_available()` says whether it imports; `require_numba()` raises an
ImportError with the install hint. Everything is float64, single-threaded; compiled once per
machine (cache=True).
"""

from __future__ import annotations

import numpy as np

try:
    import numba
    from numba import njit
    from numba.core import types as _nbtypes
    from numba.extending import intrinsic

    _IMPORT_ERROR: Exception | None = None
except ImportError as exc:  # the NumPy reference path still runs
    numba = None
    _IMPORT_ERROR = exc

INSTALL_HINT = "pip install 'numba>=0.68'"


def numba_available() -> bool:
    """Whether numba imports (then `chain_tables` runs compiled)."""
    return _IMPORT_ERROR is None


def numba_missing_reason() -> str | None:
    """Why numba is unavailable (the import error), or None when it imports."""
    return None if _IMPORT_ERROR is None else f"{type(_IMPORT_ERROR).__name__}: {_IMPORT_ERROR}"


def require_numba() -> None:
    """Raise ImportError (with the install hint) when numba does not import."""
    if _IMPORT_ERROR is not None:
        raise ImportError(f"the numba path needs numba ({numba_missing_reason()}); "
                          f"install it with {INSTALL_HINT}") from _IMPORT_ERROR


# exp(x) = 2^k exp(r), k = round(x / ln 2), r = x - k ln 2 (ln 2 in two parts, fdlibm's split:
# k * LN2_HI is exact for |k| < 2^11), exp(r) by Taylor to r^13 (|r| <= ln2/2: truncation
# < 1e-17 relative). Valid for x in [-708, 0]; the kernel checks the range per step.
_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_SHIFT = 6755399441055744.0  # 1.5 * 2^52: (y + SHIFT) - SHIFT rounds y to an integer
_EXP_FLOOR = -708.0
_INV_FACT = tuple(1.0 / float(np.prod(np.arange(1, j + 1))) for j in range(14))  # 1/j!

if numba is not None:

    @intrinsic
    def _bits_to_float(typingctx, bits):
        """Reinterpret an int64's bits as a float64 (free: one LLVM bitcast)."""
        if not isinstance(bits, _nbtypes.Integer):
            return None

        def codegen(context, builder, sig, args):
            return builder.bitcast(args[0], context.get_value_type(sig.return_type))

        return _nbtypes.float64(_nbtypes.int64), codegen

    C2, C3, C4, C5, C6, C7, C8, C9, C10, C11, C12, C13 = _INV_FACT[2:]

    @njit(cache=True, error_model="numpy", fastmath={"contract"}, inline="always")
    def _exp_fast(x):
        """exp(x) for x in [-708, 0] (FMA allowed); inlined into loops that vectorize."""
        kf = (x * _LOG2E + _SHIFT) - _SHIFT
        r = (x - kf * _LN2_HI) - kf * _LN2_LO
        p = C13
        for c in (C12, C11, C10, C9, C8, C7, C6, C5, C4, C3, C2):
            p = p * r + c
        p = (p * r + 1.0) * r + 1.0
        return p * _bits_to_float((np.int64(kf) + 1023) << 52)

    @njit(cache=True, error_model="numpy", fastmath={"contract"})
    def _exp_shifted(z, m, e):
        """e = exp(z - m) for z - m in [-708, 0]; vectorizes (no calls; FMA allowed)."""
        for j in range(z.shape[0]):
            e[j] = _exp_fast(z[j] - m)

    @njit(cache=True, error_model="numpy", fastmath={"contract"})
    def _blocks(z0, gdiag, gfull, grpo, eta, nsteps, order, bmax, track_grad, records, row,
                pi, sqv, g2, rec):
        """Run chain c = order[...] of z0 (C, K) for nsteps[c] updates, bmax chains at a time.

        A block holds its chains side by side, logit j of chain b at zb[j, b]: every loop runs
        over the block's chains (the vector lanes), so the exp, the per-chain reductions over
        j (max, min, sum: each lane its own, in the order j = 1, 2, ...), the divisions and
        square roots are vector work with no remainder per chain. Chains are sorted by step
        count, so a block runs max(nsteps) steps and its shorter chains' extra steps are few
        (their results are not written).

        The Gram is gdiag (n, K) (its diagonal) when gfull is empty, else gfull (n, K, K);
        chain c is question c % n. Output:
            records False: pi, sqv, g2 (C, kmax+1) tables, entry [c, k] after k updates.
            records True: the same, packed: rec[row[c] + k] = (pi*, sqrt(v)[, ||grad||^2])
                for k = 0..nsteps[c] (rows of a chain consecutive, no padding).
        """
        C, K = z0.shape
        diag = gfull.shape[0] == 0
        ng = gdiag.shape[0] if diag else gfull.shape[0]
        zb = np.empty((K, bmax))
        eb = np.empty((K, bmax))
        gb = np.empty((K, bmax)) if diag else np.empty((0, bmax))
        Gb = np.empty((0, 0, bmax)) if diag else np.empty((K, K, bmax))
        ub = np.empty((0, bmax)) if diag else np.empty((K, bmax))
        m = np.empty(bmax)
        lo = np.empty(bmax)
        rest = np.empty(bmax)
        pa = np.empty(bmax)
        qa = np.empty(bmax)
        sq = np.empty(bmax)
        ninv = np.empty(bmax)
        ec = np.empty(bmax)
        w = np.empty(bmax)
        quad = np.zeros(bmax)
        acc = np.empty(bmax)
        ch = np.empty(bmax, np.int64)
        ns = np.empty(bmax, np.int64)
        for start in range(0, C, bmax):
            B = min(bmax, C - start)
            kg = 0
            for b in range(B):
                c = order[start + b]
                ch[b] = c
                ns[b] = nsteps[c]
                kg = max(kg, ns[b])
                gi = c % ng
                for j in range(K):
                    zb[j, b] = z0[c, j]
                if diag:
                    for j in range(K):
                        gb[j, b] = gdiag[gi, j]
                else:
                    for j in range(K):
                        for i in range(K):
                            Gb[j, i, b] = gfull[gi, j, i]
            for b in range(B):
                m[b] = zb[0, b]
                lo[b] = zb[0, b]
            for j in range(1, K):
                for b in range(B):
                    v = zb[j, b]
                    m[b] = v if v > m[b] else m[b]
                    lo[b] = v if v < lo[b] else lo[b]
            # A diagonal G >= 0 moves z_0 up and the other logits down, so once z_0 is the
            # largest logit the new max z is the new z_0, known before the update: then the
            # update and the next step's exp share one pass (same operations, same results).
            nonneg = diag
            if diag:
                for j in range(K):
                    for b in range(B):
                        nonneg &= gb[j, b] >= 0.0
            fresh = False  # eb and rest already hold the current step's weights
            for k in range(kg + 1):
                if not fresh:
                    # e = exp(z - max z); rest = sum of the wrong weights, j = 1, 2, ...
                    for b in range(B):
                        rest[b] = 0.0
                    for b in range(B):
                        eb[0, b] = _exp_fast(zb[0, b] - m[b])
                    for j in range(1, K):
                        for b in range(B):
                            e = _exp_fast(zb[j, b] - m[b])
                            eb[j, b] = e
                            rest[b] += e
                for b in range(B):  # subnormal or zero weights: libm's exp, exactly
                    if lo[b] - m[b] < _EXP_FLOOR:
                        r = 0.0
                        for j in range(K):
                            e = np.exp(zb[j, b] - m[b])
                            eb[j, b] = e
                            if j > 0:
                                r += e
                        rest[b] = r
                for b in range(B):
                    s = eb[0, b] + rest[b]
                    p = eb[0, b] / s
                    q = rest[b] / s  # 1 - pi*, no cancellation
                    pa[b] = p
                    qa[b] = q
                    sq[b] = np.sqrt(p * q)
                    ninv[b] = -1.0 / s
                    if grpo:  # zero where 1 - pi* underflowed (then u = 0 too)
                        cf = np.sqrt(p / q) if q > 0 else 0.0
                    else:
                        cf = p
                    ec[b] = eta * cf
                if not diag:  # u = e_a - p: u_0 = 1 - pi*, u_j = -e_j / s
                    for b in range(B):
                        ub[0, b] = qa[b]
                    for j in range(1, K):
                        for b in range(B):
                            ub[j, b] = eb[j, b] * ninv[b]
                if track_grad:  # ||X^T grad||^2 = pa^2 u^T G u
                    if diag:
                        for b in range(B):
                            quad[b] = qa[b] * (gb[0, b] * qa[b])
                        for j in range(1, K):
                            for b in range(B):
                                u = eb[j, b] * ninv[b]
                                quad[b] += u * (gb[j, b] * u)
                    else:
                        for b in range(B):
                            quad[b] = 0.0
                        for j in range(K):
                            for b in range(B):
                                acc[b] = 0.0
                            for i in range(K):
                                for b in range(B):
                                    acc[b] += Gb[j, i, b] * ub[i, b]
                            for b in range(B):
                                quad[b] += ub[j, b] * acc[b]
                for b in range(B):
                    nb = ns[b]
                    if k > nb:
                        continue
                    c = ch[b]
                    if records:
                        r = row[c] + k
                        rec[r, 0] = pa[b]
                        rec[r, 1] = sq[b]
                        if track_grad:
                            rec[r, 2] = pa[b] * pa[b] * quad[b]
                    else:
                        pi[c, k] = pa[b]
                        sqv[c, k] = sq[b]
                        if track_grad:
                            g2[c, k] = pa[b] * pa[b] * quad[b]
                if k == kg:
                    break
                # z += G (eta coef u), with max z and min z of the new z
                fresh = nonneg
                if nonneg:
                    for b in range(B):
                        fresh &= m[b] == zb[0, b]
                if fresh:  # max z = the new z_0; the new weights in the same pass
                    for b in range(B):
                        v = zb[0, b] + gb[0, b] * (ec[b] * qa[b])
                        zb[0, b] = v
                        m[b] = v
                        lo[b] = v
                        w[b] = ec[b] * ninv[b]
                        rest[b] = 0.0
                        eb[0, b] = _exp_fast(v - v)
                    for j in range(1, K):
                        for b in range(B):
                            v = zb[j, b] + gb[j, b] * (eb[j, b] * w[b])
                            zb[j, b] = v
                            lo[b] = v if v < lo[b] else lo[b]
                            e = _exp_fast(v - m[b])
                            eb[j, b] = e
                            rest[b] += e
                elif diag:
                    for b in range(B):
                        v = zb[0, b] + gb[0, b] * (ec[b] * qa[b])
                        zb[0, b] = v
                        m[b] = v
                        lo[b] = v
                        w[b] = ec[b] * ninv[b]
                    for j in range(1, K):
                        for b in range(B):
                            v = zb[j, b] + gb[j, b] * (eb[j, b] * w[b])
                            zb[j, b] = v
                            m[b] = v if v > m[b] else m[b]
                            lo[b] = v if v < lo[b] else lo[b]
                else:
                    for i in range(K):
                        for b in range(B):
                            ub[i, b] = ec[b] * ub[i, b]  # the step, eta coef u
                    for j in range(K):
                        for b in range(B):
                            acc[b] = 0.0
                        for i in range(K):
                            for b in range(B):
                                acc[b] += Gb[j, i, b] * ub[i, b]
                        for b in range(B):
                            zb[j, b] = zb[j, b] + acc[b]
                    for b in range(B):
                        m[b] = zb[0, b]
                        lo[b] = zb[0, b]
                    for j in range(1, K):
                        for b in range(B):
                            v = zb[j, b]
                            m[b] = v if v > m[b] else m[b]
                            lo[b] = v if v < lo[b] else lo[b]

    @njit(cache=True)
    def _group_times(seqs, n, at):
        """Counting sort of each seed's draws by question. Question i of seed s runs
        counts[s, i] updates; its packed rows (one more than its updates, in a per-seed
        buffer) are row[s, i] + k, k = 0..counts[s, i], and at step t seed s reads question
        seqs[s, t]'s row at[s, t] (before the update; after it: at[s, t] + 1); `at` (S, T)
        is filled here."""
        S, T = seqs.shape
        counts = np.zeros((S, n), np.int64)
        for s in range(S):
            for t in range(T):
                counts[s, seqs[s, t]] += 1
        row = np.empty((S, n), np.int64)
        for s in range(S):
            r = 0
            for i in range(n):
                row[s, i] = r
                r += counts[s, i] + 1
        fill = row.copy()
        for s in range(S):
            for t in range(T):
                i = seqs[s, t]
                at[s, t] = fill[s, i]
                fill[s, i] += 1
        return counts, row

    @njit(cache=True)
    def _gather_steps(rec, row, at, counts, track_grad, sel_pi, sel_sqv, sel_g2, final_pi,
                      pisum):
        """One seed's per-step values from its packed chains (see `seed_records`); returns
        the sum over steps t < T of sum_i sqrt(v_i)."""
        T = at.shape[0]
        n = counts.shape[0]
        p0 = 0.0
        v0 = 0.0
        for i in range(n):
            r = row[i]
            p0 += rec[r, 0]
            v0 += rec[r, 1]
            final_pi[i] = rec[r + counts[i], 0]
        pisum[0] = p0
        dp = 0.0  # the running sums of the changes, in np.cumsum's order
        dv = 0.0
        vs = v0  # sum_i sqrt(v_i) at step t; summed over t in blocks of 128 (~pairwise)
        acc = 0.0
        part = np.empty((T + 127) // 128)
        for t in range(T):
            r = at[t]
            p, v = rec[r, 0], rec[r, 1]
            sel_pi[t] = p
            sel_sqv[t] = v
            if track_grad:
                sel_g2[t] = rec[r, 2]
            dp += rec[r + 1, 0] - p
            pisum[t + 1] = p0 + dp
            acc += vs
            if t % 128 == 127 or t == T - 1:
                part[t // 128] = acc
                acc = 0.0
            dv += rec[r + 1, 1] - v
            vs = v0 + dv
        return part.sum()


#: Chains per block of the compiled kernel (diagonal Gram; a full Gram uses fewer, its block
#: copy is K^2 per chain).
BLOCK = 128


def _block_size(K: int, diag: bool, block: int | None) -> int:
    if block is not None:
        return max(1, int(block))
    return BLOCK if diag else max(8, min(BLOCK, (1 << 18) // (K * K)))


def _kernel_inputs(z, gram, diag):
    Sp, n, K = z.shape
    if gram.shape[:2] != (n, K) or gram.ndim != (2 if diag else 3):
        raise ValueError(f"z {z.shape} and gram {gram.shape} (diag={diag}) do not match")
    flat = np.ascontiguousarray(z, dtype=np.float64).reshape(Sp * n, K)  # (S' n, K)
    gram = np.ascontiguousarray(gram, dtype=np.float64)
    gdiag, gfull = (gram, np.empty((0, K, K))) if diag else (np.empty((0, K)), gram)
    return flat, gdiag, gfull


def chain_tables(z: np.ndarray, gram: np.ndarray, diag: bool, method: str, eta: float,
                 nsteps: np.ndarray, track_grad: bool, block: int | None = None):
    """Compiled twin of `simulate._local_tables` (its inputs after `_correct_first`).

    Args:
        z: (S', n, K) initial logits, correct answer at index 0.
        gram: (n, K) diagonal or (n, K, K) full Gram, reordered the same way.
        diag: whether gram is the diagonal. method: "reinforce" or "grpo". eta: step size.
        nsteps: (S', n) updates to run per chain (entries past them are NaN).
        track_grad: also fill the ||grad J||^2 table.
        block: chains per block (default `BLOCK`; results do not depend on it).

    Returns:
        pi (S', n, kmax+1), sqrtv (S', n, kmax+1), grad2 (S', n, kmax+1) or None,
        kmax = nsteps.max().
    """
    require_numba()
    Sp, n, K = z.shape
    nsteps = np.asarray(nsteps)
    if nsteps.shape != (Sp, n) or gram.shape[:2] != (n, K) or gram.ndim != (2 if diag else 3):
        raise ValueError(f"chain_tables: z {z.shape}, gram {gram.shape} (diag={diag}) and "
                         f"nsteps {nsteps.shape} do not match")  # the kernel does not bounds-check
    if nsteps.size and nsteps.min() < 0:
        raise ValueError("chain_tables: nsteps must be >= 0")
    kmax = int(nsteps.max())
    flat, gdiag, gfull = _kernel_inputs(z, gram, diag)
    shape = (Sp * n, kmax + 1)
    pi = np.full(shape, np.nan)
    sqv = np.full(shape, np.nan)
    g2 = np.full(shape, np.nan) if track_grad else np.empty((0, 0))
    ns = np.ascontiguousarray(nsteps, dtype=np.int64).reshape(-1)
    order = np.argsort(ns, kind="stable")  # similar lengths share a block
    _blocks(flat, gdiag, gfull, method == "grpo", float(eta), ns, order,
            _block_size(K, diag, block), bool(track_grad), False, np.empty(0, np.int64),
            pi, sqv, g2, np.empty((0, 0)))
    out = (pi.reshape(Sp, n, kmax + 1), sqv.reshape(Sp, n, kmax + 1))
    return out + ((g2.reshape(Sp, n, kmax + 1) if track_grad else None),)


def seed_records(z: np.ndarray, gram: np.ndarray, diag: bool, method: str, eta: float,
                 seqs: np.ndarray, track_grad: bool, block: int | None = None):
    """The exact schedule's per-seed path, compiled, seed by seed: every question's chain runs
    as many updates as the seed draws it, into packed rows of one buffer (no (seed, question, k)
    tables; reused, so it stays in cache), then each step reads its chain's rows.

    Args:
        z: (S, n, K) initial logits per seed, correct answer at index 0 (`_correct_first`).
        gram, diag, method, eta, track_grad, block: as in `chain_tables`.
        seqs: (S, T) questions drawn (`simulate.selection_sequence`), integers in [0, n).

    Returns:
        sel_pi, sel_sqrtv (S, T): the drawn question's pi* and sqrt(v) before the update;
        sel_grad2 (S, T) its ||grad J||^2 (None without track_grad);
        final_pi (S, n): pi* after T steps;
        pisum (S, T+1): sum_i pi*_i after t steps, as the sum at step 0 plus the running sum
            (np.cumsum's order) of the changes;
        vtot (S,): sum over steps t = 0..T-1 of sum_i sqrt(v_i), the latter the same way.
    """
    require_numba()
    S, n, K = z.shape
    seqs = np.ascontiguousarray(seqs, dtype=np.int64)
    if seqs.ndim != 2 or seqs.shape[0] != S:
        raise ValueError(f"seed_records: z {z.shape} and seqs {seqs.shape} do not match")
    if seqs.size and (seqs.min() < 0 or seqs.max() >= n):
        raise ValueError(f"seed_records: seqs must hold questions in [0, {n})")
    T = seqs.shape[1]
    flat, gdiag, gfull = _kernel_inputs(z, gram, diag)
    at = np.empty((S, T), np.int32 if T + n < 2**31 else np.int64)  # rows read per step
    counts, row = _group_times(seqs, n, at)
    order = np.argsort(counts, axis=1, kind="stable")  # similar lengths share a block
    bsize = _block_size(K, diag, block)
    rec = np.empty((T + n, 3 if track_grad else 2))  # one seed's chains, reused (stays cached)
    sel_pi, sel_sqv = np.empty((S, T)), np.empty((S, T))
    sel_g2 = np.empty((S, T)) if track_grad else np.empty((S, 0))
    final_pi, pisum, vtot = np.empty((S, n)), np.empty((S, T + 1)), np.empty(S)
    none_f = np.empty((0, 0))
    for s in range(S):
        _blocks(flat[s * n:(s + 1) * n], gdiag, gfull, method == "grpo", float(eta), counts[s],
                order[s], bsize, bool(track_grad), True, row[s], none_f, none_f, none_f, rec)
        vtot[s] = _gather_steps(rec, row[s], at[s], counts[s], bool(track_grad), sel_pi[s],
                                sel_sqv[s], sel_g2[s], final_pi[s], pisum[s])
    return sel_pi, sel_sqv, (sel_g2 if track_grad else None), final_pi, pisum, vtot
