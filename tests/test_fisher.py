"""Tests for the language-model Fisher diagnostic (E5): grponorm.diagnostics.fisher, the
trainer's ``diagnostics="fisher"`` option and ``grponorm diag fisher``.

Known answers: for a linear-softmax "model" (one Linear layer giving logits over K tokens for a
single-token completion) the Fisher diagonal is ``p_k (1 - p_k) x_j^2 / T^2``; the estimator
``B g_hat (.) g_hat`` must match it in expectation (enumerated exactly for small B, and by Monte
Carlo for a larger one).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import TINY_TRAIN  # noqa: E402  (tests/conftest.py)
from grponorm.diagnostics.fisher import (  # noqa: E402
    group_fisher_traces,
    reward_stats,
    sophia_fisher,
)

# ------------------------------------------------------------------------------ linear softmax


def _linear_case(K=5, d=3, T=0.7, seed=0):
    g = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(d, K, bias=False).double()
    with torch.no_grad():
        lin.weight.copy_(torch.randn(K, d, generator=g, dtype=torch.float64))
    x = torch.randn(d, generator=g, dtype=torch.float64)
    with torch.no_grad():
        p = torch.softmax(lin(x) / T, -1)
    closed = (p * (1 - p))[:, None] * (x**2)[None, :] / T**2  # (K, d) diag of F for W
    return lin, x, T, p, closed


def _estimate(lin, x, T, outputs):
    logp = torch.log_softmax(lin(x) / T, -1)
    return sophia_fisher(logp[torch.as_tensor(outputs)], [lin.weight], return_diag=True)


@pytest.mark.parametrize("B", [1, 2, 3])
def test_sophia_expectation_is_exact_fisher_diagonal(B):
    """E[B g_hat (.) g_hat] = diag F, enumerating every outcome of the B samples."""
    lin, x, T, p, closed = _linear_case()
    K = p.numel()
    mean_diag = torch.zeros_like(closed)
    mean_trace = 0.0
    for outs in itertools.product(range(K), repeat=B):
        w = float(torch.prod(p[list(outs)]))
        est = _estimate(lin, x, T, list(outs))
        mean_diag += w * est.diag[0]
        mean_trace += w * est.trace
        assert est.B == B
    torch.testing.assert_close(mean_diag, closed, rtol=1e-10, atol=1e-12)
    assert mean_trace == pytest.approx(float(closed.sum()), rel=1e-10)


def test_sophia_monte_carlo_and_untempered_bias():
    """Many draws of B=8 match tr F; scoring tempered samples with untempered log-probs is
    biased (why the diagnostic scores under logits / T)."""
    lin, x, T, p, closed = _linear_case(seed=1)
    g = torch.Generator().manual_seed(3)
    B, N = 8, 1500
    traces, wrong = [], []
    for _ in range(N):
        outs = torch.multinomial(p, B, replacement=True, generator=g)
        traces.append(_estimate(lin, x, T, outs).trace)
        wrong.append(_estimate(lin, x, 1.0, outs).trace)  # score of the T=1 policy
    traces = np.array(traces)
    se = traces.std() / np.sqrt(N)
    assert abs(traces.mean() - float(closed.sum())) < 4 * se
    # Untempered scores have mean p_T - p_1 != 0 under tempered samples: the estimate is then
    # ||x||^2 (sum p_T (1 - p_T) + B ||p_T - p_1||^2), off the target tr F_T.
    with torch.no_grad():
        p1 = torch.softmax(lin(x), -1)
    biased = float((x**2).sum() * ((p * (1 - p)).sum() + B * ((p - p1) ** 2).sum()))
    se_w = np.std(wrong) / np.sqrt(N)
    assert abs(np.mean(wrong) - biased) < 4 * se_w
    assert abs(np.mean(wrong) - float(closed.sum())) > 8 * se_w


def test_sophia_trace_is_B_times_grad_norm_and_checks_inputs():
    lin, x, T, _, _ = _linear_case()
    outs = [0, 2, 2, 4]
    logp = torch.log_softmax(lin(x) / T, -1)[outs]
    (gw,) = torch.autograd.grad(logp.mean(), [lin.weight])
    est = _estimate(lin, x, T, outs)
    assert est.trace == pytest.approx(4 * float((gw**2).sum()), rel=1e-12)
    assert lin.weight.grad is None  # .grad never written
    with pytest.raises(ValueError, match=r"\(B,\)"):
        sophia_fisher(logp[None], [lin.weight])
    with pytest.raises(ValueError, match="no parameters"):
        sophia_fisher(logp, [])


def test_reward_stats():
    r = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 1]], dtype=float)
    st = reward_stats(torch.tensor(r))
    np.testing.assert_allclose(st["p_hat"], [0.5, 1.0, 0.25])
    np.testing.assert_allclose(st["reward_var"], [0.25, 0.0, 0.1875])
    np.testing.assert_allclose(st["reward_var"], r.var(axis=1))
    np.testing.assert_allclose(st["sample_var"], r.var(axis=1, ddof=1))
    with pytest.raises(ValueError, match="n_prompts, G"):
        reward_stats(np.zeros(4))


# ------------------------------------------------------------------------------ tiny LM

pytest.importorskip("transformers")
pytest.importorskip("peft")


def test_group_traces_equal_hand_computation(tiny_policy_dir):
    """Per prompt: trace = G * ||grad of the mean completion log-likelihood||^2 (under logits/T,
    completion tokens only); .grad, mode and global RNG untouched."""
    from grponorm.rl.data import arithmetic_level, problem_messages
    from grponorm.rl.kvcache import position_ids
    from grponorm.rl.models import ModelConfig, apply_lora, chat_prompt, load_model
    from grponorm.rl.rollout.generate import HFGenerateEngine

    torch.set_num_threads(1)
    mcfg = ModelConfig(model=str(tiny_policy_dir), lora_r=4, lora_alpha=8.0, device="cpu",
                       dtype="float32")
    model, tok = load_model(mcfg)
    torch.manual_seed(0)
    model = apply_lora(model, mcfg)
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():  # non-zero LoRA B so every adapter gets a gradient
        for p in params:
            p.add_(0.05 * torch.randn_like(p))
    probs = arithmetic_level("add1", 3, seed=0)
    prompts = [chat_prompt(tok, problem_messages(p)) for p in probs]
    T, G = 0.8, 4
    batch = HFGenerateEngine(model, tok).generate(
        prompts, G, max_new_tokens=5, temperature=T, generator_seed=1
    )
    sentinel = [torch.full_like(p, 3.0) for p in params]
    for p, s in zip(params, sentinel):
        p.grad = s.clone()
    model.train()
    rng = torch.get_rng_state()
    res = group_fisher_traces(model, batch, temperature=T)
    assert torch.equal(rng, torch.get_rng_state())
    assert model.training
    for p, s in zip(params, sentinel):
        assert torch.equal(p.grad, s)
    assert res["fisher_trace"].shape == (3,) and res["seconds"] > 0

    model.eval()
    P = batch.prompt_len
    for i in range(3):
        rows = slice(i * G, (i + 1) * G)
        ids, att = batch.input_ids[rows], batch.attention_mask[rows]
        logits = model(input_ids=ids, attention_mask=att, position_ids=position_ids(att)).logits
        logp = torch.log_softmax(logits[:, P - 1 : -1].float() / T, -1)
        tok_lp = logp.gather(-1, ids[:, P:, None]).squeeze(-1)
        seq = (tok_lp * batch.completion_mask[rows]).sum(1)
        grads = torch.autograd.grad(seq.mean(), params)
        hand = G * sum(float((g.double() ** 2).sum()) for g in grads)
        assert res["fisher_trace"][i] == pytest.approx(hand, rel=1e-4)
        assert hand > 0


# ------------------------------------------------------------------------------ trainer option

TINY = {**TINY_TRAIN, "eval_every": 2, "steps": 4, "checkpoint_every": 2}
DIAG_KEYS = {"diag_problems", "fisher_trace", "reward_var", "p_hat", "diag_completion_len"}


def test_trainer_diagnostics_leave_training_unchanged(tiny_policy_dir, tmp_path):
    from grponorm.experiments import rl_train
    from grponorm.rl import trainer
    from grponorm.rl.config import TrainConfig
    from grponorm.rl.summary import TIMING_FIELDS, read_metrics

    def go(name, **kw):
        cfg = TrainConfig(model=str(tiny_policy_dir), run_dir=str(tmp_path / name),
                          cache_dir=str(tmp_path / "cache"), **{**TINY, **kw})
        rl_train.run(cfg, progress=False)
        return read_metrics(tmp_path / name, kind=None)

    plain = go("plain")
    batch = go("batch", diagnostics="fisher", diag_every=2)
    probe = go("probe", diagnostics="fisher", diag_every=1, diag_probe=3)

    def det(recs):
        drop = set(TIMING_FIELDS) | DIAG_KEYS
        return [{k: v for k, v in r.items() if k not in drop} for r in recs]

    assert det(batch) == det(plain)
    assert det(probe) == det(plain)
    tb = [r for r in batch if r["kind"] == "train"]
    assert [("fisher_trace" in r) for r in tb] == [False, True, False, True]
    for r in tb[1::2]:
        assert r["diag_problems"] == r["problems"]
        assert len(r["fisher_trace"]) == len(r["reward_var"]) == len(r["p_hat"]) == 2
        assert all(f > 0 for f in r["fisher_trace"])
        assert r["time_diag"] >= r["time_diag_fisher"] > 0
        assert {"time_diag", "time_diag_fisher"} <= set(TIMING_FIELDS)
    tp = [r for r in probe if r["kind"] == "train"]
    ids = tp[0]["diag_problems"]
    assert len(ids) == 3 and all(r["diag_problems"] == ids for r in tp)
    for r in tp:
        p_hat = np.array(r["p_hat"])
        np.testing.assert_allclose(r["reward_var"], p_hat * (1 - p_hat))
    with pytest.raises(ValueError, match="diagnostics"):
        TrainConfig(diagnostics="hessian").validate()
    with pytest.raises(ValueError, match="diag_every"):
        TrainConfig(diag_every=0).validate()
    with pytest.raises(ValueError, match="needs its diagnostic"):  # the trainer alone has none
        trainer.run(TrainConfig(model=str(tiny_policy_dir), run_dir=str(tmp_path / "x"),
                                diagnostics="fisher", **TINY), progress=False)


# ------------------------------------------------------------------------------ diag fisher


def _nonblank(path: Path) -> None:
    import matplotlib.image as mpimg

    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img[..., :3].std() > 0.05, path


def test_diag_fisher_writes_table_summary_figures(tiny_policy_dir, tmp_path):
    from grponorm.experiments import diag_fisher

    cfg = diag_fisher.FisherConfig(
        model=str(tiny_policy_dir), dtype="float32", n_train=16, steps=4, G=4,
        prompts_per_step=2, lora_r=4, lora_alpha=8.0, max_new_tokens=6, temperature=1.0, lr=5e-3,
        diag_probe=6, diag_every=1, lags=[0, 1, 2], threads=1, cache_dir=str(tmp_path / "cache"),
        out=str(tmp_path / "runs"),
    )
    s = diag_fisher.run(cfg, progress=False)
    run = Path(s["run_dir"])
    table = (run / "table.md").read_text()
    assert "0.342" in table and "-0.028" in table and "paper's Table 1" in table
    saved = json.loads((run / "summary.json").read_text())
    assert saved["measurements"] == 4 and saved["n_prompts"] == 6
    main = saved["correlations"][diag_fisher.MAIN]
    assert set(main) == {"0", "1", "2"}
    assert saved["cost"]["ratio"] > 1 and saved["cost"]["steps_with"] == 4
    pooled = saved["pooled"]["lags"]
    assert set(pooled) == {"0", "1", "2"} and pooled["0"]["pearson"]["n"] <= 4
    assert "Pooled over measurements" in table and "Holm over lags 1, 2" in table
    assert diag_fisher.reanalyze(run)["pooled"] == saved["pooled"]  # the same from the metrics
    for name in saved["figures"]:
        _nonblank(run / name)

    cfg2 = diag_fisher.FisherConfig(checkpoints=saved["train_dir"], diag_probe=6, repeats=2,
                                    threads=1, out=str(tmp_path / "runs"))
    s2 = diag_fisher.run(cfg2, progress=False)
    run2 = Path(s2["run_dir"])
    assert [st["label"] for st in s2["states"]] == ["base", "checkpoint.pt"]
    assert s2["states"][1]["step"] == 4
    assert "0.342" in (run2 / "table.md").read_text()
    assert len((run2 / "metrics.jsonl").read_text().splitlines()) == 4
    for name in s2["figures"]:
        _nonblank(run2 / name)
