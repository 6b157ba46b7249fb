"""Tests for grponorm.rl.rollout.vllm without vllm: a fake LLM, and the weight mapping on CPU."""

from __future__ import annotations

import copy
import os
import random
import sys
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from grponorm.rl.models import ModelConfig, apply_lora, load_model  # noqa: E402
from grponorm.rl.rollout import RolloutBatch, RolloutEngine  # noqa: E402
from grponorm.rl.rollout.vllm import VLLMEngine, _weight_loader, merged_state_items  # noqa: E402

PROMPTS = ["what is 2 + 3 ?", "what is 4 * 5 ? answer"]  # different lengths: left padding


@pytest.fixture(scope="module")
def model_tok(tiny_policy_dir):
    return load_model(ModelConfig(model=str(tiny_policy_dir), device="cpu", dtype="float32"))


class FakeParams:
    def __init__(self, **kw):
        self.__dict__.update(kw)


class FakeLLM:
    """Answers like ``vllm.LLM.generate``: one RequestOutput per prompt, ``n`` completions."""

    def __init__(self, tok):
        self.words = [tok.convert_tokens_to_ids(w) for w in ("answer", "is", "7", "3")]
        self.eos = tok.eos_token_id
        self.calls = []

    def generate(self, requests, params, use_tqdm=True):
        self.calls.append((requests, params))
        return [self._request(r, p) for r, p in zip(requests, params)]

    def _request(self, req, p):
        a, b, seven, three = self.words
        body = [a, b, seven if p.seed % 2 else three]
        kinds = [  # (token_ids, finish_reason, stop_reason); index k -> completion k
            (body + [self.eos], "stop", None),  # eos included (what vLLM V1 returns)
            (body + [a, b, a, b][: p.max_tokens - 3], "length", None),  # cut at max_tokens
            ([self.eos], "stop", None),  # ended at once
            (body[:2], "stop", self.eos),  # stop token left out: the engine appends it
        ]
        outs = []
        for k in reversed(range(p.n)):  # out of order: the engine sorts by index
            ids, reason, stop = kinds[k % 4]
            lps = [{t: SimpleNamespace(logprob=-0.1 * (j + 1))} for j, t in enumerate(ids)]
            outs.append(
                SimpleNamespace(
                    index=k,
                    token_ids=tuple(ids),
                    logprobs=lps,
                    finish_reason=reason,
                    stop_reason=stop,
                )
            )
        return SimpleNamespace(prompt_token_ids=req["prompt_token_ids"], outputs=outs)


def test_constructing_without_vllm_raises_a_clear_error(model_tok, monkeypatch):
    model, tok = model_tok
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError, even if installed
    with pytest.raises(ImportError, match="pip install vllm"):
        VLLMEngine(model, tok)


def test_generate_with_a_fake_llm(model_tok):
    model, tok = model_tok
    llm = FakeLLM(tok)
    engine = VLLMEngine(model, tok, llm=llm, sampling_params_cls=FakeParams)
    assert isinstance(engine, RolloutEngine)
    G, eos = 4, tok.eos_token_id
    b = engine.generate(PROMPTS, G, max_new_tokens=6, temperature=0.7, top_p=0.9, generator_seed=5)
    assert isinstance(b, RolloutBatch) and b.G == G and b.n_prompts == 2
    assert b.group.tolist() == [0] * 4 + [1] * 4
    requests, params = llm.calls[0]
    for i, (req, p) in enumerate(zip(requests, params)):
        assert req["prompt_token_ids"] == tok(PROMPTS[i], add_special_tokens=False)["input_ids"]
        assert (p.n, p.max_tokens, p.seed, p.logprobs) == (G, 6, (5 * 7919 + i) * G, 0)
        assert (p.temperature, p.top_p, p.stop_token_ids) == (0.7, 0.9, engine.eos_ids)
    assert b.prompt_len == len(requests[1]["prompt_token_ids"])  # the longer prompt, unpadded
    assert b.input_ids[0, 0] == tok.pad_token_id and b.attention_mask[0, 0] == 0
    lengths = [4, 6, 1, 3]  # eos counted; cut rows count every token; appended eos counted
    assert b.completion_lengths.tolist() == lengths * 2
    assert b.completion_ids.shape == (8, 6)
    for r in range(8):
        n, comp = lengths[r % 4], b.completion_ids[r].tolist()
        assert b.completion_mask[r].tolist() == [1.0] * n + [0.0] * (6 - n)
        assert b.attention_mask[r, b.prompt_len :].tolist() == [1] * n + [0] * (6 - n)
        if r % 4 != 1:
            assert comp[n - 1] == eos and all(t == tok.pad_token_id for t in comp[n:])
        lp = b.logprobs[r]
        assert lp.dtype == torch.float32 and (lp[n:] == 0).all()
        expected = [-0.1 * (j + 1) for j in range(n)]
        if r % 4 == 3:
            expected[-1] = 0.0  # the appended eos has no log-prob from vLLM
        torch.testing.assert_close(lp[:n], torch.tensor(expected))
    # prompt 0 has seed 5*7919*4 (even: "3"), prompt 1 seed (5*7919+1)*4 (even too)
    assert b.texts[:4] == ["answer is 3", "answer is 3 answer is answer", "", "answer is"]
    assert b.texts[4:] == b.texts[:4]


def test_greedy_asks_for_one_sample_and_repeats_it(model_tok):
    model, tok = model_tok
    llm = FakeLLM(tok)
    engine = VLLMEngine(model, tok, llm=llm, sampling_params_cls=FakeParams)
    b = engine.generate(PROMPTS, 3, max_new_tokens=6, temperature=0.0)
    assert all(p.n == 1 and p.top_p == 1.0 for p in llm.calls[0][1])
    # seeds (0 * 7919 + i) * 3: prompt 0 even ("3"), prompt 1 odd ("7")
    assert b.input_ids.shape[0] == 6 and b.texts == ["answer is 3"] * 3 + ["answer is 7"] * 3
    with pytest.raises(ValueError, match="G >= 1"):
        engine.generate(PROMPTS, 0, max_new_tokens=6)
    # pad == eos here, so padding hides a missing eos except in the widest row: check directly
    eos = tok.eos_token_id
    row = SimpleNamespace(token_ids=(5,), logprobs=None, finish_reason="stop", stop_reason=None)
    assert engine._row(row) == ([5, eos], [0.0, 0.0])
    lp = [{5: SimpleNamespace(logprob=-1.5)}, {eos: SimpleNamespace(logprob=float("nan"))}]
    row = SimpleNamespace(token_ids=(5, eos), logprobs=lp, finish_reason="stop", stop_reason=None)
    assert engine._row(row) == ([5, eos], [-1.5, 0.0])
    row = SimpleNamespace(token_ids=(5, 6), logprobs=None, finish_reason="length", stop_reason=None)
    assert engine._row(row) == ([5, 6], [0.0, 0.0])


@pytest.fixture(scope="module")
def peft_model(tiny_policy_dir):
    cfg = ModelConfig(model=str(tiny_policy_dir), device="cpu", lora_r=2, dtype="float32")
    model = apply_lora(load_model(cfg)[0], cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return model, cfg


def test_merged_state_items_maps_peft_to_plain_names(peft_model, tiny_policy_dir):
    model, cfg = peft_model
    plain = load_model(ModelConfig(model=str(tiny_policy_dir), device="cpu", dtype="float32"))[0]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        logits = model(input_ids=x).logits
    got = {n: t.detach().clone() for n, t in merged_state_items(model)}
    assert list(got) == list(plain.state_dict())
    merged = copy.deepcopy(model).merge_and_unload().state_dict()
    assert set(merged) == set(got)
    for n, t in got.items():
        torch.testing.assert_close(t, merged[n], rtol=0, atol=1e-6)
    # afterwards: unmerged, base weights bit-identical, same outputs
    assert not any(getattr(m, "merged", False) for m in model.modules())
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n
    with torch.no_grad():
        assert torch.equal(model(input_ids=x).logits, logits)
    q = model.base_model.model.model.layers[0].self_attn.q_proj  # W + scale * B A, explicitly
    W, A, B = q.get_base_layer().weight, q.lora_A["default"].weight, q.lora_B["default"].weight
    new = got["model.layers.0.self_attn.q_proj.weight"]
    torch.testing.assert_close(new, W + cfg.lora_alpha / cfg.lora_r * B @ A)
    assert not torch.allclose(new, W)


def test_sync_weights_pushes_plain_names_and_resets_the_cache(peft_model, model_tok):
    model, _ = peft_model
    tok = model_tok[1]
    received, resets = [], []

    def receive(items):  # what vLLM holds: a copy of each tensor when it is pushed
        received.extend((n, t.detach().clone()) for n, t in items)

    class NewLLM(FakeLLM):  # newer vLLM: LLM.apply_model
        def apply_model(self, func):
            return [func(SimpleNamespace(load_weights=receive))]

        def reset_prefix_cache(self):
            resets.append(len(received))

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    merged = copy.deepcopy(model).merge_and_unload().state_dict()
    engine = VLLMEngine(model, tok, llm=NewLLM(tok), sampling_params_cls=FakeParams)
    engine.sync_weights()
    assert [n for n, _ in received] == list(merged)  # every weight once, plain names
    for n, t in received:  # pushed while merged: W + scale * B A, not the bare base W
        torch.testing.assert_close(t, merged[n], rtol=0, atol=1e-6)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(dict(received)[q], before[f"base_model.model.{q}".replace(
        ".weight", ".base_layer.weight")])
    assert resets == [len(merged)]  # the prefix cache is dropped once, after the last weight
    for n, p in model.named_parameters():  # and the policy is left as it was, bit for bit
        assert torch.equal(p, before[n]), n


def test_weight_loader_prefers_apply_model_and_names_what_is_missing():
    old_path = []  # older vLLM: llm.llm_engine.model_executor.driver_worker.model_runner.model
    runner = SimpleNamespace(model=SimpleNamespace(load_weights=old_path.extend))
    executor = SimpleNamespace(driver_worker=SimpleNamespace(model_runner=runner))
    applied = []
    both = SimpleNamespace(llm_engine=SimpleNamespace(model_executor=executor),
                           apply_model=lambda f: applied.append(f(runner.model)))
    _weight_loader(both)([("a", 1)])  # apply_model runs the load inside the engine's model
    assert old_path == [("a", 1)] and applied == [None]
    old_path.clear()
    _weight_loader(SimpleNamespace(llm_engine=SimpleNamespace(model_executor=executor)))(
        [("b", 2)])
    assert old_path == [("b", 2)]
    with pytest.raises(RuntimeError, match="neither LLM.apply_model nor"):
        _weight_loader(SimpleNamespace(generate=None))


class _FakeVLLM:
    """Stands in for the ``vllm`` module: ``LLM(**kwargs)`` records its arguments and the
    environment it was built in, and reseeds the global RNGs as vLLM does."""

    def __init__(self, tok):
        self.built = []

        outer = self

        class LLM(FakeLLM):
            def __init__(self, **kwargs):
                outer.built.append((kwargs, os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")))
                random.seed(1)
                np.random.seed(1)  # noqa: NPY002 (vLLM seeds the global states)
                torch.manual_seed(1)
                FakeLLM.__init__(self, tok)

            def generate(self, requests, params, use_tqdm=True):
                random.seed(2)
                torch.manual_seed(2)
                return FakeLLM.generate(self, requests, params, use_tqdm)

        self.LLM, self.SamplingParams = LLM, FakeParams


def _rng_draws():
    return random.random(), float(np.random.random()), float(torch.rand(1))  # noqa: NPY002


def test_engine_builds_vllm_from_the_base_checkpoint(peft_model, model_tok, tiny_policy_dir,
                                                     monkeypatch):
    model, _ = peft_model
    tok = model_tok[1]
    fake = _FakeVLLM(tok)
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    random.seed(7)
    np.random.seed(7)  # noqa: NPY002
    torch.manual_seed(7)
    expected = _rng_draws()
    random.seed(7)
    np.random.seed(7)  # noqa: NPY002
    torch.manual_seed(7)
    engine = VLLMEngine(model, tok, gpu_memory_utilization=0.5, dtype="bfloat16",
                        enable_prefix_caching=False)
    (kwargs, env), = fake.built
    assert kwargs == {"model": str(tiny_policy_dir), "dtype": "bfloat16",
                      "gpu_memory_utilization": 0.5, "enable_prefix_caching": False,
                      "logprobs_mode": "raw_logprobs"}  # the base model vLLM loads, not LoRA
    assert env == "0"  # in-process engine while it is built (weights sync in memory) ...
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in os.environ  # ... and unset afterwards
    assert engine.sampling_params_cls is FakeParams  # vllm.SamplingParams
    engine.generate(PROMPTS, 2, max_new_tokens=4)
    assert _rng_draws() == expected  # vLLM's reseeding did not touch the caller's streams

    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")  # the user's choice stays
    VLLMEngine(model, tok)
    assert fake.built[-1][1] == "1" and os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1"
    assert fake.built[-1][0]["dtype"] == "auto" and fake.built[-1][0]["enable_prefix_caching"]


def test_base_checkpoint_must_be_known(model_tok, monkeypatch):
    model, tok = model_tok
    monkeypatch.setitem(sys.modules, "vllm", _FakeVLLM(tok))
    monkeypatch.setattr(model, "name_or_path", "")
    monkeypatch.setattr(model.config, "_name_or_path", "")
    with pytest.raises(ValueError, match="no name_or_path"):
        VLLMEngine(model, tok)
