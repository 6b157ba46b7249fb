r"""Grouped-query attention without copying keys and values, for ``transformers`` models.

``transformers``' eager attention expands the ``H_kv`` key/value heads to the ``H`` query heads
with ``repeat_kv`` (a copy of the whole KV cache per layer and step), and its CPU ``sdpa`` path
calls a flash kernel whose fixed cost dominates a one-token decode step. Measured on the
embedded SmolLM2-135M (bf16, 32 rows, ~105 cached tokens, 2 cores), one decode forward took
120 ms with ``sdpa`` and 95 ms with eager, of which 22 ms were ``repeat_kv`` copies.

Here the query heads that share a key/value head are folded into the query-length axis
instead: with ``r = H / H_kv`` (query head ``h`` reads key/value head ``h // r``, as in
``repeat_kv``)::

    q  (B, H, Lq, D)  ->  (B, H_kv, r * Lq, D)
    w  = q k^T * scaling                     (B, H_kv, r * Lq, Lk)   + mask (B, 1, Lq, Lk)
    out = softmax(w) v                       (B, H_kv, r * Lq, D)  ->  (B, Lq, H, D)

which is the same math as eager attention (scaled dot product, additive mask, float32
softmax) with no copy of ``k`` or ``v``. Keys longer than the mask (a reserved KV cache,
:func:`grponorm.rl.kvcache.reserve`, passes its whole buffer) are masked beyond the mask's
length. :func:`use_gqa_attention` switches a model to it for
the duration of a ``with`` block.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

__all__ = ["GQA_ATTENTION", "gqa_attention_forward", "use_gqa_attention"]

#: Name under which the attention (and its mask) is registered in ``transformers``.
GQA_ATTENTION = "grponorm_gqa"


def gqa_attention_forward(
    module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Scaled dot-product attention with ``H_kv < H`` heads, no key/value expansion.

    Args:
        module: the attention module (unused; part of the ``transformers`` interface).
        query: ``(B, H, Lq, D)``.
        key, value: ``(B, H_kv, Lk, D)`` with ``H % H_kv == 0``.
        attention_mask: additive ``(B, 1, Lq, Lm)`` float mask (0 or a large negative), or None;
            ``Lm <= Lk``, and key slots ``>= Lm`` are masked out.
        scaling: the factor multiplying ``q k^T`` (usually ``D ** -0.5``).
        dropout: must be 0 (rollouts and log-probs never use attention dropout).

    Returns:
        ``((B, Lq, H, D) attention output, None)``.
    """
    if dropout and module is not None and module.training:
        raise ValueError("gqa_attention_forward does not implement attention dropout")
    B, H, Lq, D = query.shape
    Hkv, Lk = key.shape[1], key.shape[2]
    r = H // Hkv
    q = query.reshape(B, Hkv, r * Lq, D)  # heads h = j * r + i share key/value head j
    w = torch.matmul(q, key.transpose(2, 3)) * scaling  # (B, Hkv, r * Lq, Lk)
    if attention_mask is not None:
        m = attention_mask[..., :Lk]
        if m.shape[-1] < Lk:  # unfilled slots of a reserved cache
            m = torch.nn.functional.pad(m, (0, Lk - m.shape[-1]), value=torch.finfo(m.dtype).min)
        w = (w.view(B, Hkv, r, Lq, Lk) + m[:, :, None]).view_as(w)
    w = torch.softmax(w, dim=-1, dtype=torch.float32).to(query.dtype)
    out = torch.matmul(w, value)  # (B, Hkv, r * Lq, D)
    return out.view(B, H, Lq, D).transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    ALL_ATTENTION_FUNCTIONS.register(GQA_ATTENTION, gqa_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(GQA_ATTENTION, eager_mask)


@contextmanager
def use_gqa_attention(model):
    """Run ``model`` with :func:`gqa_attention_forward` inside the block, then restore it."""
    _register()
    config = model.config
    old = config._attn_implementation
    config._attn_implementation = GQA_ATTENTION
    try:
        yield model
    finally:
        config._attn_implementation = old
