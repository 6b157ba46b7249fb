"""What a normalizer does to the step: its effective gain on binary groups, and verl's
gradient-variance proxy.

**Gain.** For a group of G binary rewards with k successes (``p̂ = k/G``), ``r = (1,...,1,0,...,0)``
and ``none`` (Dr. GRPO) gives the centered rewards ``c = r - mean(r)``. The *effective gain* of a
normalizer is

    gain(k) = ||A(r)|| / ||r - mean(r)||,       ||r - mean(r)||^2 = k (G - k) / G,

the factor by which it rescales ``none``'s step on that prompt. A flat group (k = 0 or k = G) has
``||r - mean|| = 0`` and ``normalize`` gives it zero advantage, so its gain is defined as 0
(0/0 := 0): a flat group does not move the policy at all. (A normalizer registered with
``zero_flat=False``, e.g. a batch-mean baseline, can move a flat group; its gain there is
``inf`` and :attr:`GainCurve.norm` holds the step ``||A||``.) The paper's
claim (docs/theory.md §1) is that ``group_std`` is a prompt-wise step size: its gain is
``1/(std_k + eps)``, which grows without bound (up to ``1/eps``) as p̂ -> 0 or 1 -- the sampled
analogue of GRPO's ``1/sqrt(pi*(1 - pi*))`` in Eq. (6), which ``bernoulli_std`` computes
exactly as ``1/sqrt(p̂ (1 - p̂))``.

The gain alone does not say whether the direction changes, so :func:`alignment` gives
``cos(A, r - mean)``: 1 means the normalizer only rescales ``none``'s step (a pure step size),
less means it also redistributes the advantage within the group (e.g. ``grpo_passk``).

**Reference batch.** A batch-level normalizer (``batch_std``, ``gpg``, ``bnpo``, ...) depends on
the other groups of its batch, so its gain at k is only defined given a batch. The default
reference is the *ladder*: one batch of the G + 1 groups k = 0, 1, ..., G (success rates spread
uniformly over [0, 1]), each k read off its own row. ``reference="alone"`` instead normalizes
each group as a batch of one. Group-wise normalizers give the same numbers under both; a
normalizer whose rows differ between the two is reported as batch-level
(:attr:`GainCurve.batch_level`).

**Variance proxy.** :func:`variance_proxy` is verl's on-policy gradient-variance proxy
``E[A^2 W]`` (``variance_proxy/proxy2_total_power`` of ``compute_variance_proxy_metrics`` in
``verl/trainer/ppo/metric_utils.py``), with :func:`score_norm_proxy` its ``W``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..normalizers import make_state, normalize
from ..normalizers.gain import _row_norms, gains, score_norm_proxy, variance_proxy

__all__ = [
    "REFERENCES",
    "GainCurve",
    "alignment",
    "binary_group",
    "centered_norm",
    "gain_curve",
    "gains",
    "ladder",
    "score_norm_proxy",
    "variance_proxy",
]

#: Reference batches for batch-level normalizers (see the module docstring).
REFERENCES = ("ladder", "alone")


# --------------------------------------------------------------------------------------------
# Binary groups
# --------------------------------------------------------------------------------------------


def binary_group(k: int, group_size: int) -> np.ndarray:
    """The ``(G,)`` binary rewards with ``k`` ones followed by ``G - k`` zeros."""
    if group_size < 1 or not 0 <= k <= group_size:
        raise ValueError(f"need G >= 1 and 0 <= k <= G; got k={k}, G={group_size}")
    return (np.arange(group_size) < k).astype(np.float64)  # (G,)


def ladder(group_size: int) -> np.ndarray:
    """The ``(G + 1, G)`` batch whose row k is :func:`binary_group` ``(k, G)``, k = 0..G."""
    return np.stack([binary_group(k, group_size) for k in range(group_size + 1)])  # (G+1, G)


def centered_norm(k: np.ndarray | int, group_size: int) -> np.ndarray:
    """``||r - mean(r)|| = sqrt(k (G - k) / G)`` for a binary group with k successes: the size
    of ``none``'s advantage vector (0 for flat groups)."""
    k = np.asarray(k, dtype=np.float64)
    return np.sqrt(k * (group_size - k) / group_size)


# --------------------------------------------------------------------------------------------
# Gain and alignment of given advantages
# --------------------------------------------------------------------------------------------


def alignment(adv: np.ndarray, rewards: np.ndarray) -> np.ndarray:
    """``cos(A_i, r_i - mean(r_i))`` of each group: 1 when the normalizer only rescales
    ``none``'s advantage, less when it changes the direction within the group.

    Returns:
        ``(n_groups,)`` cosines; 0 for a flat group or an all-zero advantage.
    """
    adv = np.asarray(adv, dtype=np.float64)
    rewards = np.asarray(rewards, dtype=np.float64)
    if adv.shape != rewards.shape or adv.ndim != 2:
        raise ValueError(f"need matching (n_groups, G) arrays; got {adv.shape}, {rewards.shape}")
    c = rewards - rewards.mean(axis=1, keepdims=True)  # (n_groups, G)
    den = _row_norms(adv) * _row_norms(c)  # (n_groups,)
    flat = np.all(rewards == rewards[:, :1], axis=1)  # (n_groups,)
    ok = (den > 0) & ~flat
    return np.where(ok, np.sum(adv * c, axis=1) / np.where(ok, den, 1.0), 0.0)


# --------------------------------------------------------------------------------------------
# Gain curve of a registered normalizer
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GainCurve:
    """A normalizer's gain on the binary groups k = 0..G.

    Attributes:
        method: Registered normalizer name.
        group_size: G.
        reference: The batch the groups were normalized in ("ladder" or "alone").
        k: ``(G + 1,)`` success counts 0..G.
        p_hat: ``(G + 1,)`` success rates ``k / G``.
        gain: ``(G + 1,)`` ``||A|| / ||r - mean||`` under ``reference`` (0 at k = 0 and G,
            or inf where a normalizer moves a flat group).
        norm: ``(G + 1,)`` ``||A||``, the size of the step on the prompt.
        cos: ``(G + 1,)`` ``cos(A, r - mean)`` under ``reference`` (0 at k = 0 and G).
        batch_level: True when some group's advantages differ between the ladder batch and the
            group alone, i.e. the normalizer depends on the rest of the batch.
    """

    method: str
    group_size: int
    reference: str
    k: np.ndarray
    p_hat: np.ndarray
    gain: np.ndarray
    norm: np.ndarray
    cos: np.ndarray
    batch_level: bool


def _normalize_fresh(rewards: np.ndarray, method: str, options: dict) -> np.ndarray:
    """``normalize`` with a fresh state when the normalizer keeps one (``make_state``), so no
    call sees another's history."""
    state = make_state(method, **options)  # None for a stateless normalizer
    extra = {} if state is None else {"state": state}
    return np.asarray(normalize(rewards, method, **extra, **options), dtype=np.float64)


def _advantages(method: str, rewards: np.ndarray, reference: str, options: dict) -> np.ndarray:
    if reference == "ladder":
        return _normalize_fresh(rewards, method, options)  # (G+1, G)
    rows = [_normalize_fresh(rewards[i : i + 1], method, options) for i in range(len(rewards))]
    return np.concatenate(rows)  # (G+1, G)


def gain_curve(
    method: str, group_size: int = 8, *, reference: str = "ladder", **options
) -> GainCurve:
    """The effective gain of normalizer ``method`` at each success count k = 0..G.

    Calls only the public :func:`grponorm.normalizers.normalize` (and ``make_state``: a
    stateful normalizer starts every batch from a fresh state, i.e. its first step); errors it
    raises (an unknown name, ``MissingContextError`` for a normalizer that needs lengths,
    prompt ids or reward components) propagate.

    Args:
        method: Registered normalizer name.
        group_size: G, the responses per prompt (``>= 2``).
        reference: "ladder" (the G + 1 groups k = 0..G in one batch) or "alone" (each group a
            batch of one); matters only for batch-level normalizers.
        **options: Options of the normalizer (e.g. ``eps``, ``ddof``).

    Returns:
        The :class:`GainCurve`.
    """
    if reference not in REFERENCES:
        raise ValueError(f"reference must be one of {REFERENCES}; got {reference!r}")
    if group_size < 2:
        raise ValueError(f"need G >= 2 for a group with spread; got G={group_size}")
    rewards = ladder(group_size)  # (G+1, G)
    adv = _advantages(method, rewards, reference, options)  # (G+1, G)
    other = "alone" if reference == "ladder" else "ladder"
    adv_other = _advantages(method, rewards, other, options)  # (G+1, G)
    k = np.arange(group_size + 1)
    return GainCurve(
        method=method,
        group_size=group_size,
        reference=reference,
        k=k,
        p_hat=k / group_size,
        gain=gains(adv, rewards),
        norm=np.sqrt(np.sum(adv * adv, axis=1)),
        cos=alignment(adv, rewards),
        batch_level=not np.allclose(adv, adv_other, rtol=1e-12, atol=0.0),
    )


# --------------------------------------------------------------------------------------------
# verl's gradient-variance proxy
# --------------------------------------------------------------------------------------------
