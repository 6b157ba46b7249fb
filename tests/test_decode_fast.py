"""The decode loop's precomputed attention mask (grponorm.rl.kvcache.static_bias) changes no bit.

The engine hands the reserved cache's attention a finished ``(b, 1, 1, L + room)`` additive mask
instead of a growing 2D mask that ``transformers`` turns into a 4D one at every step; the
sampled tokens and log-probs must stay exactly those of the 2D-mask path.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import left_padded, tiny_decode_inputs  # noqa: E402  (tests/conftest.py)
from grponorm.rl.attention import use_gqa_attention  # noqa: E402
from grponorm.rl.kvcache import prefill, reserve, static_bias  # noqa: E402
from grponorm.rl.rollout import decode as decode_module  # noqa: E402
from grponorm.rl.rollout.decode import DecodeEngine  # noqa: E402


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def tiny(request, tiny_policy_dir):
    return tiny_decode_inputs(tiny_policy_dir, request.param)


_enc = left_padded


def test_static_bias_is_the_eager_mask_padded_to_the_buffer(tiny):
    from transformers.masking_utils import eager_mask

    model, tok, prompts = tiny
    ids, mask = _enc(tok, prompts)
    with torch.no_grad(), use_gqa_attention(model):
        cache, _, kv_mask, _ = prefill(model, ids, mask, 1, share_prefix=True)
        reserve(cache, 5)
        bias = static_bias(model, cache, kv_mask, 5)
    dtype = model.get_input_embeddings().weight.dtype
    n, L = kv_mask.shape
    assert bias.shape == (n, 1, 1, L + 5) and bias.dtype == dtype
    am = torch.cat([kv_mask, torch.ones(n, 1, dtype=kv_mask.dtype)], dim=1)  # one decode step
    ref = eager_mask(batch_size=n, q_length=1, kv_length=L + 1, q_offset=L,
                     attention_mask=am.bool(), dtype=dtype)  # (n, 1, 1, L + 1)
    bias[:, :, :, L] = 0
    assert torch.equal(bias[..., : L + 1], ref)
    assert (bias[..., L + 1 :] == torch.finfo(dtype).min).all()  # unfilled slots stay masked
    assert static_bias(model, cache, kv_mask, 4) is None  # buffer of another length: no bias


@pytest.mark.parametrize("engine_kw", [{}, {"compact_at": 0.0}, {"drop_finished": False}])
def test_static_bias_decode_is_bit_identical_to_the_2d_mask_path(tiny, monkeypatch, engine_kw):
    model, tok, prompts = tiny
    runs = []
    for patch in (False, True):
        if patch:  # the fallback path: growing 2D mask, transformers builds the 4D one
            monkeypatch.setattr(decode_module, "static_bias", lambda *a, **k: None)
        eng = DecodeEngine(model, tok, **engine_kw)
        runs.append([eng.generate(prompts, 3, max_new_tokens=6, temperature=1.0,
                                  generator_seed=s) for s in (0, 1)])
    for fast, ref in zip(*runs):
        assert torch.equal(fast.input_ids, ref.input_ids)
        assert torch.equal(fast.logprobs, ref.logprobs)
        assert torch.equal(fast.sum_pi_sq, ref.sum_pi_sq)
    assert any((b.completion_lengths < 6).any() for b in runs[0])  # rows did finish early
