"""Random-weight models of known shapes (``--model random:<shape>``) and the FLOP convention.

The ``cuda`` tests run where torch sees a GPU (``scripts/device_check.sh`` runs them) and skip
elsewhere.
"""

from __future__ import annotations

import pytest
import torch

from grponorm.rl.config import TrainConfig
from grponorm.rl.models import (
    ModelConfig,
    apply_lora,
    load_model,
    parameter_count,
    trainable_parameter_count,
)
from grponorm.rl.policy import load_policy
from grponorm.rl.random_model import MASKED_LOGIT, random_model_facts
from grponorm.rl.shapes import (
    SHAPES,
    lora_parameter_count,
    parse_random,
    step_flops,
)

#: Qwen/Qwen2.5-Math-1.5B's config.json (as published on the hub), the fields a shape fixes.
QWEN25_MATH_15B = {
    "hidden_size": 1536, "num_hidden_layers": 28, "num_attention_heads": 12,
    "num_key_value_heads": 2, "intermediate_size": 8960, "vocab_size": 151936,
    "max_position_embeddings": 4096, "rope_theta": 10000.0, "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True, "max_window_layers": 21, "hidden_act": "silu",
    "initializer_range": 0.02,
}
TINY = "random:qwen2.5-tiny"
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_paper_shape_is_qwen25_math_15b_config():
    shape = SHAPES["qwen2.5-math-1.5b"]
    assert {k: getattr(shape, k) for k in QWEN25_MATH_15B} == QWEN25_MATH_15B
    assert shape.head_dim == 128
    # Qwen reports 1.54B parameters; the architecture built on the meta device agrees.
    assert shape.parameter_count() == 1_543_714_304
    from transformers import Qwen2Config, Qwen2ForCausalLM

    with torch.device("meta"):
        model = Qwen2ForCausalLM(Qwen2Config(**shape.hf_config()))
    assert parameter_count(model) == shape.parameter_count() == shape.matmul_parameter_count()
    rope = getattr(model.config, "rope_parameters", None) or {"rope_theta": model.config.rope_theta}
    assert rope["rope_theta"] == 10000.0  # not transformers' Qwen2 default (1e6)
    assert not model.config.use_sliding_window


def test_parse_random_names_and_errors():
    assert parse_random(TINY).seed == 0
    assert parse_random(TINY + "@7").seed == 7
    assert parse_random(TINY).shape is SHAPES["qwen2.5-tiny"]
    with pytest.raises(ValueError, match="known: random:qwen2.5-math-1.5b, random:qwen2.5-tiny"):
        parse_random("random:qwen3")
    for bad in (TINY + "@", TINY + "@-1", TINY + "@x"):
        with pytest.raises(ValueError, match="not a non-negative integer"):
            parse_random(bad)
    with pytest.raises(ValueError, match="known: "):
        ModelConfig(model="random:llama")  # refused before anything loads


def test_step_flops_convention():
    n, p, c = 1000, 30, 70
    full = step_flops(n, p, c)
    assert full["rollout"] == 2 * n * 100 and full["train"] == 6 * n * 100  # 6N per token
    lora = step_flops(n, p, c, n_lora=10)
    assert lora["train"] == (4 * n + 6 * 10) * 100  # frozen weights: no weight gradient
    assert lora["total"] == lora["rollout"] + lora["train"]
    with pytest.raises(ValueError):
        step_flops(n, -1, c)


@pytest.mark.model
def test_random_model_is_seeded_eos_off_and_lora_count_matches():
    rng_before = torch.get_rng_state()
    cfg = ModelConfig(model=TINY, dtype="float32", device="cpu")
    a, tok = load_model(cfg)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is untouched
    b, _ = load_model(cfg)
    c, _ = load_model(ModelConfig(model=TINY + "@1", dtype="float32", device="cpu"))
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)
    shape = SHAPES["qwen2.5-tiny"]
    assert parameter_count(a) == shape.parameter_count()
    assert len(tok) <= shape.vocab_size and tok.eos_token_id == a.generation_config.eos_token_id
    logits = a(**tok(["what is 2 + 3 ?"], return_tensors="pt")).logits
    assert logits.shape[-1] == shape.vocab_size
    assert torch.all(logits[..., tok.eos_token_id] == MASKED_LOGIT)
    assert torch.isfinite(logits).all()  # finite mask: entropies stay finite
    assert random_model_facts(TINY)["eos"].startswith("off")
    torch.manual_seed(0)
    lora = apply_lora(a, ModelConfig(model=TINY, lora_r=4, lora_targets=("q_proj", "v_proj")))
    assert trainable_parameter_count(lora) == lora_parameter_count(shape, 4, ["q_proj", "v_proj"])


@pytest.mark.model
@pytest.mark.parametrize("engine", ["decode", "generate"])
def test_random_model_rollouts_run_to_max_new_tokens(engine):
    cfg = TrainConfig(model=TINY, dtype="float32", device="cpu", rollout=engine, threads=1)
    policy = load_policy(cfg)
    batch = policy.engine.generate(["what is 2 + 3 ?", "what is 4 * 5 ?"], 3, max_new_tokens=6,
                                   temperature=1.0, top_p=1.0, generator_seed=0)
    assert batch.completion_mask.shape == (6, 6)
    assert bool(batch.completion_mask.bool().all())  # no completion ended early


@pytest.mark.model
def test_a_run_on_a_random_model_says_so_in_its_summary(tmp_path):
    """The shape, the init seed and EOS off are in summary.json, not only in the model name."""
    from grponorm.rl.trainer import run

    summary = run(TrainConfig(model=TINY, dtype="float32", steps=1, G=2, prompts_per_step=2,
                              max_new_tokens=3, n_train=4, n_eval=0, eval_every=0,
                              checkpoint_every=0, threads=1, run_dir=str(tmp_path / "r")),
                  progress=False)
    assert summary == {**summary, **random_model_facts(TINY)}
    assert summary["eos"].startswith("off")


def test_random_model_refuses_vllm():
    with pytest.raises(ValueError, match="random model"):
        load_policy(TrainConfig(model=TINY, rollout="vllm"))


# --------------------------------------------------------------------------- on a GPU


@pytest.mark.cuda
@cuda
def test_cuda_paper_shape_builds_seeded_in_bf16():
    cfg = ModelConfig(model="random:qwen2.5-math-1.5b", dtype="bfloat16", device="cuda")
    model, tok = load_model(cfg)
    assert parameter_count(model) == 1_543_714_304
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert next(model.parameters()).device.type == "cuda"
    w = model.model.layers[0].mlp.down_proj.weight.float()
    assert 0.015 < float(w.std()) < 0.025  # the architecture's init, std 0.02
    again, _ = load_model(cfg)
    assert torch.equal(model.lm_head.weight, again.lm_head.weight)  # seeded
    del again
    ids = tok(["what is 2 + 3 ?"] * 4, return_tensors="pt").to("cuda")
    with torch.no_grad():
        logits = model(**ids).logits
    assert torch.isfinite(logits).all()
    assert torch.all(logits[..., tok.eos_token_id] == MASKED_LOGIT)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("engine", ["decode", "generate"])
def test_cuda_rollouts_run_to_max_new_tokens(engine):
    cfg = TrainConfig(model="random:qwen2.5-math-1.5b", dtype="bfloat16", device="cuda",
                      rollout=engine)
    policy = load_policy(cfg)
    policy.attach_lora()
    batch = policy.engine.generate(["what is 2 + 3 ?", "what is 4 * 5 ?"], 8, max_new_tokens=32,
                                   temperature=1.0, top_p=1.0, generator_seed=0)
    assert batch.completion_mask.shape == (16, 32)
    assert bool(batch.completion_mask.bool().all())
