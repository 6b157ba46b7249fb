"""Tests for grponorm.rl.problems: the pool, held-out questions, slices, step draws, probes."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from conftest import tiny_train_config  # noqa: E402  (tests/conftest.py)
from grponorm.rl import trainer  # noqa: E402
from grponorm.rl.config import TrainConfig  # noqa: E402
from grponorm.rl.problems import (  # noqa: E402
    build_problems,
    distinct_questions,
    probe_problems,
    slice_labels,
    step_indices,
    step_seed,
)


def test_step_indices_are_seeded_epochs():
    a = [step_indices(10, s, 4, seed=0) for s in range(1, 6)]  # 20 positions = 2 epochs
    flat = sum(a, [])
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    assert a == [step_indices(10, s, 4, seed=0) for s in range(1, 6)]
    assert a != [step_indices(10, s, 4, seed=1) for s in range(1, 6)]


def test_slice_labels_by_level_and_steps():
    cfg = TrainConfig(levels=["add1", "ops2"], n_train=4, n_eval=0)
    pool, held = build_problems(cfg)
    assert len(pool) == 8 and held == []
    by_level = slice_labels(cfg, pool, None)
    assert [by_level[p.id] for p in pool] == ["easy"] * 4 + ["hard"] * 4
    cfg.slice_by, cfg.easy_max_steps = "steps", 1
    assert slice_labels(cfg, pool, None) == by_level
    cfg.slice_by = "pass_rate"
    rates = {p.id: (0.75 if i % 2 else 0.25) for i, p in enumerate(pool)}
    lab = slice_labels(cfg, pool, rates)
    assert [lab[p.id] for p in pool[:2]] == ["hard", "easy"]


def test_gsm8k_data_errors_are_clear(tmp_path):
    bad = tmp_path / "gsm"
    bad.mkdir()
    (bad / "train.jsonl").write_text('{"question": "q", "answer": "#### 3"}\n{"question": 1}\n')
    cfg = TrainConfig(task="gsm8k", slice_by="steps", gsm8k_dir=str(bad), n_eval=0)
    with pytest.raises(ValueError, match=r"train\.jsonl:2"):
        build_problems(cfg)
    cfg.gsm8k_dir = str(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="GSM8K file not found"):
        build_problems(cfg)


def test_arithmetic_eval_questions_are_held_out():
    train, held = build_problems(TrainConfig(n_train=120, n_eval=32))
    for lv in ("add1", "mul1"):
        tq = {p.question for p in train if p.meta["level"] == lv}
        hq = [p.question for p in held if p.meta["level"] == lv]
        assert len(hq) == len(set(hq)) == 32  # distinct
        assert not tq & set(hq)  # never trained on
        assert sum(p.meta["level"] == lv for p in train) == 120
    with pytest.raises(ValueError, match="too few distinct questions"):
        build_problems(TrainConfig(n_train=10, n_eval=101))


def test_distinct_questions_keeps_the_first_of_each():
    pool, _ = build_problems(TrainConfig(levels=["add1"], n_train=150, n_eval=0))
    got = distinct_questions(pool, 20)
    assert len(got) == 20 and len({p.question for p in got}) == 20
    assert got[0] is pool[0]
    assert len(distinct_questions(pool, 1000)) == len({p.question for p in pool}) <= 100


def test_probe_set_is_fixed_by_data_seed_only():
    pool, _ = build_problems(TrainConfig(n_train=20, n_eval=0))
    a = probe_problems(TrainConfig(diag_probe=6, seed=0), pool)
    assert [p.id for p in a] == [p.id for p in probe_problems(TrainConfig(diag_probe=6, seed=9),
                                                              pool)]
    assert [p.id for p in a] != [p.id for p in probe_problems(
        TrainConfig(diag_probe=6, data_seed=1), pool)]
    assert len(probe_problems(TrainConfig(diag_probe=500), pool)) == len(pool)


def test_step_seeds_differ_by_purpose_and_step():
    seeds = {step_seed(0, s, salt) for s in range(1, 5) for salt in (1, 2, 3)}
    assert len(seeds) == 12 and step_seed(0, 1, 1) == step_seed(0, 1, 1)


def test_pass_rate_slicing_is_measured_once_and_cached(tiny_policy_dir, tmp_path):
    pytest.importorskip("peft")
    cfg = tiny_train_config(tiny_policy_dir, tmp_path, slice_by="pass_rate", pass_rate_k=2,
                            steps=1, eval_every=0, n_train=8)
    s = trainer.run(cfg, progress=False)
    assert sum(s["slice_sizes"].values()) == 16  # 8 per level, each easy or hard
    (cache,) = (tmp_path / "cache" / "pass_rates").glob("*.json")
    rates = json.loads(cache.read_text())["pass_rates"]
    assert len(rates) == 16 + 2 * 2 and all(0.0 <= r <= 1.0 for r in rates.values())
    stamp = cache.stat().st_mtime
    trainer.run(tiny_train_config(tiny_policy_dir, tmp_path, slice_by="pass_rate", pass_rate_k=2,
                                  steps=1, eval_every=0, n_train=8), progress=False)
    assert cache.stat().st_mtime == stamp  # the second run read the cache
