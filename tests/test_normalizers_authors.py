"""Every registered normalizer against its source: the authors' (or the named peer's) code,
transliterated here in NumPy, group by group the way it reads, never by calling grponorm.

Each reference cites its source file and function. The batches cover binary and continuous
rewards, G = 2 and G = 8, each with a flat group (a value whose mean is exact, so the source
gives exactly 0 where it does). Where grponorm's default deliberately differs from the source, the
test passes the option that reproduces the source (``SOURCE_OPTIONS``) and a second test shows the
listed difference is real. JSPO (``shrinkage``), MaxRL (``max_rl``) and KRPO (``krpo``) are also
compared on random batches and have numbers worked out by hand.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict

import numpy as np
import pytest
from scipy.special import gammaln, xlogy

from grponorm.normalizers import (
    NormalizerContext,
    available_normalizers,
    make_state,
    normalize,
    normalize_ragged,
)

EPS6 = 1e-6

# ------------------------------------------------------------------------------------------
# Batches: (n_groups, G) rewards with flat groups, plus lengths and reward components
# ------------------------------------------------------------------------------------------


def make_batch(kind: str, g: int, seed: int = 0, n: int = 6) -> np.ndarray:
    """Binary or continuous rewards in [0, 1]; the last group is flat (all 0.75 or all 1),
    binary batches also have an all-0 group and a group with one success; row 0 has spread."""
    rng = np.random.default_rng(seed + 100 * g + (0 if kind == "binary" else 7))
    if kind == "binary":
        r = (rng.random((n, g)) < 0.5).astype(np.float64)
        r[0, 0], r[0, 1] = 1.0, 0.0
        r[1] = 0.0
        r[1, -1] = 1.0  # exactly one success (the only group grpo_passk moves)
        r[-2] = 0.0
        r[-1] = 1.0
    else:
        r = rng.random((n, g))
        r[-1] = 0.75  # flat; the mean of any number of 0.75 is exact
    return r


CASES = [("binary", 2), ("binary", 8), ("continuous", 2), ("continuous", 8)]


def lengths_for(r: np.ndarray, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 10, size=r.shape).astype(np.float64)


def components_for(r: np.ndarray, seed: int = 2) -> np.ndarray:
    """(n, G, 2): the rewards and a second component (flat where the rewards are flat)."""
    other = np.random.default_rng(seed).integers(0, 3, size=r.shape) / 2.0
    other[-1] = 0.5
    return np.stack([r, other], axis=-1)


# ------------------------------------------------------------------------------------------
# References: the sources, transliterated (float64)
# ------------------------------------------------------------------------------------------


def _groups(r):
    return [row.copy() for row in r]


def ref_verl_grpo(r, eps=1e-6, norm_by_std=True):
    """verl/trainer/ppo/core_algos.py::compute_grpo_outcome_advantage (verl 0.9.1)."""
    out = []
    for s in _groups(r):
        if s.size == 1:
            mean, std = 0.0, 1.0
        else:
            mean, std = s.mean(), s.std(ddof=1)  # torch.mean, torch.std (Bessel)
        out.append((s - mean) / (std + eps) if norm_by_std else s - mean)
    return np.array(out)


def ref_trl_batch(r, eps=1e-4):
    """trl/trainer/grpo_trainer.py, scale_rewards="batch": group mean, batch std + 1e-4."""
    mean_grouped = r.mean(axis=1, keepdims=True)
    std = r.std(ddof=1) if r.size > 1 else 0.0
    return (r - mean_grouped) / (std + eps)


def ref_verl_rloo(r):
    """verl/trainer/ppo/core_algos.py::compute_rloo_outcome_advantage."""
    out = []
    for s in _groups(r):
        n = s.size
        if n > 1:
            mean = s.mean()
            s = s * n / (n - 1) - mean * n / (n - 1)
        out.append(s)
    return np.array(out)


def ref_bernoulli_std(r):
    """docs/theory.md Eq. (6): (r - p) / sqrt(p (1 - p)), p = k/G; 0 where p is 0 or 1."""
    out = []
    for s in _groups(r):
        p = s.sum() / s.size
        out.append(np.zeros_like(s) if p in (0.0, 1.0) else (s - p) / math.sqrt(p * (1 - p)))
    return np.array(out)


def ref_bernoulli_smoothed(r, alpha=1.0):
    """grponorm's research extension: (r - k/G) / sqrt(p~ (1 - p~)), p~ = (k + a)/(G + 2a)."""
    out = []
    for s in _groups(r):
        k, g = s.sum(), s.size
        pt = (k + alpha) / (g + 2 * alpha)
        out.append((s - k / g) / math.sqrt(pt * (1 - pt)))
    return np.array(out)


def ref_bnpo(r, min_value=0.0, max_value=1.0):
    """github.com/changyi7231/BNPO recipe/bnpo/src/bnpo_ray_trainer.py::
    compute_bnpo_outcome_advantage (torch's Beta.log_prob = xlogy(a-1, p) + xlogy(b-1, 1-p)
    - log B(a, b))."""
    scores = (r - min_value) / (max_value - min_value)
    id2mean = [0.0 if s.size == 1 else s.mean() for s in scores]
    all_p = np.array(id2mean)
    p_mean = all_p.mean() if all_p.size > 1 else 0.0
    p_var = all_p.var(ddof=1) if all_p.size > 1 else 1.0
    a = (p_mean * (1 - p_mean) / p_var - 1) * p_mean
    b = (p_mean * (1 - p_mean) / p_var - 1) * (1 - p_mean)
    alpha, beta = max(1 + a / 3, 1.0), max(1 + b / 3, 1.0)
    log_b = gammaln(alpha) + gammaln(beta) - gammaln(alpha + beta)
    out = np.empty_like(scores)
    for i, s in enumerate(scores):
        p = id2mean[i]
        with np.errstate(divide="ignore"):
            weight = np.exp(xlogy(alpha - 1, p) + xlogy(beta - 1, 1 - p) - log_b)
            weight = min(max(1 / weight, 0.0), 1e6)
        out[i] = weight * (s - p)
    return out


def ref_mapo(r, eps=1e-6):
    """github.com/ARGROB2023/MAPO code/verl/trainer/ray_trainer.py, GRPOMIXPRO: the z-score of
    compute_grpo_outcome_advantage weighted 4p(1-p), the mean term of
    compute_grpo_mean_outcome_advantage weighted 1 - 4p(1-p); p = #(r == 1)/rollout.n."""
    out = []
    for s in _groups(r):
        assert s.size > 1
        mean, std = s.mean(), s.std(ddof=1)
        a_std = (s - mean) / (std + eps)
        a_mean = (s - mean) / (mean + eps)
        ratio = np.sum(s == 1.0) / s.size
        w = 4 * ratio * (1 - ratio)
        out.append(a_std * w + a_mean * (1 - w))
    return np.array(out)


def ref_verl_gpg(r, f_norm=1.0):
    """verl/trainer/ppo/core_algos.py::compute_gpg_outcome_advantage."""
    alpha = r.size / max(np.count_nonzero(r), 1)
    out = []
    for s in _groups(r):
        mean = 0.0 if s.size == 1 else s.mean()
        out.append(alpha * (s - mean) / f_norm)
    return np.array(out)


def ref_verl_passk(r, eps=1e-6):
    """verl/trainer/ppo/core_algos.py::compute_grpo_passk_outcome_advantage."""
    out = np.zeros_like(r)
    for i, s in enumerate(r):
        order = np.argsort(-s, kind="stable")  # a tie has gap 0: which index cannot matter
        out[i, order[0]] = (s[order[0]] - s[order[1]]) / (s.std(ddof=1) + eps)
    return out


def ref_nemo_loo(r):
    """NeMo-RL nemo_rl/algorithms/utils.py::calculate_baseline_and_std_per_prompt
    (leave_one_out_baseline=True) + advantage_estimator.py::GRPOAdvantageEstimator
    (normalize_rewards=True: divide by std + 1e-6 where std > 0)."""
    out = []
    for s in _groups(r):
        if s.size <= 1:
            out.append(np.zeros_like(s))  # baseline = reward
            continue
        num_valid = np.float64(s.size - 1)  # a tensor in NeMo-RL: 1/0 is inf, not an error
        mask = 1 - np.eye(s.size)
        base = mask @ s / num_valid
        sq = mask @ (s * s) / num_valid
        with np.errstate(divide="ignore", invalid="ignore"):
            std = np.nan_to_num(np.sqrt((sq - base * base) * (num_valid / (num_valid - 1))))
        adv = s - base
        adv = np.where(std > 0, adv / (std + 1e-6), adv)
        out.append(adv)
    return np.array(out)


def _verl_masked_whiten(values, mask):
    """verl/utils/torch_functional.py::masked_whiten (masked_mean divides by sum + 1e-8)."""
    mean = (values * mask).sum() / (mask.sum() + 1e-8)
    var = ((values - mean) ** 2 * mask).sum() / (mask.sum() + 1e-8)
    var = var * mask.sum() / (mask.sum() - 1)
    return (values - mean) / np.sqrt(var + 1e-8)


def _tokens(values, lengths):
    """(bs,) values -> (bs, T) token values and mask, row i valid on its first lengths[i]."""
    t = int(lengths.max())
    mask = (np.arange(t)[None, :] < lengths.reshape(-1)[:, None]).astype(np.float64)
    return np.repeat(values.reshape(-1, 1), t, axis=1), mask


def ref_verl_rpp_baseline(r, lengths):
    """verl/trainer/ppo/core_algos.py::compute_reinforce_plus_plus_baseline_outcome_advantage:
    group-mean baseline, then masked_whiten over the response tokens."""
    c = np.array([s - (0.0 if s.size == 1 else s.mean()) for s in _groups(r)])
    values, mask = _tokens(c, lengths)
    white = _verl_masked_whiten(values, mask) * mask
    return white[:, 0].reshape(r.shape)


def ref_roll_batch(r):
    """ROLL roll/utils/functionals.py::reward_norm, norm_mean_type=norm_std_type="batch"."""
    return (r - r.mean()) / (r.std(ddof=1) + 1e-6)


def ref_maxrl_authors(r, eps=1e-6):
    """github.com/Zanette-Labs/MaxRL verl/trainer/ppo/core_algos.py (commit 76e04d1) ::
    compute_p_normalization_outcome_advantage, lines 393-442, row by row."""
    scores = r.reshape(-1).copy()
    index = np.repeat(np.arange(r.shape[0]), r.shape[1])
    id2score = defaultdict(list)
    for i in range(scores.size):
        id2score[index[i]].append(scores[i])
    n_resp = len(id2score[index[0]])  # N: responses per prompt (the first row's group)
    id2mean = {k: 0.0 if len(v) == 1 else float(np.mean(v)) for k, v in id2score.items()}
    for i in range(scores.size):
        if id2mean[index[i]] == 0.0:
            scores[i] = 0.0
        else:
            scores[i] = (scores[i] - id2mean[index[i]]) / (id2mean[index[i]] + eps)
    return (scores / n_resp).reshape(r.shape)


def ref_prime_rl_maxrl(r):
    """prime-rl src/prime_rl/orchestrator/algo/max_rl.py::MaxRLAlgorithm.score_group."""
    out = []
    for s in _groups(r):
        mean = s.mean()
        out.append(np.zeros_like(s) if mean <= 0 else (s - mean) / mean)
    return np.array(out)


def ref_verl_opo(r, lengths):
    """verl/trainer/ppo/core_algos.py::compute_opo_outcome_advantage."""
    out = []
    for s, w in zip(_groups(r), lengths):
        bsl = 0.0 if s.size == 1 else (w * s).sum() / w.sum()
        out.append(s - bsl)
    return np.array(out)


def ref_jspo(r, epsilon=1e-6):
    """github.com/guanning03/JSPO-Official code/verl/trainer/ppo/core_algos.py (commit
    3f8539d) :: compute_jspo_outcome_advantage, lines 582-706, loop for loop (torch -> NumPy;
    torch.var(unbiased=True) -> var(ddof=1); the mean of an empty set is NaN in both)."""
    scores = r.reshape(-1)
    bsz = scores.size
    n = r.shape[0]
    m = bsz // n
    assert m >= 2
    P = scores.reshape(n, m)
    js_lambda = np.zeros(bsz)
    for i in range(bsz):
        prompt_idx = i // m
        other = np.ones((n, m), dtype=bool)
        other[prompt_idx, :] = False
        other_samples = P[other]
        if other_samples.size == 0:
            prompt_mean = P.mean(axis=1)
            batch_mean = P.mean()
            prompt_var = P.var(axis=1, ddof=1) / m
            v_square = prompt_var.mean()
            s_square = ((prompt_mean - batch_mean) ** 2).mean()
        else:
            means = np.array([P[p].mean() for p in range(n) if p != prompt_idx])
            variances = np.array([P[p].var(ddof=1) / m for p in range(n) if p != prompt_idx])
            batch_mean = means.mean()
            v_square = variances.mean()
            s_square = ((means - batch_mean) ** 2).mean()
        js_lambda[i] = v_square / (v_square + s_square + epsilon)
    rloo_baseline = (P.sum(axis=1, keepdims=True) - P) / (m - 1)
    lam = js_lambda.reshape(n, m)
    batch_mean_per_sample = np.zeros(bsz)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # mean of an empty set (one prompt)
        for i in range(bsz):
            other = np.ones((n, m), dtype=bool)
            other[i // m, :] = False
            batch_mean_per_sample[i] = P[other].mean()
    js_baseline = rloo_baseline * (1 - lam) + batch_mean_per_sample.reshape(n, m) * lam
    return (scores - js_baseline.reshape(-1)).reshape(n, m)


def ref_james_stein(r, ddof=1):
    """Efron & Morris (1973), positive-part James-Stein estimate of the group means toward
    their grand mean, c = max(0, 1 - (n - 3) tau^2 / S); baseline = that estimate."""
    n, g = r.shape
    mu = r.mean(axis=1)
    if g < 2 or n <= 3:
        return r - mu[:, None]
    mu_bar = mu.mean()
    s = ((mu - mu_bar) ** 2).sum()
    tau2 = r.var(axis=1, ddof=ddof).mean() / g
    c = 1.0 if s == 0 else max(0.0, 1 - (n - 3) * tau2 / s)
    return r - (mu_bar + c * (mu - mu_bar))[:, None]


class KalmanFilter:
    """github.com/billhhh/KRPO_LLMs_RL train.py (commit df1ae2b) lines 157-177."""

    def __init__(self, process_var=1e-5, meas_var=1e-2, init_mean=0.0, init_var=1.0):
        self.Q, self.R = process_var, meas_var
        self.x, self.P = init_mean, init_var

    def update(self, z):
        P_pred = self.P + self.Q
        K = P_pred / (P_pred + self.R)
        self.x = self.x + K * (z - self.x)
        self.P = (1 - K) * P_pred
        return self.x, self.P


def group_advantages(returns, process_var=1e-5, meas_var=1e-2, eps=1e-8):
    """train.py lines 180-196: a new filter per call (one call per question, line 352)."""
    kf = KalmanFilter(process_var=process_var, meas_var=meas_var)
    advantages = []
    for r in returns.reshape(-1):
        mean_est, var_est = kf.update(r)
        advantages.append((r - mean_est) / (math.sqrt(var_est) + eps))
    return np.array(advantages).reshape(returns.shape)


def ref_krpo(r):
    return np.array([group_advantages(s) for s in _groups(r)])


class RollRunningMoments:
    """ROLL roll/utils/functionals.py::RunningMoments (count starts at 1e-24, var at 1)."""

    def __init__(self):
        self.mean, self.std, self.var, self.count = 0.0, 1.0, 1.0, 1e-24

    def update(self, xs):
        xs_count = xs.size
        xs_var, xs_mean = xs.var(), xs.mean()  # torch.var_mean(unbiased=False)
        delta = xs_mean - self.mean
        tot_count = self.count + xs_count
        new_sum = xs_var * xs_count
        old_sum = self.var * self.count + delta**2 * self.count * xs_count / tot_count
        self.mean += delta * xs_count / tot_count
        self.var = (old_sum + new_sum) / tot_count
        self.std = math.sqrt(self.var * tot_count / (tot_count - 1))
        self.count = tot_count


def ref_roll_running(batches, mean_type="running"):
    """ROLL reward_norm with norm_std_type="running": update, then (r - mean)/(std + 1e-6)."""
    running = RollRunningMoments()
    out = []
    for r in batches:
        running.update(r.reshape(-1))
        mean = running.mean if mean_type == "running" else r.mean(axis=1, keepdims=True)
        out.append((r - mean) / (running.std + 1e-6))
    return out


def ref_verl_gdpo(components, weights, lengths):
    """verl/trainer/ppo/core_algos.py::compute_gdpo_outcome_advantage: verl's GRPO per component
    (epsilon 1e-6), weighted sum, masked_whiten over the response tokens."""
    acc = sum(w * ref_verl_grpo(components[:, :, k]) for k, w in enumerate(weights))
    values, mask = _tokens(acc, lengths)
    return (_verl_masked_whiten(values, mask) * mask)[:, 0].reshape(acc.shape)


# name -> (reference(r, ctx), grponorm options that reproduce the source, context fields)
REFERENCES = {
    "group_std": (lambda r, c: ref_verl_grpo(r), {}, ()),
    "none": (lambda r, c: ref_verl_grpo(r, norm_by_std=False), {}, ()),
    "batch_std": (lambda r, c: ref_trl_batch(r), {"eps": 1e-4}, ()),
    "rloo": (lambda r, c: ref_verl_rloo(r), {}, ()),
    "bernoulli_std": (lambda r, c: ref_bernoulli_std(r), {}, ()),
    "bernoulli_smoothed": (lambda r, c: ref_bernoulli_smoothed(r), {}, ()),
    "bnpo": (lambda r, c: ref_bnpo(r), {}, ()),
    "mapo": (lambda r, c: ref_mapo(r), {}, ()),
    "gpg": (lambda r, c: ref_verl_gpg(r), {}, ()),
    "grpo_passk": (lambda r, c: ref_verl_passk(r), {}, ()),
    "loo_std": (lambda r, c: ref_nemo_loo(r), {}, ()),
    "reinforce_pp_baseline": (
        lambda r, c: ref_verl_rpp_baseline(r, c.lengths), {"token_weighted": True}, ("lengths",)
    ),
    "batch_zscore": (lambda r, c: ref_roll_batch(r), {}, ()),
    "max_rl": (lambda r, c: ref_maxrl_authors(r), {}, ()),
    "opo": (lambda r, c: ref_verl_opo(r, c.lengths), {}, ("lengths",)),
    "shrinkage": (lambda r, c: ref_jspo(r), {}, ()),
    "james_stein": (lambda r, c: ref_james_stein(r), {}, ()),
    "krpo": (lambda r, c: ref_krpo(r), {}, ()),
    "running_std": (lambda r, c: ref_roll_running([r])[0], {}, ()),
    "gdpo": (
        lambda r, c: ref_verl_gdpo(c.components, [1.0, 1.0], c.lengths),
        {"token_weighted": True},
        ("components", "lengths"),
    ),
    # grponorm's own (normalizers.oracle, docs/theory.md Lemma 2): centred reward / true scale
    "oracle_std": (lambda r, c: ref_oracle(r, np.sqrt(c.pi_star * (1 - c.pi_star))), {},
                   ("pi_star",)),
    "oracle_curvature": (lambda r, c: ref_oracle(r, c.pi_star * (1 - c.pi_star)), {},
                         ("pi_star",)),
    "oracle_hessian": (lambda r, c: ref_oracle(r, c.hessian_norm), {}, ("hessian_norm",)),
}

BINARY_ONLY = {"bernoulli_std", "bernoulli_smoothed"}


def ref_oracle(r, scale):
    """(r - mean_g r) / max(scale, 1e-6), one scale per group, flat groups 0."""
    out = []
    for s, c in zip(_groups(r), scale, strict=True):
        out.append(np.zeros_like(s) if np.all(s == s[0]) else (s - s.mean()) / max(c, 1e-6))
    return np.array(out)


def _context(r):
    n = len(r)
    return NormalizerContext(lengths=lengths_for(r), prompt_ids=[f"p{i}" for i in range(n)],
                             components=components_for(r),
                             pi_star=np.linspace(0.05, 0.95, n),  # (n,)
                             hessian_norm=np.linspace(0.02, 0.3, n))  # (n,)


def _ours(r, name, options, ctx):
    rewards = ctx.components.sum(-1) if name == "gdpo" else r
    state = make_state(name, **options)
    return normalize(rewards, name, context=ctx, state=state, **options)


def test_every_registered_normalizer_has_a_reference():
    assert set(REFERENCES) == set(available_normalizers())


@pytest.mark.parametrize("kind,g", CASES)
@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_matches_its_source(name, kind, g):
    r = make_batch(kind, g)
    if kind == "continuous" and name in BINARY_ONLY:
        with pytest.raises(ValueError, match="binary"):
            normalize(r, name)
        return
    ref, options, _ = REFERENCES[name]
    ctx = _context(r)
    want = ref(r, ctx)
    got = _ours(r, name, options, ctx)
    # verl's masked_mean divides by N + 1e-8: a 1e-8/N relative difference, not reproduced
    rtol = 1e-8 if name in ("reinforce_pp_baseline", "gdpo") else 1e-10
    np.testing.assert_allclose(got, want, rtol=rtol, atol=1e-10, err_msg=name)
    assert np.abs(want).max() > 0, "the batch must move something"


# ------------------------------------------------------------------------------------------
# Where the default differs from the source: the listed difference is real
# ------------------------------------------------------------------------------------------


def test_batch_std_default_eps_differs_from_trl():
    r = make_batch("binary", 8)
    np.testing.assert_allclose(normalize(r, "batch_std"), ref_trl_batch(r, eps=1e-6), rtol=1e-12)
    assert not np.allclose(normalize(r, "batch_std"), ref_trl_batch(r), rtol=1e-6, atol=0)


def test_reinforce_pp_and_gdpo_default_weigh_samples_as_verl_with_one_token_responses():
    r = make_batch("continuous", 8)
    ones = np.ones_like(r)
    np.testing.assert_allclose(normalize(r, "reinforce_pp_baseline"),
                               ref_verl_rpp_baseline(r, ones), rtol=1e-8, atol=1e-10)
    ctx = _context(r)
    comp = ctx.components
    np.testing.assert_allclose(
        normalize(comp.sum(-1), "gdpo", context=NormalizerContext(components=comp)),
        ref_verl_gdpo(comp, [1.0, 1.0], ones), rtol=1e-8, atol=1e-10)
    lengths = ctx.lengths  # unequal lengths: the token-weighted source differs
    assert not np.allclose(normalize(r, "reinforce_pp_baseline"),
                           ref_verl_rpp_baseline(r, lengths), rtol=1e-3)


def test_singletons_get_zero_where_verl_passes_the_score_through():
    r = np.array([[0.7], [0.2], [1.0]])
    for name, ref in [("group_std", ref_verl_grpo), ("none", ref_verl_rloo)]:
        assert (normalize(r, name) == 0).all()
        assert (ref(r) != 0).all(), name  # verl: r / (1 + eps), r
    assert (normalize(r, "gpg") == 0).all() and (ref_verl_gpg(r) != 0).all()


def test_flat_group_residue_verl_leaves_is_exactly_zero_here():
    r = np.array([[0.1] * 7, [1.0, 0, 0, 0, 0, 0, 0]])  # 0.1 * 7: an inexact mean
    assert np.abs(ref_verl_grpo(r)[0]).max() > 1e-12  # (0.1 - mean)/1e-6: a rounding residue
    assert (normalize(r, "group_std")[0] == 0).all()


def test_bnpo_identical_success_rates_where_the_authors_divide_by_zero():
    r = np.array([[1.0, 0, 0, 0], [0, 1, 0, 0]])  # p = 1/4 twice: variance 0
    with np.errstate(all="ignore"):
        assert np.isnan(ref_bnpo(r)).all()
    assert np.isfinite(normalize(r, "bnpo")).all()


def test_mapo_negative_rewards_refused_unless_allowed_then_the_authors_formula():
    r = np.array([[-1.0, 0.0, 0.5, -0.25], [1.0, 0.0, 0.0, 1.0]])
    with pytest.raises(ValueError, match="mapo needs rewards >= 0"):
        normalize(r, "mapo")
    np.testing.assert_allclose(normalize(r, "mapo", allow_negative=True), ref_mapo(r),
                               rtol=1e-12)


def test_loo_std_two_pass_std_where_nemo_rl_divides_by_a_rounding_residue():
    # sample 3's others [0.3, 0.3, 0.3] are exactly equal: no spread, so it is left unscaled;
    # NeMo-RL's E[r^2] - E[r]^2 leaves a rounding residue there and divides by its sqrt + 1e-6
    r = np.array([[0.3, 0.3, 0.3, 0.5]])
    ours = normalize(r, "loo_std")
    np.testing.assert_allclose(ours[0, 3], 0.5 - 0.3, rtol=1e-12)
    assert abs(ref_nemo_loo(r)[0, 3]) > 1e5
    np.testing.assert_allclose(ours[0, :3], ref_nemo_loo(r)[0, :3], rtol=1e-9)


# ------------------------------------------------------------------------------------------
# JSPO (shrinkage): by hand, random batches, edge cases
# ------------------------------------------------------------------------------------------


def test_shrinkage_hand_computed_g2():
    # mu = (1/2, 1, 0); var/G = (1/4, 0, 0).
    # prompt 0: others' means (1, 0): M = 1/2, v2 = 0, s2 = 1/4 -> lam = 0: RLOO, A = (1, -1).
    # prompt 1 (flat 1): others (1/2, 0): M = 1/4, v2 = 1/8, s2 = 1/16 -> lam = .125/.187501;
    #   b = (1 - lam) * 1 + lam / 4, A = 3 lam / 4 = 0.4999973...
    # prompt 2 (flat 0): others (1/2, 1): M = 3/4, same v2, s2 -> A = -3 lam / 4.
    r = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    lam = 0.125 / (0.1875 + 1e-6)
    want = [[1.0, -1.0], [0.75 * lam] * 2, [-0.75 * lam] * 2]
    np.testing.assert_allclose(normalize(r, "shrinkage"), want, rtol=1e-13)
    assert 0.75 * lam == pytest.approx(0.4999973333, rel=1e-9)


def test_shrinkage_hand_computed_g8_two_prompts():
    # Two prompts: one other prompt, no spread of means (s2 = 0), lam = v2 / (v2 + eps).
    # prompt 0 [1, 0 x7]: other = [1 x4, 0 x4]: M = 1/2, Bessel var 2/7, v2 = 1/28;
    #   RLOO baseline 0 for the success, 1/7 for a failure.
    # prompt 1: other = prompt 0: M = 1/8, Bessel var 1/8, v2 = 1/64; RLOO 3/7 (success),
    #   4/7 (failure).
    r = np.array([[1.0] + [0.0] * 7, [1.0] * 4 + [0.0] * 4])
    l0 = (1 / 28) / (1 / 28 + 1e-6)
    l1 = (1 / 64) / (1 / 64 + 1e-6)
    want = np.array([
        [1 - l0 / 2] + [-(1 - l0) / 7 - l0 / 2] * 7,
        [1 - (1 - l1) * 3 / 7 - l1 / 8] * 4 + [-(1 - l1) * 4 / 7 - l1 / 8] * 4,
    ])
    np.testing.assert_allclose(normalize(r, "shrinkage"), want, rtol=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_shrinkage_matches_jspo_on_random_batches(seed):
    rng = np.random.default_rng(seed)
    n, g = int(rng.integers(2, 12)), int(rng.choice([2, 4, 8]))
    r = (rng.random((n, g)) < rng.random((n, 1))).astype(np.float64)
    if seed % 2:
        r = rng.normal(size=(n, g)) * rng.uniform(0.1, 3.0)
    np.testing.assert_allclose(normalize(r, "shrinkage"), ref_jspo(r), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(normalize(r, "shrinkage", eps=0.3), ref_jspo(r, epsilon=0.3),
                               rtol=1e-10, atol=1e-12)


def test_shrinkage_is_not_the_group_mean_james_stein():
    r = make_batch("binary", 8)
    assert not np.allclose(normalize(r, "shrinkage"), normalize(r, "james_stein"), atol=1e-3)


def test_shrinkage_one_group_is_rloo_where_the_authors_give_nan():
    r = np.array([[1.0, 0.0, 0.0, 1.0, 1.0]])
    assert np.isnan(ref_jspo(r)).all()
    np.testing.assert_allclose(normalize(r, "shrinkage"), ref_verl_rloo(r), rtol=1e-14)


def test_shrinkage_edge_cases_and_refusals():
    with pytest.raises(ValueError, match="G >= 2"):
        normalize(np.ones((3, 1)), "shrinkage")
    with pytest.raises(ValueError, match="eps"):
        normalize(np.ones((3, 2)), "shrinkage", eps=-1.0)
    # all flat, all equal: v2 = s2 = 0, lam = 0, every baseline is the reward itself
    assert (normalize(np.ones((4, 3)), "shrinkage") == 0).all()
    # eps = 0 with the other prompts flat and equal: 0/0 -> lam = 0 (RLOO)
    r = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 1.0]])
    np.testing.assert_allclose(normalize(r, "shrinkage", eps=0.0)[0], [1.0, -1.0])
    # ragged groups: refused (the authors reshape to (n, m))
    with pytest.raises(ValueError, match="same size"):
        normalize_ragged(np.array([1.0, 0.0, 1.0, 1.0, 0.0]), ["a", "a", "b", "b", "b"],
                         "shrinkage")
    # uniform interleaved groups are fine: the same as the grouped call
    scores, uids = np.array([1.0, 1.0, 0.0, 0.0]), ["a", "b", "a", "b"]
    got = normalize_ragged(scores, uids, "shrinkage")
    want = normalize(np.array([[1.0, 0.0], [1.0, 0.0]]), "shrinkage")
    np.testing.assert_allclose(got, [want[0, 0], want[1, 0], want[0, 1], want[1, 1]])


def test_shrinkage_flat_group_moves():
    r = make_batch("binary", 8)
    adv = normalize(r, "shrinkage")
    assert (adv[-1] > 0).all() and (adv[-2] < 0).all()  # all-1 up, all-0 down


# ------------------------------------------------------------------------------------------
# MaxRL: by hand, random batches with negative means, prime-rl preset
# ------------------------------------------------------------------------------------------


def test_max_rl_hand_computed():
    # [1, 0, 0, 0]: mean 1/4 -> (r - 1/4)/(1/4 + 1e-6), then /G = /4.
    # [1, 0]: mean 1/2 -> +-(1/2)/(1/2 + 1e-6)/2.  All-zero: mean 0 -> 0.
    got = normalize(np.array([[1.0, 0, 0, 0], [0, 0, 0, 0]]), "max_rl")
    k = 0.25 / (0.25 + 1e-6) / 4
    np.testing.assert_allclose(got, [[3 * k, -k, -k, -k], [0, 0, 0, 0]], rtol=1e-14)
    assert got[0, 0] == pytest.approx(0.749997, abs=1e-6)
    got = normalize(np.array([[1.0, 0.0]]), "max_rl")
    np.testing.assert_allclose(got, [[0.5 / 0.500001 / 2, -0.5 / 0.500001 / 2]], rtol=1e-14)
    # negative mean, the authors' formula: [-1, 0]: mean -1/2, (r + 1/2)/(-1/2 + 1e-6)/2:
    # the better sample (0) gets the negative advantage
    got = normalize(np.array([[-1.0, 0.0]]), "max_rl")
    np.testing.assert_allclose(got, [[-0.5 / -0.499999 / 2, 0.5 / -0.499999 / 2]], rtol=1e-14)
    assert got[0, 1] < 0
    # mean exactly 0 with spread: 0, as the authors' `mean == 0.0` test
    assert (normalize(np.array([[-1.0, 1.0]]), "max_rl") == 0).all()


@pytest.mark.parametrize("seed", range(6))
def test_max_rl_matches_the_authors_on_random_batches(seed):
    rng = np.random.default_rng(seed)
    n, g = int(rng.integers(1, 10)), int(rng.choice([2, 4, 8, 16]))
    r = (rng.random((n, g)) < rng.random((n, 1))).astype(np.float64)
    if seed % 2:
        r = rng.uniform(-1.0, 2.0, size=(n, g))  # some groups with negative means
    np.testing.assert_allclose(normalize(r, "max_rl"), ref_maxrl_authors(r), rtol=1e-10,
                               atol=1e-12)
    np.testing.assert_allclose(normalize(r, "max_rl", eps=0.0), ref_maxrl_authors(r, eps=0.0),
                               rtol=1e-10, atol=1e-12)


def test_max_rl_prime_rl_preset():
    rng = np.random.default_rng(9)
    r = rng.uniform(-1.0, 2.0, size=(12, 6))
    r[0] = 0.0
    opts = dict(eps=0.0, scale_by_group_size=False, negative_mean="zero")
    np.testing.assert_allclose(normalize(r, "max_rl", **opts), ref_prime_rl_maxrl(r),
                               rtol=1e-12, atol=1e-12)
    assert (ref_prime_rl_maxrl(r) != ref_maxrl_authors(r)).any()


def test_max_rl_options_checked():
    with pytest.raises(ValueError, match="negative_mean"):
        normalize(np.ones((1, 2)), "max_rl", negative_mean="abs")
    with pytest.raises(TypeError, match="scale_by_group_size"):
        normalize(np.ones((1, 2)), "max_rl", scale_by_group_size=2)
    with pytest.raises(ValueError, match="mean \\+ eps"):
        normalize(np.array([[-2e-6, 0.0]]), "max_rl")  # mean = -1e-6 = -eps


# ------------------------------------------------------------------------------------------
# KRPO: the authors' fresh filter per group by default; persist=True across steps
# ------------------------------------------------------------------------------------------


def test_krpo_hand_computed_first_and_second_sample():
    # first sample r0: P- = 1 + 1e-5, K = P-/(P- + 1e-2), x = K r0, P = (1 - K) P-,
    # A = (r0 - x)/(sqrt(P) + 1e-8) = r0 (1 - K)/(sqrt(P) + 1e-8).
    got = normalize(np.array([[1.0, 0.0], [0.0, 0.0]]), "krpo")
    pm = 1 + 1e-5
    k = pm / (pm + 1e-2)
    p1 = (1 - k) * pm
    assert got[0, 0] == pytest.approx((1 - k) / (math.sqrt(p1) + 1e-8), rel=1e-13)
    assert got[0, 0] == pytest.approx(0.0995027, rel=1e-6)
    # second sample 0: P- = p1 + 1e-5, K2 = P-/(P- + 1e-2), x2 = K + K2 (0 - K)
    pm2 = p1 + 1e-5
    k2 = pm2 / (pm2 + 1e-2)
    x2 = k * (1 - k2)
    assert got[0, 1] == pytest.approx(-x2 / (math.sqrt((1 - k2) * pm2) + 1e-8), rel=1e-13)
    assert (got[1] == 0).all()  # x stays at 0 on zeros


@pytest.mark.parametrize("seed", range(4))
def test_krpo_default_is_the_authors_fresh_filter_on_random_batches(seed):
    rng = np.random.default_rng(seed)
    r = (rng.random((7, 8)) < 0.4).astype(np.float64) if seed % 2 else rng.normal(size=(5, 3))
    np.testing.assert_allclose(normalize(r, "krpo"), ref_krpo(r), rtol=1e-12, atol=1e-12)
    again = normalize(r, "krpo")  # no state: the same batch gives the same advantages
    np.testing.assert_array_equal(again, normalize(r, "krpo"))


def test_krpo_persist_carries_filters_and_is_resumable():
    state = make_state("krpo", persist=True)
    ctx = NormalizerContext(prompt_ids=["a", "b"])
    step1 = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    first = normalize(step1, "krpo", persist=True, context=ctx, state=state)
    np.testing.assert_allclose(first, ref_krpo(step1), rtol=1e-12)  # a new prompt starts fresh
    kf = KalmanFilter()
    for z in step1[0]:
        kf.update(z)
    saved = state.state_dict()
    step2 = np.array([[1.0, 1.0, 0.0]])
    got = normalize(step2, "krpo", persist=True, context=NormalizerContext(prompt_ids=["a"]),
                    state=state)
    want = []
    for z in step2[0]:  # prompt a's filter continues
        x, p = kf.update(z)
        want.append((z - x) / (math.sqrt(p) + 1e-8))
    np.testing.assert_allclose(got[0], want, rtol=1e-12)
    restored = make_state("krpo", persist=True)
    restored.load_state_dict(saved)
    again = normalize(step2, "krpo", persist=True, context=NormalizerContext(prompt_ids=["a"]),
                      state=restored)
    np.testing.assert_array_equal(again, got)
    assert make_state("krpo") is None  # the default keeps no state


def test_krpo_persistent_filter_scale_vs_fresh_as_documented():
    # One prompt, a binary G = 8 stream, success rate 0.5, 2000 steps; steps 200-2000.
    r = (np.random.default_rng(0).random((2000, 8)) < 0.5).astype(np.float64)
    fresh = normalize(r, "krpo")  # every row a fresh filter
    state = make_state("krpo", persist=True)
    ctx = NormalizerContext(prompt_ids=["q"])
    persist = np.vstack([normalize(row[None], "krpo", persist=True, context=ctx, state=state)
                         for row in r])
    rms = [float(np.sqrt((a[200:] ** 2).mean())) for a in (fresh, persist)]
    assert rms[0] == pytest.approx(9.28, abs=0.01) and rms[1] == pytest.approx(27.66, abs=0.01)
    assert rms[1] / rms[0] == pytest.approx(2.98, abs=0.01)
    p_inf = state.filters["q"][1]
    assert p_inf == pytest.approx(3.11e-4, rel=1e-3) and 1 / math.sqrt(p_inf) == pytest.approx(
        56.7, abs=0.05)


# ------------------------------------------------------------------------------------------
# running_std across steps (ROLL's RunningMoments)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mean_type", ["running", "group"])
def test_running_std_matches_roll_across_steps(mean_type):
    rng = np.random.default_rng(4)
    steps = [rng.random((4, 8)), (rng.random((4, 8)) < 0.5).astype(float), rng.random((3, 8))]
    want = ref_roll_running(steps, mean_type)
    state = make_state("running_std")
    for r, w in zip(steps, want):
        got = normalize(r, "running_std", mean=mean_type, state=state)
        np.testing.assert_allclose(got, w, rtol=1e-10, atol=1e-12)
