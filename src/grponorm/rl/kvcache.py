r"""KV-cache helpers shared by the rollout engines and the log-prob passes.

Rows are left-padded: ``[pad .. pad | prompt]``. Positions follow :func:`position_ids`, so a
padded row sees the same positions as the unpadded prompt would.

:func:`prefill` runs ``n`` prompts once each and repeats their KV cache for the ``G``
samples of each group. With ``share_prefix`` the longest token prefix common to all ``n``
prompts (a system prompt, few-shot examples) is run once for all of them: the cache then holds,
for prompt ``i`` with ``s_i`` tokens after the common prefix of length ``L_c``::

    [common prefix (L_c) | masked slots (S - s_i) | own suffix (s_i)]     S = P - L_c

a layout as long as the padded prompt (``P``) whose attention mask (``kv_mask``) has holes in
the middle instead of left padding. Every real token keeps its position and attends to exactly
the tokens it would attend to unpadded, so the math is that of the plain pass; gradients flow
through the shared prefix into every prompt that uses it.

:func:`reserve` gives a filled cache room for ``extra`` more tokens per layer, so that each decode
step writes its keys/values in place. ``transformers``' ``DynamicCache`` concatenates instead,
allocating and copying the whole cache at every step: measured on SmolLM2-135M (64 rows,
~170-token GSM8K prompts, 48 new tokens), those copies were 47% of the rollout's time. A reserved
layer hands attention its whole zero-initialized buffer (contiguous: a narrower view of it made
CPU matmuls copy it anyway), ``(B, H, L + room, D)`` against an attention mask of ``L`` columns;
only :func:`grponorm.rl.attention.gqa_attention_forward` accepts that (it masks the unfilled
slots), so use :func:`reserve` only under :func:`~grponorm.rl.attention.use_gqa_attention`.
"""

from __future__ import annotations

import functools

import torch

__all__ = [
    "cache_kwarg",
    "common_prefix_len",
    "position_ids",
    "prefill",
    "prefill_shared",
    "reserve",
    "static_bias",
]

#: Shortest common prefix (tokens) worth a separate pass.
MIN_SHARED_PREFIX = 8


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids for left-padded rows: ``cumsum(mask) - 1`` (0 on padding).

    This is what ``generate`` uses, so a training forward pass sees the same positions as the
    sampling pass did; a plain ``arange`` would shift every left-padded row.
    """
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)


def cache_kwarg() -> str:
    """Name of the KV-cache argument/output: ``cache`` (transformers >= 5.2x) or the older
    ``past_key_values``."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    fields = getattr(CausalLMOutputWithPast, "__dataclass_fields__", {})
    return "cache" if "cache" in fields else "past_key_values"


def common_prefix_len(ids: torch.Tensor, mask: torch.Tensor) -> int:
    """Length of the longest token prefix shared by the real tokens of all ``(n, P)`` rows.

    Capped so every row keeps at least one token of its own (the one whose logits start the
    completion).
    """
    lengths = mask.long().sum(dim=1)  # (n,)
    n, P = ids.shape
    shortest = int(lengths.min())
    starts = P - lengths  # (n,) first real column of each row
    cols = starts.unsqueeze(1) + torch.arange(shortest, device=ids.device)  # (n, shortest)
    aligned = ids.gather(1, cols)  # (n, shortest) real tokens, left-aligned
    same = (aligned == aligned[:1]).all(dim=0)  # (shortest,)
    differ = (~same).nonzero()
    common = int(differ[0]) if len(differ) else shortest
    return min(common, shortest - 1)


def last_position(ids: torch.Tensor) -> torch.Tensor:
    """``logits_to_keep`` selecting only the last position of ``(n, L)`` ids, as an index tensor.

    An index (not the int 1) makes ``transformers`` gather the last hidden state into a
    contiguous ``(n, 1, d)`` tensor; the int's strided slice made CPU matmul expand the LM head
    into a ``(n, d, V)`` copy (230 ms of a 1.5 s rollout with SmolLM2's 49k vocabulary).
    """
    return torch.tensor([ids.shape[1] - 1], device=ids.device)


def prefill(model, ids: torch.Tensor, mask: torch.Tensor, G: int, *, share_prefix: bool = True):
    """Run the ``(n, P)`` prompts once each and repeat the cache ``G`` times (module docstring).

    Returns:
        ``(cache, logits, kv_mask, key)``: the cache for ``n * G`` rows (group-major), the
        ``(n, 1, V)`` logits of each prompt's last token, the ``(n, P)`` attention mask of the
        cache's layout (repeat it ``G`` times for the rows) and the cache's keyword name.
    """
    key = cache_kwarg()
    n, P = ids.shape
    Lc = common_prefix_len(ids, mask) if share_prefix and n > 1 else 0
    if Lc < MIN_SHARED_PREFIX:
        out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask),
                    use_cache=True, logits_to_keep=last_position(ids))
        cache = getattr(out, key)
        cache.batch_repeat_interleave(G)
        return cache, out.logits[:, -1:], mask, key
    start = P - int(mask[0].long().sum())
    head = ids[:1, start : start + Lc]  # (1, Lc)
    ones = torch.ones_like(head)
    out = model(input_ids=head, attention_mask=ones, position_ids=position_ids(ones),
                use_cache=True, logits_to_keep=last_position(head))
    cache = getattr(out, key)
    cache.batch_repeat_interleave(n)
    S = P - Lc
    own = mask.long().sum(dim=1, keepdim=True) - Lc  # (n, 1) s_i
    tail = (torch.arange(S, device=ids.device).unsqueeze(0) >= S - own).to(mask.dtype)  # (n, S)
    kv_mask = torch.cat([mask.new_ones(n, Lc), tail], dim=1)  # (n, P)
    out = model(input_ids=ids[:, Lc:], attention_mask=kv_mask,
                position_ids=position_ids(kv_mask)[:, Lc:], use_cache=True,
                logits_to_keep=last_position(ids[:, Lc:]),
                **{key: cache})
    cache = getattr(out, key)
    cache.batch_repeat_interleave(G)
    return cache, out.logits[:, -1:], kv_mask, key


def prefill_shared(model, ids: torch.Tensor, mask: torch.Tensor, G: int):
    """:func:`prefill` without prefix sharing (the cache keeps the left-padded layout).
    Returns ``(cache, logits of the last prompt position (n, 1, V), cache kwarg)``."""
    cache, logits, _, key = prefill(model, ids, mask, G, share_prefix=False)
    return cache, logits, key


def reserve(cache, extra: int):
    """Give every plain ``DynamicLayer`` of ``cache`` room for ``extra`` more tokens (in place).

    Layers of other kinds (sliding windows, quantized, ...) are left as they are. Returns the
    cache.
    """
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", [])
    for i, layer in enumerate(layers):
        if type(layer) is DynamicLayer and layer.is_initialized and layer.keys.numel():
            layers[i] = _reserved_layer_class()(layer, int(extra))
    return cache


def static_bias(model, cache, attention_mask: torch.Tensor, extra: int) -> torch.Tensor | None:
    """The ``(b, 1, 1, L + extra)`` additive attention mask over the whole buffers of a cache that
    :func:`reserve` gave ``extra`` slots, for ``(b, L)`` rows with ``attention_mask``; None when
    some layer is not reserved (or buffers differ in length).

    Entries are 0 on the real tokens and ``finfo(dtype).min`` elsewhere, in the dtype of the
    model's input embeddings: exactly the values of ``transformers``' eager mask padded as
    :func:`~grponorm.rl.attention.gqa_attention_forward` pads it, so passing it (a 4D mask is
    used as is) gives the same attention bit for bit while skipping the per-step mask building,
    the growing 2D mask and 30 pads per step. A decode loop sets column ``L + t`` to 0 before
    feeding its ``t``-th token and selects rows of it when it drops rows.
    """
    layers = getattr(cache, "layers", None)
    cls = _reserved_layer_class()
    if not layers or any(type(layer) is not cls for layer in layers):
        return None
    b, L = attention_mask.shape
    cap = L + int(extra)
    if any(layer._k.shape[2] != cap for layer in layers):
        return None
    dtype = model.get_input_embeddings().weight.dtype
    bias = torch.full((b, 1, 1, cap), torch.finfo(dtype).min, dtype=dtype,
                      device=attention_mask.device)
    bias[:, 0, 0, :L].masked_fill_(attention_mask.bool(), 0)
    return bias


@functools.cache
def _reserved_layer_class():
    """The layer class, defined on first use (``transformers`` is imported lazily here)."""
    from transformers.cache_utils import DynamicLayer

    class ReservedLayer(DynamicLayer):
        """A ``DynamicLayer`` whose ``(B, H, n, D)`` keys/values live in zero-initialized buffers
        with spare room along the length: appending writes in place, and ``update`` returns the
        whole buffers (see the module docstring; no-grad decoding only)."""

        def __init__(self, layer, extra: int):
            super().__init__()
            self.device, self.is_initialized = layer.keys.device, True
            self.n = layer.keys.shape[2]
            self._k = self._room(layer.keys, self.n + extra)
            self._v = self._room(layer.values, self.n + extra)
            self._view()

        @staticmethod
        def _room(x, capacity: int, rows=None):
            src = x if rows is None else x[rows]
            buf = src.new_zeros(src.shape[0], src.shape[1], capacity, src.shape[3])
            buf[:, :, : src.shape[2]] = src
            return buf

        def _view(self):
            self.keys, self.values = self._k[:, :, : self.n], self._v[:, :, : self.n]

        def update(self, key_states, value_states, *args, **kwargs):
            q = key_states.shape[2]
            if self.n + q > self._k.shape[2]:  # out of room: grow (amortized doubling)
                cap = max(self.n + q, 2 * self._k.shape[2])
                self._k, self._v = self._room(self.keys, cap), self._room(self.values, cap)
            self._k[:, :, self.n : self.n + q] = key_states
            self._v[:, :, self.n : self.n + q] = value_states
            self.n += q
            self._view()
            return self._k, self._v  # whole buffers: slots >= n are zeros, masked by attention

        def get_seq_length(self) -> int:
            return self.n

        def crop(self, tokens_to_remove: int) -> None:
            if tokens_to_remove > 0:
                raise ValueError("crop takes a negative number of tokens to remove")
            self.n -= abs(tokens_to_remove)
            self._view()

        def batch_repeat_interleave(self, repeats: int) -> None:
            self._k = self._k.repeat_interleave(repeats, dim=0)
            self._v = self._v.repeat_interleave(repeats, dim=0)
            self._view()

        def batch_select_indices(self, indices) -> None:
            cap = self._k.shape[2]
            self._k = self._room(self.keys, cap, rows=indices)
            self._v = self._room(self.values, cap, rows=indices)
            self._view()

        def reorder_cache(self, beam_idx) -> None:
            self.batch_select_indices(beam_idx)

    return ReservedLayer
