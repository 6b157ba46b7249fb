"""Curvature quantities of the bandit in logit space, per (seed, question): the exact Hessian
norm of J_i = pi*_i, the exact Fisher trace, and the Sophia-style sampled Fisher proxy.

With features X_i (K, d) and Gram G_i = X_i X_i^T, every quantity reduces to K x K algebra:
    ||hess J_i|| = ||X_i^T H_z X_i|| = ||G^{1/2} H_z G^{1/2}||       (same nonzero spectrum)
    tr F_i      = tr(X_i^T C X_i) = tr(G C),  C = diag(p) - p p^T    (Fisher of the policy)
    proxy       = B ||g_hat||^2,  g_hat = X_i^T (1/G) sum_g (e_{o_g} - p),  B = G
The proxy is the trace of Sophia's diagonal estimate B g_hat (.) g_hat from the gradient of the
mean log-likelihood of G responses sampled from the policy; E[proxy] = tr F_i (unbiased).
"""

from __future__ import annotations

import numpy as np

from ..bandit.exact import logit_hessians, softmax_with_complement


def gram_sqrt(gram: np.ndarray) -> np.ndarray:
    """Symmetric square roots of the (n, K, K) Gram matrices."""
    w, V = np.linalg.eigh(gram)
    return (V * np.sqrt(np.clip(w, 0.0, None))[:, None, :]) @ np.swapaxes(V, -1, -2)


def pi_star_and_complement(p: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pi*, 1 - pi*) for (..., K) probabilities; the complement sums the other entries."""
    onehot = np.arange(p.shape[-1]) == np.broadcast_to(a, p.shape[:-1])[..., None]
    return np.where(onehot, p, 0.0).sum(-1), np.where(onehot, 0.0, p).sum(-1)


def hessian_norms(root: np.ndarray, z: np.ndarray, a: np.ndarray) -> np.ndarray:
    """||hess J_i|| for (S, n, K) logits; root = gram_sqrt(gram) (n, K, K) -> (S, n).

    The logit-space Hessian is `grponorm.bandit.exact.logit_hessians` (cancellation-free, with
    the K = 2 form that stays accurate next to pi* = 1/2).
    """
    p, q = softmax_with_complement(z)  # (S, n, K)
    A = root @ logit_hessians(p, q, a, z) @ root  # (S, n, K, K)
    return np.abs(np.linalg.eigvalsh(A)).max(axis=-1)


def fisher_trace(gram: np.ndarray, p: np.ndarray) -> np.ndarray:
    """tr F_i = sum_k G_kk p_k - p^T G p for (S, n, K) probabilities -> (S, n)."""
    diag = np.diagonal(gram, axis1=-2, axis2=-1)  # (n, K)
    return (diag * p).sum(-1) - np.einsum("snk,nkj,snj->sn", p, gram, p)


def fisher_proxy(gram: np.ndarray, p: np.ndarray, outputs: np.ndarray) -> np.ndarray:
    """Sophia-style trace estimate B ||g_hat||^2 with B = G, from outputs (S, n, G) -> (S, n)."""
    S, n, K = p.shape
    G = outputs.shape[-1]
    counts = (outputs[..., None] == np.arange(K)).sum(axis=-2)  # (S, n, K)
    g = counts / G - p  # logit-space mean score
    return G * np.einsum("snk,nkj,snj->sn", g, gram, g)
