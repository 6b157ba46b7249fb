"""LLM-judge difficulty slices: parsing, caching, nothing dropped silently, trainer wiring."""

from types import SimpleNamespace

import pytest

from grponorm.rl import judge, trainer
from grponorm.rl.data import Problem


def _problems(n=3):
    return [Problem(f"p{i}", f"What is {i} + 1?", str(i + 1), f"{i} + 1 = {i + 1}\n#### {i + 1}",
                    {}) for i in range(n)]


@pytest.mark.parametrize(("text", "want"), [
    ("Easy", "easy"), ("This one is HARD.", "hard"), ("easy or hard", "easy"),
    ("The answer is 5", None), ("", None), ("uneasy", None),
])
def test_parse_verdict(text, want):
    assert judge.parse_verdict(text) == want


def test_messages_carry_question_and_solution():
    msgs = judge.judge_messages(_problems(1)[0])
    assert msgs[0]["role"] == "system" and "Easy or Hard" in msgs[0]["content"]
    assert "What is 0 + 1?" in msgs[1]["content"] and "#### 1" in msgs[1]["content"]


class FakeEngine:
    def __init__(self, answers):
        self.answers, self.calls = answers, 0

    def generate(self, prompts, G, **kw):
        assert G == 1 and kw["temperature"] == 0.0
        self.calls += 1
        return SimpleNamespace(texts=[self.answers[i % len(self.answers)]
                                      for i in range(len(prompts))])


class FakeTokenizer:
    chat_template = "x"

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return " ".join(m["content"] for m in messages)


def test_judge_difficulty_caches_and_counts_unjudged(tmp_path, monkeypatch):
    monkeypatch.setattr("grponorm.rl.judge.chat_prompt",
                        lambda tok, msgs, system=None: " ".join(m["content"] for m in msgs))
    eng = FakeEngine(["Easy", "Hard.", "I think 4"])
    probs = _problems(3)
    v = judge.judge_difficulty(probs, eng, FakeTokenizer(), judge_model="m", cache_dir=tmp_path)
    assert v == {"p0": "easy", "p1": "hard", "p2": None}
    again = judge.judge_difficulty(probs, FakeEngine([]), None, judge_model="m",
                                   cache_dir=tmp_path)
    assert again == v  # from the cache: the empty engine was never asked
    other = FakeEngine(["Hard"])
    judge.judge_difficulty(probs, other, None, judge_model="other", cache_dir=tmp_path)
    assert other.calls == 1  # another judge is another cache entry
    sl = judge.split_by_verdict(probs, v)
    assert [len(sl[k]) for k in ("easy", "hard", "unjudged")] == [1, 1, 1]
    with pytest.raises(ValueError, match="no judge verdict"):
        judge.split_by_verdict(_problems(4), v)


def test_trainer_slices_by_judge(tiny_policy_dir, tmp_path):
    cfg = trainer.TrainConfig(
        model=str(tiny_policy_dir), judge_model=str(tiny_policy_dir), slice_by="judge",
        out=str(tmp_path / "runs"), cache_dir=str(tmp_path / "cache"), levels=["add1"],
        n_train=8, n_eval=2, G=2, prompts_per_step=2, steps=1, max_new_tokens=4, lora_r=2,
        lora_alpha=4.0, threads=1, eval_every=0)
    s = trainer.run(cfg, progress=False)
    sizes = s["slice_sizes"]
    assert sum(sizes.values()) == 8  # every problem is easy, hard or counted as unjudged
    assert list((tmp_path / "cache" / "judge").glob("*.json"))
