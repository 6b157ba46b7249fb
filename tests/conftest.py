"""Shared fixtures: a tiny Llama policy that answers in the arithmetic task's format.

``tiny_policy_dir`` is a 2-layer, 32-wide random Llama with a word-level tokenizer and a chat
template, briefly fine-tuned (a few seconds of CPU time) to answer "answer is N" after the chat
prompts of the first 16 ``add1`` and ``mul1`` problems (data seed 0), with N the right answer in
half of the examples and a random one in the other half. Its rewards are then mixed within
groups, so advantages, gradients and optimizer state are non-trivial in trainer tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest

CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nDefault system<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
WORDS = "what is the answer + - * = ? . , user assistant system".split() + [
    str(n) for n in range(-9, 82)
]


def tiny_tokenizer():
    """Word-level tokenizer (whitespace split) with <|im_start|>/<|im_end|> and a template."""
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<|im_start|>", "<|im_end|>"]
    vocab = {w: i for i, w in enumerate(specials + WORDS)}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<|im_start|>", eos_token="<|im_end|>"
    )
    hf.chat_template = CHAT_TEMPLATE
    return hf


def tiny_model(vocab_size: int, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(config).eval()


def _teach_format(model, tok, steps: int = 40) -> None:
    """A few Adam steps on '<prompt> answer is N <|im_end|>', N right or random."""
    import torch

    from grponorm.rl.data import arithmetic_level, problem_messages
    from grponorm.rl.models import chat_prompt

    g = torch.Generator().manual_seed(0)
    tok.padding_side = "left"
    tok.pad_token = tok.eos_token
    problems = arithmetic_level("add1", 16, seed=0) + arithmetic_level("mul1", 16, seed=0)
    texts = []
    for p in problems:
        wrong = int(torch.randint(19, (1,), generator=g))
        for n in (p.answer, wrong):
            texts.append(chat_prompt(tok, problem_messages(p)) + f"answer is {n} <|im_end|>")
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    labels = enc["input_ids"].clone()
    labels[:, : labels.shape[1] - 4] = -100  # learn only the answer and the eos
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is faster, and robust to a busy CPU
    try:
        model.train()
        for _ in range(steps):
            opt.zero_grad()
            model(**enc, labels=labels).loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
        model.eval()


@pytest.fixture(scope="session")
def tiny_policy_dir(tmp_path_factory) -> Path:
    """A local model folder: tiny Llama + tokenizer that answers 'answer is D'."""
    pytest.importorskip("transformers")
    path = tmp_path_factory.mktemp("tiny-policy")
    tok = tiny_tokenizer()
    model = tiny_model(len(tok))
    _teach_format(model, tok)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


#: Settings of a tiny, fast training run on the tiny policy.
TINY_TRAIN = dict(  # float32: the same arithmetic on every CPU (dtype="auto" is tested apart)
    dtype="float32",
    levels=["add1", "mul1"],
    n_train=16,
    n_eval=2,
    G=4,
    prompts_per_step=2,
    max_new_tokens=6,
    temperature=1.0,
    lr=5e-3,
    lora_r=4,
    lora_alpha=8.0,
    threads=1,
    eval_every=3,
)


def tiny_train_config(model_dir, tmp_path, **kw):
    """A TrainConfig of a tiny run on ``model_dir``, writing under ``tmp_path``."""
    from grponorm.rl.config import TrainConfig

    return TrainConfig(model=str(model_dir), out=str(tmp_path / "runs"),
                       cache_dir=str(tmp_path / "cache"), **{**TINY_TRAIN, **kw})


def tiny_decode_inputs(model_dir, dtype: str = "float32"):
    """(model, tokenizer, prompts) of the decode tests: two add1 and two mul1 chat prompts of
    different lengths (left padding in play)."""
    from grponorm.rl.data import arithmetic_level, problem_messages
    from grponorm.rl.models import ModelConfig, chat_prompt, load_model

    model, tok = load_model(ModelConfig(model=str(model_dir), dtype=dtype))
    problems = arithmetic_level("add1", 2, seed=0) + arithmetic_level("mul1", 2, seed=0)
    prompts = [chat_prompt(tok, problem_messages(p)) for p in problems]
    prompts[1] += " what is"
    return model, tok, prompts


def left_padded(tok, prompts):
    """(input_ids, attention_mask) of ``prompts``, left-padded, no special tokens added."""
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    return enc["input_ids"], enc["attention_mask"]
