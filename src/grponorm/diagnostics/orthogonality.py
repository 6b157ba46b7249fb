"""E4: how close to orthogonal are a language model's prompt representations?

The theory assumes orthogonal prompt representations (X_i^T X_j = 0), so that an update on one
prompt leaves the others' logits alone. The paper checks this on GSM8K with Qwen2.5-Math-1.5B:
the absolute cosine similarity between sentence embeddings of 1,000 random question pairs,
taken from the penultimate hidden layer, has mean 0.088 and sd 0.064, and over 90% of the pairs
lie below 0.15. This module holds the pure pieces of that measurement:

- ``prompt_embeddings``: one pooled hidden-state vector per text, batched, optionally cached.
- ``random_pairs``: distinct unordered index pairs, seeded.
- ``abs_cosines``, ``center``, ``cosine_summary``: the statistics.

Which layer. With ``output_hidden_states=True`` a transformers decoder with L blocks returns
L + 1 tensors: ``hidden_states[0]`` is the token-embedding output (the input to block 1) and
``hidden_states[k]`` the output of block k. The last entry is special: transformers returns it
*after* the model's final norm (checked for Llama in transformers 5.24: ``hidden_states[-1] ==
norm(output of block L)``). The default ``layer=-2`` is therefore ``hidden_states[L - 1]``, the
residual stream after block L - 1 -- the input to the last block, un-normalized. That is what
"penultimate layer" means here.

Pooling. ``"mean"`` averages the hidden states over the real tokens of each text (attention mask
1), or only over the tokens inside a character span of the text when ``spans`` is given (e.g. the
question inside a chat prompt, read in its full context). ``"last"`` takes the last real token of
the text (for a chat prompt with a generation prompt, the position the first answer token is
predicted from); spans do not affect it. Padding never changes the result: pad positions are
excluded from the pool, the position ids are counted over real tokens only (so left and right
padding give the same positions), and the causal mask keeps real tokens from attending to pads.

Shared prefix. Chat prompts all start with the same system message and worked example (126
SmolLM2 tokens of a 170-200-token GSM8K prompt). With ``share_prefix`` (the default) the longest
token prefix common to all texts -- computed on the token ids of the full texts, so a question
token that BPE merges with the end of the template is not part of it -- runs through the model
once; its KV cache is expanded to each batch and only each text's remaining tokens run, in
their full context. A batch then lays out as ``[prefix (L_c) | own tokens, padded (S)]`` with
an attention mask of ones over the prefix and the padding inside the ``S`` columns (left or
right, as the tokenizer pads), and position ids ``cumsum(mask) - 1``: every real token keeps
its position and attends to the same tokens as in the full-prompt pass, so the embeddings are
those of ``share_prefix=False`` up to float rounding: in float32 on the embedded model within
1e-5 of each embedding's largest entry (about 1e-7 measured, no more than changing the batch
size moves the full-prompt pass), so the embedding cache key does not depend on it. Prefix
tokens inside a pooled span are pooled from the single prefix pass.

Raw hidden states are far from isotropic: they share a large common component (in Llama-family
models the first token of a sequence carries activations tens of times larger than the others,
and every token shares a mean direction). Cosines of raw pooled states are therefore inflated
by what all prompts have in common. ``center`` subtracts the mean embedding over the set being
compared; note that centering N exactly orthonormal vectors gives pairwise cosines of
-1/(N - 1), not 0, which is negligible for the ~2,000 questions of a 1,000-pair sample.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..files import atomic_open

__all__ = [
    "POOLINGS",
    "abs_cosines",
    "center",
    "common_prefix_len",
    "cosine_summary",
    "embedding_cache_key",
    "prompt_embeddings",
    "random_pairs",
]

log = logging.getLogger(__name__)

POOLINGS = ("mean", "last")
# Bump when the meaning of cached embeddings changes; old cache entries are then ignored.
CACHE_FORMAT = 1
# Shortest common token prefix worth a separate pass (shorter ones are run with every text).
MIN_SHARED_PREFIX = 8
# Enumerate every pair (and choose among them) up to this many pairs; beyond it, rejection.
_ENUMERATE_MAX = 2_000_000


# --------------------------------------------------------------------------- embeddings


def _model_id(model) -> str:
    """A string identifying the weights: the folder or hub id the model was loaded from."""
    config = getattr(model, "config", None)
    return str(getattr(config, "_name_or_path", "") or getattr(model, "name_or_path", "") or "")


def embedding_cache_key(
    model_id: str,
    dtype: str,
    layer: int,
    pooling: str,
    texts: Sequence[str],
    spans: Sequence[tuple[int, int]] | None = None,
    add_special_tokens: bool = True,
) -> str:
    """Hex digest naming one set of cached embeddings.

    Every input that changes the numbers is part of the key: the model (its folder or hub id;
    a hub id does not pin a revision), the parameter dtype, the layer, the pooling, the exact
    texts in order, the pooled spans and whether the tokenizer adds special tokens.
    """
    payload = {
        "format": CACHE_FORMAT,
        "model": model_id,
        "dtype": dtype,
        "layer": int(layer),
        "pooling": pooling,
        "add_special_tokens": bool(add_special_tokens),
        "texts": list(texts),
        "spans": None if spans is None else [[int(a), int(b)] for a, b in spans],
    }
    blob = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:24]


def _save_atomic(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as fh:
        np.save(fh, array)


def _span_mask(offsets: Sequence[tuple[int, int]], span: tuple[int, int]) -> list[bool]:
    """True for tokens whose character range overlaps ``span`` (zero-width tokens never do)."""
    lo, hi = span
    return [b > a and a < hi and b > lo for a, b in offsets]


def common_prefix_len(ids: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix shared by all ``ids``, in tokens.

    Capped at the shortest sequence's length minus one, so that every sequence keeps at least
    one token of its own (its last token, which ``"last"`` pooling reads). 0 for no sequences.
    """
    if not ids:
        return 0
    first, shortest = ids[0], min(len(seq) for seq in ids)
    n = 0
    while n < shortest and all(seq[n] == first[n] for seq in ids):
        n += 1
    return max(0, min(n, shortest - 1))


def _check_layer(hs, layer: int) -> None:
    if not -len(hs) <= layer < len(hs):
        raise ValueError(f"layer {layer} out of range: the model returns {len(hs)} "
                         f"hidden states (embeddings + {len(hs) - 1} blocks)")


def _run_prefix(body, prefix: Sequence[int], layer: int, device):
    """Run the shared prefix once: its ``(L_c, hidden)`` float32 CPU states at ``layer`` and
    its per-layer ``(keys, values)``, each ``(1, kv_heads, L_c, head_dim)``."""
    import torch

    from ..rl.kvcache import cache_kwarg

    ids = torch.tensor([list(prefix)], dtype=torch.long, device=device)  # (1, Lc)
    ones = torch.ones_like(ids)  # (1, Lc)
    pos = torch.arange(ids.shape[1], device=device).unsqueeze(0)  # (1, Lc)
    res = body(input_ids=ids, attention_mask=ones, position_ids=pos, output_hidden_states=True,
               use_cache=True)
    _check_layer(res.hidden_states, layer)
    h = res.hidden_states[layer][0].float().cpu()  # (Lc, hidden)
    cache = getattr(res, cache_kwarg())
    kv = [(lay.keys, lay.values) for lay in cache.layers]  # L x 2 x (1, kv_heads, Lc, D)
    return h, kv


def _expand_cache(body, kv, rows: int):
    """A fresh cache holding the prefix ``kv`` for ``rows`` rows (the forward pass appends to
    it, so each batch needs its own)."""
    from transformers.cache_utils import DynamicCache

    data = [(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)) for k, v in kv]
    return DynamicCache(ddp_cache_data=data, config=getattr(body, "config", None))


def prompt_embeddings(
    model,
    tokenizer,
    texts: Sequence[str],
    *,
    layer: int = -2,
    pooling: str = "mean",
    spans: Sequence[tuple[int, int]] | None = None,
    add_special_tokens: bool = True,
    batch_size: int = 16,
    share_prefix: bool = True,
    cache_dir: str | os.PathLike | None = None,
    model_id: str | None = None,
    progress: bool = True,
    stats: dict | None = None,
) -> np.ndarray:
    """Pooled hidden states of ``texts``: one vector per text.

    Texts are tokenized once, sorted by length (less padding), run in batches through the
    model's base (the decoder without its language-model head, which is not needed) under
    ``torch.inference_mode``, and pooled in float32. See the module docstring for the meaning
    of ``layer`` and ``pooling``, for why padding does not change the result, and for the
    shared prefix.

    Args:
        model: a transformers causal LM (or any model whose ``base_model`` accepts
            ``input_ids``, ``attention_mask``, ``position_ids``, ``output_hidden_states`` and,
            with ``share_prefix``, a transformers KV cache).
        tokenizer: its tokenizer; a fast tokenizer is needed when ``spans`` is given
            (character offsets). Its ``padding_side`` is respected.
        texts: the N texts to embed.
        layer: index into ``hidden_states`` (L + 1 entries for L blocks); -2 is the output
            of block L - 1, the penultimate layer.
        pooling: ``"mean"`` over real tokens (or over ``spans``) or ``"last"`` real token.
        spans: optional ``(start, end)`` character range per text; mean pooling then uses only
            the tokens overlapping it. Ignored by ``"last"`` pooling.
        add_special_tokens: passed to the tokenizer (False for chat-formatted text that
            already holds its special tokens).
        batch_size: texts per forward pass.
        share_prefix: run the token prefix common to all texts once and only each text's
            remaining tokens per text (used when at least ``MIN_SHARED_PREFIX`` tokens are
            shared). False runs every full text: the reference path.
        cache_dir: if given, embeddings are stored as ``<cache_dir>/embeddings/<key>.npy``
            (see ``embedding_cache_key``) and read back instead of recomputed.
        model_id: identifies the weights in the cache key (default: the folder or hub id the
            model was loaded from). Without any id the cache is not used.
        progress: show a tqdm bar.
        stats: if a dict is given it is filled with ``n_texts``, ``n_tokens`` (tokens run
            through the model: the shared prefix counts once; 0 on a cache hit),
            ``shared_prefix_tokens`` (0 when not shared), ``cache_path`` and ``cache_hit``.

    Returns:
        float32 array (N, hidden) in the order of ``texts``.

    Raises:
        ValueError: bad pooling, layer out of range, mismatched spans, or a span that covers
            no token.
    """
    import torch

    texts = list(texts)
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if not texts:
        raise ValueError("texts is empty")
    if not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must be strings")
    if spans is not None and len(spans) != len(texts):
        raise ValueError(f"got {len(spans)} spans for {len(texts)} texts")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    use_spans = spans is not None and pooling == "mean"
    info = {"n_texts": len(texts), "n_tokens": 0, "shared_prefix_tokens": 0,
            "cache_path": None, "cache_hit": False}
    if stats is not None:
        stats.update(info)
        info = stats

    param = next(model.parameters())
    cache_path = None
    if cache_dir is not None:
        ident = model_id if model_id is not None else _model_id(model)
        if ident:
            key = embedding_cache_key(ident, str(param.dtype).removeprefix("torch."), layer,
                                      pooling, texts, spans if use_spans else None,
                                      add_special_tokens)
            cache_path = Path(cache_dir).expanduser() / "embeddings" / f"{key}.npy"
            info["cache_path"] = str(cache_path)
            if cache_path.is_file():
                cached = np.load(cache_path)
                if cached.ndim == 2 and cached.shape[0] == len(texts):
                    info["cache_hit"] = True
                    return cached
                log.warning("ignoring malformed embedding cache entry %s", cache_path)
        else:
            log.warning("model has no name or path: embedding cache not used")

    enc = tokenizer(texts, add_special_tokens=add_special_tokens,
                    return_offsets_mapping=use_spans)
    ids = enc["input_ids"]  # N lists of token ids
    pool = []  # N lists of bools: which tokens enter the mean
    for k, seq in enumerate(ids):
        if not seq:
            raise ValueError(f"text {k} has no tokens")
        if use_spans:
            m = _span_mask(enc["offset_mapping"][k], tuple(spans[k]))
            if not any(m):
                raise ValueError(f"span {tuple(spans[k])} of text {k} covers no token")
            pool.append(m)
        else:
            pool.append([True] * len(seq))

    body = getattr(model, "base_model", model)
    dev = param.device
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    left = getattr(tokenizer, "padding_side", "right") == "left"
    Lc = common_prefix_len(ids) if share_prefix and len(ids) > 1 else 0
    if Lc < MIN_SHARED_PREFIX:
        Lc = 0
    order = sorted(range(len(texts)), key=lambda k: -len(ids[k]))  # longest first
    out = None
    bar = tqdm(total=len(texts), desc="embedding prompts", unit="prompt", disable=not progress)
    with torch.inference_mode():
        if Lc:
            from ..rl.kvcache import cache_kwarg

            prefix_h, prefix_kv = _run_prefix(body, ids[0][:Lc], layer, dev)  # (Lc, hidden)
            kv_arg = cache_kwarg()  # name of the KV-cache argument
            info["n_tokens"] += Lc
            info["shared_prefix_tokens"] = Lc
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            B = len(rows)
            S = max(len(ids[k]) for k in rows) - Lc  # own tokens of the longest row
            input_ids = torch.full((B, S), pad_id, dtype=torch.long)  # (B, S)
            attn = torch.zeros((B, S), dtype=torch.long)  # (B, S)
            weights = torch.zeros((B, S), dtype=torch.float32)  # (B, S)
            prefix_w = torch.zeros((B, Lc), dtype=torch.float32)  # (B, Lc)
            for b, k in enumerate(rows):
                n = len(ids[k]) - Lc
                sl = slice(S - n, S) if left else slice(0, n)
                input_ids[b, sl] = torch.tensor(ids[k][Lc:], dtype=torch.long)
                attn[b, sl] = 1
                weights[b, sl] = torch.tensor(pool[k][Lc:], dtype=torch.float32)
                prefix_w[b] = torch.tensor(pool[k][:Lc], dtype=torch.float32)
            full = torch.cat([attn.new_ones(B, Lc), attn], dim=1)  # (B, Lc + S)
            # 0.. over real tokens; the prefix occupies positions 0 .. Lc - 1
            position_ids = (full.cumsum(-1) - 1).clamp(min=0)[:, Lc:]  # (B, S)
            if Lc:  # the prefix's cache, one copy per row
                kw = {kv_arg: _expand_cache(body, prefix_kv, B), "use_cache": True}
            else:
                kw = {"use_cache": False}
            res = body(input_ids=input_ids.to(dev), attention_mask=full.to(dev),
                       position_ids=position_ids.to(dev), output_hidden_states=True, **kw)
            hs = res.hidden_states  # L + 1 tensors (B, S, hidden)
            _check_layer(hs, layer)
            h = hs[layer].float().cpu()  # (B, S, hidden)
            if pooling == "mean":
                total = (h * weights[..., None]).sum(1)  # (B, hidden)
                count = weights.sum(1, keepdim=True)  # (B, 1)
                if Lc:
                    total = total + prefix_w @ prefix_h  # (B, Lc) @ (Lc, hidden)
                    count = count + prefix_w.sum(1, keepdim=True)
                emb = total / count  # (B, hidden)
            else:
                last = S - 1 - attn.flip(-1).argmax(-1)  # (B,) index of the last real token
                emb = h[torch.arange(B), last]  # (B, hidden)
            if out is None:
                out = np.empty((len(texts), emb.shape[-1]), dtype=np.float32)
            out[rows] = emb.numpy()
            info["n_tokens"] += int(attn.sum())
            bar.update(B)
    bar.close()
    if cache_path is not None:
        _save_atomic(cache_path, out)
    return out


# --------------------------------------------------------------------------- pairs and cosines


def random_pairs(n_items: int, n_pairs: int, seed: int = 0) -> np.ndarray:
    """``n_pairs`` distinct unordered pairs of distinct items, uniform over all pairs.

    Args:
        n_items: items are ``0 .. n_items - 1``.
        n_pairs: pairs to draw (at most ``n_items (n_items - 1) / 2``).
        seed: seed of the numpy Generator; the same arguments give the same pairs.

    Returns:
        int64 array (n_pairs, 2), each row ``(i, j)`` with ``i < j``, no row repeated, rows
        in draw order.

    Raises:
        ValueError: if ``n_pairs`` exceeds the number of possible pairs or is negative.
    """
    n_items, n_pairs = int(n_items), int(n_pairs)
    total = n_items * (n_items - 1) // 2 if n_items > 1 else 0
    if n_pairs < 0:
        raise ValueError(f"n_pairs must be >= 0, got {n_pairs}")
    if n_pairs > total:
        raise ValueError(f"cannot draw {n_pairs} distinct pairs from {n_items} items "
                         f"(only {total} pairs exist)")
    rng = np.random.default_rng(seed)
    if total <= _ENUMERATE_MAX:
        i, j = np.triu_indices(n_items, k=1)
        pick = rng.choice(total, size=n_pairs, replace=False)
        return np.stack([i[pick], j[pick]], axis=1).astype(np.int64)
    # Many pairs exist: draw ordered pairs of distinct items, keep the first occurrence of each
    # unordered pair. Acceptance stays >= 1/2 because n_pairs <= total here and the rejected
    # draws are only repeats.
    seen: set[tuple[int, int]] = set()
    rows: list[tuple[int, int]] = []
    while len(rows) < n_pairs:
        need = n_pairs - len(rows)
        a = rng.integers(0, n_items, size=2 * need + 16)
        b = rng.integers(0, n_items - 1, size=2 * need + 16)
        b = b + (b >= a)  # uniform over items != a
        for x, y in zip(np.minimum(a, b).tolist(), np.maximum(a, b).tolist()):
            if (x, y) not in seen:
                seen.add((x, y))
                rows.append((x, y))
                if len(rows) == n_pairs:
                    break
    return np.asarray(rows, dtype=np.int64).reshape(n_pairs, 2)


def abs_cosines(E: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """|cos| between the rows of ``E`` named by each pair, in float64.

    Args:
        E: embeddings (N, d).
        pairs: index pairs (P, 2).

    Returns:
        (P,) array of |<e_i, e_j>| / (||e_i|| ||e_j||), clipped to [0, 1].

    Raises:
        ValueError: if a paired row has zero norm (its cosine is undefined).
    """
    E = np.asarray(E, dtype=np.float64)  # (N, d)
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)  # (P, 2)
    norms = np.linalg.norm(E, axis=1)  # (N,)
    used = np.unique(pairs)
    if used.size and np.any(norms[used] == 0):
        raise ValueError("an embedding in a pair has zero norm; its cosine is undefined")
    i, j = pairs[:, 0], pairs[:, 1]
    dots = np.einsum("pd,pd->p", E[i], E[j])  # (P,)
    return np.clip(np.abs(dots) / (norms[i] * norms[j]), 0.0, 1.0)


def center(E: np.ndarray) -> np.ndarray:
    """Subtract the mean row: ``E - E.mean(0)`` (N, d), in float64.

    Removes the direction all embeddings share. Centering N orthonormal vectors leaves
    pairwise cosines of exactly -1/(N - 1).
    """
    E = np.asarray(E, dtype=np.float64)
    return E - E.mean(axis=0, keepdims=True)


def cosine_summary(c: np.ndarray, threshold: float = 0.15) -> dict:
    """Mean, sd (ddof=1), quantiles and the fraction below ``threshold`` of |cos| values.

    Returns:
        ``{"n", "mean", "sd", "q05", "q25", "q50", "q75", "q95", "frac_below", "threshold"}``
        with ``frac_below`` the fraction strictly below ``threshold`` (the paper's "below
        0.15"), quantiles by linear interpolation (numpy's default).
    """
    c = np.asarray(c, dtype=np.float64).ravel()
    if c.size == 0:
        raise ValueError("no cosines to summarize")
    q = np.quantile(c, [0.05, 0.25, 0.5, 0.75, 0.95])
    return {
        "n": int(c.size),
        "mean": float(c.mean()),
        "sd": float(c.std(ddof=1)) if c.size > 1 else 0.0,
        "q05": float(q[0]),
        "q25": float(q[1]),
        "q50": float(q[2]),
        "q75": float(q[3]),
        "q95": float(q[4]),
        "frac_below": float(np.mean(c < threshold)),
        "threshold": float(threshold),
    }
