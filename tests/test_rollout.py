"""Tests for grponorm.rl.rollout: masks from the first eos, grouping, seeding, prompt sharing.

The interface tests run on both engines: ``HFGenerateEngine`` and ``decode.DecodeEngine``.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from grponorm.rl.data import arithmetic_level, problem_messages  # noqa: E402
from grponorm.rl.logprobs import token_logprobs  # noqa: E402
from grponorm.rl.models import ModelConfig, chat_prompt, load_model  # noqa: E402
from grponorm.rl.rollout import RolloutBatch, RolloutEngine  # noqa: E402
from grponorm.rl.rollout.base import completion_mask_from_eos  # noqa: E402
from grponorm.rl.rollout.decode import DecodeEngine  # noqa: E402
from grponorm.rl.rollout.generate import HFGenerateEngine  # noqa: E402

EOS = 2
ENGINES = pytest.mark.parametrize("Engine", [HFGenerateEngine, DecodeEngine])


def test_completion_mask_from_first_eos():
    ids = torch.tensor(
        [
            [5, 6, EOS, EOS, EOS],  # eos then pad (= eos): the first eos counts, the pads do not
            [5, 6, 7, 8, 9],  # cut at the limit: everything counts
            [EOS, EOS, EOS, EOS, EOS],  # ended at once: only the eos counts
            [5, 9, EOS, 4, EOS],  # tokens after the first eos never count
        ]
    )
    mask = completion_mask_from_eos(ids, [EOS])
    assert mask.tolist() == [
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1],
        [1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0],
    ]
    assert completion_mask_from_eos(ids, [EOS, 9])[1].tolist() == [1, 1, 1, 1, 1]
    assert completion_mask_from_eos(ids, [EOS, 9])[3].tolist() == [1, 1, 0, 0, 0]


@pytest.fixture(scope="module")
def engine_and_prompts(tiny_policy_dir):
    model, tok = load_model(ModelConfig(model=str(tiny_policy_dir), dtype="float32"))
    problems = arithmetic_level("add1", 3, seed=0)
    prompts = [chat_prompt(tok, problem_messages(p)) for p in problems]
    prompts[1] += " what is"  # make the prompts different lengths (left padding in play)
    return model, tok, prompts


def _gen(engine, prompts, seed, G=4, temperature=1.0):
    return engine.generate(
        prompts, G, max_new_tokens=6, temperature=temperature, top_p=1.0, generator_seed=seed
    )


@ENGINES
def test_batch_layout_and_masks(engine_and_prompts, Engine):
    model, tok, prompts = engine_and_prompts
    engine = Engine(model, tok)
    assert isinstance(engine, RolloutEngine)
    b = _gen(engine, prompts, seed=0)
    assert isinstance(b, RolloutBatch)
    B, G = 3 * 4, 4
    assert b.input_ids.shape[0] == B and b.G == G and b.n_prompts == 3
    assert b.group.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert len(b.texts) == B
    P = b.prompt_len
    assert b.completion_ids.shape[1] == b.completion_mask.shape[1] == b.input_ids.shape[1] - P
    # rows of one group share the (left-padded) prompt
    for g in range(3):
        rows = b.input_ids[g * G : (g + 1) * G, :P]
        assert (rows == rows[0]).all()
    assert b.attention_mask[4, 0] == 1 and b.attention_mask[0, 0] == 0  # prompt 1 is longest
    eos = tok.eos_token_id
    for r in range(B):
        comp, m = b.completion_ids[r].tolist(), b.completion_mask[r].tolist()
        n = int(sum(m))
        assert m == [1.0] * n + [0.0] * (len(m) - n)
        if eos in comp:
            assert n == comp.index(eos) + 1  # up to and including the first eos
            assert tok.eos_token not in b.texts[r]
        assert b.attention_mask[r, P:].tolist() == [int(x) for x in m]
    assert b.n_tokens == int(b.completion_mask.sum())
    assert b.completion_lengths.tolist() == b.completion_mask.sum(1).long().tolist()


@ENGINES
def test_seeded_and_leaves_global_rng_alone(engine_and_prompts, Engine):
    model, tok, prompts = engine_and_prompts
    engine = Engine(model, tok)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b, c = _gen(engine, prompts, 7), _gen(engine, prompts, 7), _gen(engine, prompts, 8)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(a.input_ids, b.input_ids) and a.texts == b.texts
    assert not torch.equal(a.input_ids, c.input_ids)


def test_prompt_sharing_gives_the_same_samples(engine_and_prompts):
    model, tok, prompts = engine_and_prompts
    shared = _gen(HFGenerateEngine(model, tok, share_prompt=True), prompts, 3)
    plain = _gen(HFGenerateEngine(model, tok, share_prompt=False), prompts, 3)
    assert torch.equal(shared.input_ids, plain.input_ids)
    chunked = _gen(HFGenerateEngine(model, tok, max_batch=4), prompts, 3)
    assert chunked.input_ids.shape[0] == 12 and chunked.group.tolist() == plain.group.tolist()


@ENGINES
def test_greedy_is_identical_within_a_group(engine_and_prompts, Engine):
    model, tok, prompts = engine_and_prompts
    b = _gen(Engine(model, tok), prompts, 0, G=3, temperature=0.0)
    for g in range(3):
        assert len(set(b.texts[g * 3 : (g + 1) * 3])) == 1


def test_logprobs_of_batch_match_unpadded_rows(engine_and_prompts):
    model, tok, prompts = engine_and_prompts
    b = _gen(HFGenerateEngine(model, tok), prompts, 1, G=2)
    C = b.completion_ids.shape[1]
    with torch.no_grad():
        lp = token_logprobs(model, b.input_ids, b.attention_mask, completion_len=C)
        for r in (0, 2):  # row 0: left-padded prompt; row 2: the longest prompt
            keep = b.attention_mask[r].bool()
            keep[b.prompt_len :] = True
            ids = b.input_ids[r][keep][None]
            alone = token_logprobs(model, ids, torch.ones_like(ids), completion_len=C)
            m = b.completion_mask[r].bool()
            torch.testing.assert_close(lp[r][m], alone[0][m], rtol=1e-4, atol=1e-5)


@ENGINES
def test_argument_errors(engine_and_prompts, Engine):
    model, tok, prompts = engine_and_prompts
    engine = Engine(model, tok)
    with pytest.raises(ValueError, match="no prompts"):
        _gen(engine, [], 0)
    with pytest.raises(ValueError, match="G >= 1"):
        _gen(engine, prompts, 0, G=0)
    with pytest.raises(ValueError, match="temperature"):
        _gen(engine, prompts, 0, temperature=-1.0)
