"""Tests for grponorm.rl.config: option parsing, validation, configs that extend TrainConfig."""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest

pytest.importorskip("torch")

from grponorm.config import field_docs  # noqa: E402
from grponorm.experiments.diag_fisher import FisherConfig  # noqa: E402
from grponorm.experiments.rl_compare import CompareConfig  # noqa: E402
from grponorm.rl.config import TrainConfig, load_saved_config, parse_options  # noqa: E402
from grponorm.runs import Run  # noqa: E402


def test_parse_options_and_validation():
    assert parse_options("eps=1e-4, ddof=1,flag=true") == {"eps": 1e-4, "ddof": 1, "flag": True}
    assert parse_options("") == {}
    with pytest.raises(ValueError, match="name=value"):
        parse_options("eps")
    TrainConfig().validate()
    for kw, msg in [
        (dict(normalizer="nope"), "unknown normalizer"),
        (dict(normalizer_options="bogus=1"), "unexpected option .bogus."),
        (dict(levels=["add9"]), "unknown arithmetic level"),
        (dict(task="gsm8k", slice_by="level"), "slice_by=level"),
        (dict(G=1), "G=1: every group is a single completion"),
        (dict(slice_by="difficulty"), "slice_by must be one of"),
        (dict(backend="jax"), "backend must be one of"),
        (dict(diagnostics="hessian"), "diagnostics must be one of"),
        (dict(slice="medium"), "slice"),
        (dict(loss_agg="mean"), "loss_agg"),
        (dict(G=0), "G must be"),
        (dict(temperature=0.0), "temperature"),
        (dict(rollout="hf"), "rollout must be"),
        *([(dict(rollout="vllm"), "pip install vllm")]
          if importlib.util.find_spec("vllm") is None else []),
        (dict(old_logprobs="cached"), "old_logprobs"),
        (dict(attention="flash"), "attention must be"),
    ]:
        with pytest.raises(ValueError, match=msg):
            TrainConfig(**kw).validate()


@pytest.mark.parametrize("normalizer, options", [
    ("group_std", ""),
    ("opo", ""),  # needs lengths: probed with synthetic ones
    ("gdpo", ""),  # needs components
    ("gdpo", "token_weighted=true"),  # components and lengths
    ("none", ""),
])
def test_g1_is_refused_for_normalizers_that_zero_singletons(normalizer, options):
    cfg = TrainConfig(normalizer=normalizer, normalizer_options=options, G=1)
    with pytest.raises(ValueError, match=f"G=1: every group is a single completion, and "
                                         f"normalizer '{normalizer}' gives a singleton group "
                                         f"zero advantage.*G >= 2"):
        cfg.validate()
    TrainConfig(normalizer=normalizer, normalizer_options=options, G=2).validate()


@pytest.mark.parametrize("normalizer, options", [
    ("batch_zscore", ""),  # batch baseline: a singleton's reward minus the batch mean
    ("running_std", ""),  # running moments: stateful
    ("krpo", "persist=true"),  # per-prompt filters: needs prompt ids and state
])
def test_g1_is_accepted_for_normalizers_whose_singletons_learn(normalizer, options):
    from grponorm.rl.config import parse_options, singletons_learn

    TrainConfig(normalizer=normalizer, normalizer_options=options, G=1).validate()
    assert singletons_learn(normalizer, parse_options(options))


def test_slice_rule_follows_the_task():
    assert TrainConfig().slice_by == "level"  # arithmetic problems carry their level
    assert TrainConfig(task="gsm8k").slice_by == "steps"  # GSM8K solutions carry their steps
    assert TrainConfig(task="gsm8k", slice_by="pass_rate").slice_by == "pass_rate"
    TrainConfig(task="gsm8k").validate()


def test_literal_fields_are_the_choice_tables():
    from grponorm.rl import choices
    from grponorm.rl.config import literal_fields

    table = literal_fields(TrainConfig)
    assert table["slice"] == choices.SLICES == ("all", "easy", "hard")
    assert table["backend"] == choices.BACKENDS and table["rollout"] == choices.ROLLOUTS
    assert table["diagnostics"] == choices.DIAGNOSTICS and "slice_by" in table


def test_cli_offers_only_the_choices(capsys):
    from grponorm import cli

    with pytest.raises(SystemExit):
        cli.main(["rl", "train", "--slice", "medium"])
    assert "invalid choice: 'medium'" in capsys.readouterr().err


@pytest.mark.parametrize("cls", [CompareConfig, FisherConfig])
def test_experiment_configs_extend_train_config_without_copies(cls):
    """Every TrainConfig field is inherited (one definition, one help line); a subclass only
    redeclares a field to change its default or its meaning, and hides the fields it sets per
    run."""
    assert issubclass(cls, TrainConfig)
    own = cls.__dict__["__annotations__"]
    base = {f.name: f for f in dataclasses.fields(TrainConfig)}
    docs, base_docs = field_docs(cls), field_docs(TrainConfig)
    for name in own:
        if name in base:
            changed = (getattr(cls(), name) != getattr(TrainConfig(), name)
                       or docs[name] != base_docs[name])
            assert changed, f"{cls.__name__}.{name} repeats TrainConfig's field: inherit it"
    for name in base:
        assert docs.get(name), f"{name} has no help line"
        if name not in own:
            assert docs[name] == base_docs[name]
    assert set(cls.HIDDEN) <= set(base)


def test_model_config_and_cache_path(tmp_path):
    cfg = TrainConfig(lora_r=4, lora_alpha=8.0, dtype="float32", cache_dir=str(tmp_path))
    m = cfg.model_config()
    assert (m.lora_r, m.lora_alpha, m.dtype, m.cache_dir) == (4, 8.0, "float32", str(tmp_path))
    assert cfg.cache_path() == tmp_path


def test_saved_config_round_trip(tmp_path):
    cfg = CompareConfig(seeds=[3, 4], steps=7, lora_targets=("q_proj",))
    run = Run.create(tmp_path, "rl_compare", cfg)
    back = load_saved_config(run.path, CompareConfig)
    assert back == cfg and isinstance(back.lora_targets, tuple)
    with pytest.raises(ValueError, match=r"settings \[.*'normalizers'.*\] are not TrainConfig"):
        load_saved_config(run.path)  # a compare folder is not one run: refused, never trimmed
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        load_saved_config(tmp_path / "nowhere")


def test_cli_refuses_g1_for_a_normalizer_that_needs_context(tmp_path, capsys):
    from grponorm.cli import main

    assert main(["rl", "train", "--normalizer", "opo", "--G", "1", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "G=1: every group is a single completion, and normalizer 'opo'" in err
    assert not any(tmp_path.iterdir())  # refused before anything was written
