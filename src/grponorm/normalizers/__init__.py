"""Advantage normalizers over grouped rewards: one registry for the bandit and the LLM trainer.

Every normalizer is a pure function of a reward matrix of shape ``(n_groups, G)`` -- one row per
prompt, one column per sampled response -- that returns advantages of the same shape. The same
function serves the NumPy (float64) softmax bandit and the torch LLM trainer: the math is written
once against a handful of backend helpers (``_mean``, ``_sum``, ``_std``, ``_sqrt``, ``_where``)
that dispatch on the array type.

Use :func:`normalize` (or :func:`normalize_with_stats`) rather than calling a registered function
directly: it validates the input and enforces that a group whose ``G`` rewards are all equal gets
an advantage of exactly zero, for every normalizer whose formula gives 0 there (those whose
formula moves such a group declare ``zero_flat=False``: a batch or running baseline, a filter,
per-component rewards). :class:`AdvantageStats` counts both the flat groups (``n_flat``) and the
groups left with all-zero advantages (``n_zero_adv``). A normalizer's context is built by
:meth:`NormalizerContext.build` from lazy sources, only for the fields it needs.

Registered normalizers (``r`` is one group's rewards, ``mean``/``std`` are over that group)::

    group_std           (r - mean) / (std + eps)               GRPO; verl, TRL "group", OpenRLHF
    none                r - mean                               Dr. GRPO / No-Std
    batch_std           (r - mean) / (std over batch + eps)    TRL scale_rewards="batch"
    rloo                r_g - mean_{h != g} r_h                RLOO leave-one-out baseline
    bernoulli_std       (r - p) / sqrt(p (1 - p))              exact-theory form, binary rewards
    bernoulli_smoothed  (r - p) / sqrt(p~ (1 - p~))            Laplace-smoothed p~, binary rewards
    bnpo                (r - p) / Beta(alpha, beta) density at p   BNPO; alpha, beta fit per batch
    mapo                lam z-score + (1 - lam) (r - mean)/mean    MAPO; lam = 4 p (1 - p)
    gpg                 B/M * (r - mean)                       GPG (verl); M = non-zero rewards
    grpo_passk          (r_max - r_2nd)/(std + eps) at argmax  verl pass@k GRPO; 0 elsewhere

    loo_std             (r - mean_{-g}) / (std_{-g} + eps)      NeMo-RL default GRPO (leave-one-out)
    reinforce_pp_baseline  whiten_batch(r - mean)               REINFORCE++ baseline (verl)
    batch_zscore        (r - mean_batch) / (std_batch + eps)   ROLL batch/batch, AReaL
    max_rl              (r - mean) / (mean + eps) / G          MaxRL (authors' p_normalization)
    opo                 r - sum |o| r / sum |o|                OPO (verl); needs lengths
    shrinkage           r - ((1-lam) mean_{-g} + lam M_{-i})   JSPO leave-one-out shrinkage
    james_stein         r - (mu_bar + c (mean - mu_bar))       James-Stein shrunk group mean
    krpo                (r - x) / (sqrt(P) + eps)              KRPO, a Kalman filter per group
    running_std         (r - m) / (s + eps), m, s across steps ROLL "running"; state
    gdpo                whiten_batch(sum_k w_k z_k)            GDPO; needs reward components

Adding a normalizer is one decorated function, written with the public helpers of
:mod:`grponorm.normalizers.ops` (``center``, ``mean``, ``std``, ``safe_div``, ``whiten``...)::

    from grponorm.normalizers import ops, register_normalizer

    @register_normalizer("my_norm")
    def my_norm(rewards, *, scale=1.0):
        return scale * ops.center(rewards, axis=1)  # (n_groups, G)

A normalizer that couples groups through a batch-wide statistic declares ``batch_level=True``;
one that needs completion lengths, prompt ids or reward components declares
``context=("lengths",)`` (etc.) and receives them as keyword arguments; one that keeps state
across steps declares ``state=factory`` and receives ``state=``. See
:func:`register_normalizer` and :class:`NormalizerSpec`.
"""

from __future__ import annotations

from . import baselines, classic, oracle, peers, stateful  # noqa: F401  (registers the built-ins)
from .context import make_state, probe_context
from .core import (
    AdvantageStats,
    advantage_stats,
    check_options,
    normalize,
    normalize_with_stats,
)
from .ops import flat_mask, zero_advantage_mask, zero_variance_mask
from .ragged import normalize_ragged, normalize_ragged_with_stats
from .registry import (
    CONTEXT_FIELDS,
    NORMALIZERS,
    SPECS,
    MissingContextError,
    NormalizerContext,
    NormalizerOptionError,
    NormalizerSpec,
    UnknownNormalizerError,
    available_normalizers,
    get_normalizer,
    get_spec,
    register_normalizer,
)

__all__ = [
    "CONTEXT_FIELDS",
    "NORMALIZERS",
    "SPECS",
    "AdvantageStats",
    "MissingContextError",
    "NormalizerContext",
    "NormalizerOptionError",
    "NormalizerSpec",
    "UnknownNormalizerError",
    "advantage_stats",
    "available_normalizers",
    "check_options",
    "flat_mask",
    "get_normalizer",
    "get_spec",
    "make_state",
    "normalize",
    "normalize_ragged",
    "normalize_ragged_with_stats",
    "normalize_with_stats",
    "probe_context",
    "register_normalizer",
    "zero_advantage_mask",
    "zero_variance_mask",
]
