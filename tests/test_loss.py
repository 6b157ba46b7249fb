"""Tests for grponorm.rl.loss: hand-computable gradients, clipping, aggregation, k3 KL."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from grponorm.rl.kvcache import position_ids  # noqa: E402
from grponorm.rl.logprobs import token_logprobs  # noqa: E402
from grponorm.rl.loss import k3_kl, policy_gradient_loss  # noqa: E402


def _policy(T=3, V=5, seed=0):
    """Free per-position logits theta (T, V) and sampled tokens: logp_t = log softmax(theta_t)."""
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(T, V, generator=g, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(V, (T,), generator=g)
    return theta, tokens


def _logp(theta, tokens):
    return torch.log_softmax(theta, dim=-1).gather(1, tokens[:, None]).squeeze(1)  # (T,)


@pytest.mark.parametrize("agg", ["seq_mean", "token_sum"])
def test_gradient_is_minus_advantage_times_grad_logpi(agg):
    theta, tokens = _policy()
    A = 0.7
    logp = _logp(theta, tokens)[None]  # (1, T)
    loss, stats = policy_gradient_loss(
        logp, torch.tensor([A], dtype=torch.float64), torch.ones_like(logp), agg=agg, max_tokens=3
    )
    (g,) = torch.autograd.grad(loss, theta)
    (glog,) = torch.autograd.grad(_logp(theta, tokens).sum(), theta)
    # One sequence of T = 3 tokens: seq_mean divides by |o| = 3, token_sum by B * T_max = 3.
    torch.testing.assert_close(g, -A * glog / 3)
    assert loss.item() == pytest.approx(-A)  # ratio = 1 on-policy: loss = -A
    assert stats["ratio_mean"] == pytest.approx(1.0) and stats["tokens"] == 3


def test_clipping_zeroes_gradient_outside_trust_region():
    eps = 0.2
    logp = torch.zeros(4, 1, dtype=torch.float64, requires_grad=True)
    # ratios exp(logp - old): 1.5 (A>0, clipped), 0.5 (A>0, not clipped: min keeps the lower
    # unclipped value), 0.5 (A<0, clipped), 1.1 (inside, never clipped)
    old = torch.log(torch.tensor([[1 / 1.5], [2.0], [2.0], [1 / 1.1]], dtype=torch.float64))
    adv = torch.tensor([1.0, 1.0, -1.0, 1.0], dtype=torch.float64)
    loss, stats = policy_gradient_loss(logp, adv, torch.ones_like(logp), old_logp=old, clip_eps=eps)
    (g,) = torch.autograd.grad(loss, logp)
    ratio = torch.exp(logp.detach() - old)
    # d(-rho A)/d logp = -rho A / B for the unclipped rows; 0 for the clipped ones.
    expected = torch.tensor([[0.0], [-0.5 * 1.0], [0.0], [-1.1]], dtype=torch.float64) / 4
    torch.testing.assert_close(g, expected)
    assert stats["clip_frac"] == pytest.approx(0.5)
    # Loss value: mean over rows of -min(rho A, clip(rho) A).
    want = -(1.2 * 1 + 0.5 * 1 + 0.8 * (-1) + 1.1 * 1) / 4
    assert loss.item() == pytest.approx(want)
    assert ratio[0, 0].item() == pytest.approx(1.5)


def test_no_clipping_without_eps():
    logp = torch.zeros(1, 1, dtype=torch.float64, requires_grad=True)
    old = torch.log(torch.tensor([[1 / 1.5]], dtype=torch.float64))
    loss, _ = policy_gradient_loss(
        logp, torch.ones(1, dtype=torch.float64), torch.ones_like(logp), old_logp=old
    )
    (g,) = torch.autograd.grad(loss, logp)
    assert g.item() == pytest.approx(-1.5)


def test_token_sum_vs_seq_mean_weighting():
    # Two sequences: lengths 1 and 3 (padded to T = 4), advantage 1 each.
    mask = torch.tensor([[1.0, 0, 0, 0], [1, 1, 1, 0]], dtype=torch.float64)
    adv = torch.ones(2, dtype=torch.float64)
    for agg, expected in [
        ("seq_mean", [[-1 / 2, 0, 0, 0], [-1 / 6, -1 / 6, -1 / 6, 0]]),  # 1/(B |o_i|)
        ("token_sum", [[-1 / 16, 0, 0, 0], [-1 / 16, -1 / 16, -1 / 16, 0]]),  # 1/(B T_max)
    ]:
        logp = torch.zeros(2, 4, dtype=torch.float64, requires_grad=True)
        loss, _ = policy_gradient_loss(logp, adv, mask, agg=agg, max_tokens=8)
        (g,) = torch.autograd.grad(loss, logp)
        torch.testing.assert_close(g, torch.tensor(expected, dtype=torch.float64))
    # token_sum's default constant is the padded length T.
    logp = torch.zeros(2, 4, dtype=torch.float64, requires_grad=True)
    loss, _ = policy_gradient_loss(logp, adv, mask, agg="token_sum")
    assert loss.item() == pytest.approx(-4 / (2 * 4))


def test_masked_tokens_get_no_gradient_and_zero_advantage_no_loss():
    logp = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1.0, 1, 0], [1, 0, 0]], dtype=torch.float64)
    loss, _ = policy_gradient_loss(logp, torch.tensor([0.5, -2.0], dtype=torch.float64), mask)
    (g,) = torch.autograd.grad(loss, logp)
    assert (g[mask == 0] == 0).all() and (g[mask == 1] != 0).all()
    loss0, _ = policy_gradient_loss(logp, torch.zeros(2, dtype=torch.float64), mask)
    (g0,) = torch.autograd.grad(loss0, logp)
    assert loss0.item() == 0 and (g0 == 0).all()


def test_k3_kl_value_gradient_and_penalty():
    logp = torch.tensor([[-1.0, -2.0]], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([[-1.0, -1.5]], dtype=torch.float64)
    kl = k3_kl(logp, ref)
    d = 0.5  # ref - logp on the second token
    assert kl[0, 0].item() == 0.0
    assert kl[0, 1].item() == pytest.approx(torch.exp(torch.tensor(d)).item() - d - 1)
    assert (k3_kl(torch.randn(100), torch.randn(100)) >= 0).all()
    beta = 0.1
    loss, stats = policy_gradient_loss(
        logp, torch.zeros(1, dtype=torch.float64), torch.ones_like(logp), ref_logp=ref, kl_coef=beta
    )
    (g,) = torch.autograd.grad(loss, logp)
    # d/dlogp [exp(ref - logp) - (ref - logp) - 1] = 1 - exp(ref - logp); seq_mean divides by 2.
    expected = beta * (1 - torch.exp(ref - logp.detach())) / 2
    torch.testing.assert_close(g, expected)
    assert stats["kl"] == pytest.approx(kl.mean().item())


def test_k3_is_unbiased_for_kl():
    # E_{x ~ p}[k3] = KL(p || q) for categorical p, q.
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(6, generator=g, dtype=torch.float64), 0)
    q = torch.softmax(torch.randn(6, generator=g, dtype=torch.float64), 0)
    exact = (p * (p.log() - q.log())).sum()
    expected_k3 = (p * k3_kl(p.log(), q.log())).sum()
    assert expected_k3.item() == pytest.approx(exact.item(), rel=1e-12)


def test_input_validation():
    logp = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="agg"):
        policy_gradient_loss(logp, torch.zeros(2), torch.ones(2, 3), agg="mean")
    with pytest.raises(ValueError, match="adv"):
        policy_gradient_loss(logp, torch.zeros(3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="ref_logp"):
        policy_gradient_loss(logp, torch.zeros(2), torch.ones(2, 3), kl_coef=0.1)
    with pytest.raises(ValueError, match="completion_mask"):
        policy_gradient_loss(logp, torch.zeros(2), torch.ones(2, 4))


def test_position_ids_follow_left_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert position_ids(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]


@pytest.fixture(scope="module")
def tiny():
    pytest.importorskip("transformers")
    from conftest import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    return tiny_model(len(tok)), tok


def test_token_logprobs_matches_log_softmax_and_ignores_left_padding(tiny):
    model, _ = tiny
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    full = token_logprobs(model, ids, torch.ones_like(ids))  # (1, 5)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1]
    manual = torch.log_softmax(logits.float(), -1).gather(1, ids[0, 1:, None]).squeeze(1)
    torch.testing.assert_close(full[0].detach(), manual, rtol=1e-5, atol=1e-5)
    tail = token_logprobs(model, ids, torch.ones_like(ids), completion_len=2)
    torch.testing.assert_close(tail, full[:, -2:], rtol=1e-5, atol=1e-5)
    # The same sequence left-padded by 3 gives the same log-probs on its real tokens.
    padded = torch.cat([torch.full((1, 3), 2), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones_like(ids)], dim=1)
    lp = token_logprobs(model, padded, mask, completion_len=3)
    torch.testing.assert_close(lp, full[:, -3:], rtol=1e-5, atol=1e-5)
    assert lp.requires_grad


def test_grouped_logprobs_equal_plain_pass_with_gradients(tiny):
    from grponorm.rl.logprobs import grouped_token_logprobs

    model, _ = tiny
    g = torch.Generator().manual_seed(1)
    G, P, C = 3, 6, 4
    prompts = torch.randint(3, 20, (2, P), generator=g)
    prompts[1, :2] = 2  # second prompt left-padded by 2
    pmask = torch.ones(2, P, dtype=torch.long)
    pmask[1, :2] = 0
    comp = torch.randint(3, 20, (2 * G, C), generator=g)
    cmask = torch.ones(2 * G, C, dtype=torch.long)
    cmask[0, 2:] = 0  # first completion ended early
    ids = torch.cat([prompts.repeat_interleave(G, 0), comp], dim=1)
    mask = torch.cat([pmask.repeat_interleave(G, 0), cmask], dim=1)
    plain = token_logprobs(model, ids, mask, completion_len=C)
    (g_plain,) = torch.autograd.grad((plain * cmask).sum(), model.model.embed_tokens.weight)
    grouped = grouped_token_logprobs(model, ids, mask, prompt_len=P, group_size=G)
    (g_grp,) = torch.autograd.grad((grouped * cmask).sum(), model.model.embed_tokens.weight)
    torch.testing.assert_close(grouped * cmask, plain * cmask, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(g_grp, g_plain, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="groups"):
        grouped_token_logprobs(model, ids[:5], mask[:5], prompt_len=P, group_size=G)
