"""grponorm's verl estimators against verl's real code (verl 0.9.1, in `.venv-verl`).

Batches are ragged (group sizes 1..8) and interleaved (rows shuffled), with random response
masks and rewards spread over several tokens, as verl's estimators see them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import entry_points

import numpy as np
import pytest
import torch

core_algos = pytest.importorskip("verl.trainer.ppo.core_algos")

from grponorm.integrations import verl as gv  # noqa: E402
from grponorm.normalizers import (  # noqa: E402
    NormalizerContext,
    available_normalizers,
    normalize,
)

SIZES = (1, 1, 2, 3, 3, 5, 8, 8)  # ragged, two singletons
T = 9


def make_batch(seed: int, sizes=SIZES, *, binary: bool = False, equal_value: float | None = 0.9):
    """A shuffled batch: ``(token_level_rewards (bs, T), response_mask (bs, T), uids (bs,))``.

    The last group has all rows equal to ``equal_value`` (if given), put on the last valid token
    so that the row sums are exactly equal; the other rows spread their score over the valid
    tokens. Binary scores also sit on the last valid token.
    """
    rng = np.random.default_rng(seed)
    uids = np.array([f"uid-{g}" for g, n in enumerate(sizes) for _ in range(n)], dtype=object)
    scores = rng.integers(0, 2, uids.size) if binary else rng.normal(size=uids.size)
    scores = scores.astype(np.float64)  # (bs,)
    exact = np.full(uids.size, binary)  # (bs,) rows whose score sits on one token
    if equal_value is not None:
        exact |= uids == f"uid-{len(sizes) - 1}"
        scores[uids == f"uid-{len(sizes) - 1}"] = equal_value
    perm = rng.permutation(uids.size)
    uids, scores, exact = uids[perm], scores[perm], exact[perm]
    lengths = rng.integers(1, T + 1, uids.size)  # (bs,)
    mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.float32)  # (bs, T)
    split = rng.dirichlet(np.ones(T), uids.size) * mask  # (bs, T), a share per valid token
    split /= split.sum(-1, keepdims=True)
    last = np.arange(T)[None, :] == (lengths - 1)[:, None]  # (bs, T)
    split[exact] = last[exact]
    rewards = torch.tensor(split * scores[:, None], dtype=torch.float32)  # (bs, T)
    return rewards, torch.tensor(mask), uids


def verl_est(name: str, rewards, mask, uids, **kwargs):
    fn = core_algos.get_adv_estimator_fn(name)
    return fn(token_level_rewards=rewards.clone(), response_mask=mask, index=uids, **kwargs)


def group_sizes(uids) -> np.ndarray:
    _, inverse, counts = np.unique(uids, return_inverse=True, return_counts=True)
    return counts[inverse]  # (bs,)


def all_equal_rows(rewards, uids) -> np.ndarray:
    scores = rewards.sum(-1).numpy()
    return np.array([np.ptp(scores[uids == u]) == 0 and (uids == u).sum() > 1 for u in uids])


@pytest.fixture(scope="module", autouse=True)
def registered():
    return gv.register()


@pytest.mark.parametrize("seed", range(4))
def test_group_std_equals_verl_grpo(seed):
    rewards, mask, uids = make_batch(seed)
    ours, ours_ret = verl_est("grponorm_group_std", rewards, mask, uids)
    ref, _ = core_algos.compute_grpo_outcome_advantage(
        rewards.clone(), mask, uids, norm_adv_by_std_in_grpo=True
    )
    assert ours.shape == ref.shape == rewards.shape and ours.dtype == torch.float32
    assert ours_ret is ours  # returns == advantages, as in verl
    multi = (group_sizes(uids) > 1) & ~all_equal_rows(rewards, uids)
    torch.testing.assert_close(ours[multi], ref[multi], rtol=1e-5, atol=1e-6)
    assert torch.all(ours[~torch.as_tensor(mask, dtype=torch.bool)] == 0)


@pytest.mark.parametrize("seed", range(3))
def test_none_equals_verl_grpo_without_std(seed):
    rewards, mask, uids = make_batch(seed)
    ours, _ = verl_est("grponorm_none", rewards, mask, uids)
    ref, _ = core_algos.compute_grpo_outcome_advantage(
        rewards.clone(), mask, uids, norm_adv_by_std_in_grpo=False
    )
    multi = group_sizes(uids) > 1
    torch.testing.assert_close(ours[multi], ref[multi], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("norm_by_std", [True, False])
@pytest.mark.parametrize("seed", range(3))
def test_group_std_and_none_equal_verl_grpo_vectorized(seed, norm_by_std):
    rewards, mask, uids = make_batch(seed, NO_SINGLETONS, equal_value=None)
    name = "grponorm_group_std" if norm_by_std else "grponorm_none"
    ours, _ = verl_est(name, rewards, mask, uids)
    ref, _ = core_algos.compute_grpo_vectorized_outcome_advantage(
        rewards.clone(), mask, uids, norm_adv_by_std_in_grpo=norm_by_std
    )
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("verl_name", ["rloo", "rloo_vectorized"])
@pytest.mark.parametrize("seed", range(3))
def test_rloo_equals_verl_rloo(seed, verl_name):
    rewards, mask, uids = make_batch(seed)
    ours, _ = verl_est("grponorm_rloo", rewards, mask, uids)
    ref, _ = verl_est(verl_name, rewards, mask, uids, config=None)
    multi = group_sizes(uids) > 1
    torch.testing.assert_close(ours[multi], ref[multi], rtol=1e-5, atol=1e-5)


def test_singletons_are_zero_where_verl_passes_the_score_through():
    rewards, mask, uids = make_batch(0)
    single = group_sizes(uids) == 1
    scores = rewards.sum(-1)  # (bs,)
    for name in ("grponorm_group_std", "grponorm_none", "grponorm_rloo", "grponorm_bernoulli_std"):
        binary = name == "grponorm_bernoulli_std"
        r, m, u = make_batch(0, binary=binary, equal_value=1.0 if binary else 0.9)
        ours, _ = verl_est(name, r, m, u)
        assert torch.all(ours[group_sizes(u) == 1] == 0), name
    grpo, _ = core_algos.compute_grpo_outcome_advantage(rewards.clone(), mask, uids)
    rloo, _ = verl_est("rloo", rewards, mask, uids, config=None)
    expected = (scores[single] / (1 + 1e-6))[:, None] * mask[single]
    torch.testing.assert_close(grpo[single], expected)  # verl: score / (std=1 + eps)
    torch.testing.assert_close(rloo[single], scores[single][:, None] * mask[single])


def test_all_equal_group_is_exactly_zero_where_verl_grpo_leaves_a_residue():
    sizes = (7, 4)
    rewards, mask, uids = make_batch(1, sizes, equal_value=0.9)  # uid-1: 4 rows of 0.9
    rewards[uids == "uid-0"] = 0.0
    rewards[uids == "uid-0", 0] = 0.9  # uid-0: 7 rows of 0.9 on one token
    equal = torch.as_tensor(np.isin(uids, ["uid-0", "uid-1"]))
    for name in ("grponorm_group_std", "grponorm_none", "grponorm_rloo"):
        ours, _ = verl_est(name, rewards, mask, uids)
        assert torch.all(ours[equal] == 0), name
    grpo, _ = core_algos.compute_grpo_outcome_advantage(rewards.clone(), mask, uids)
    # verl: (0.9 - float32 mean of seven 0.9) / (0 + 1e-6) = -0.056 on every token.
    assert grpo[torch.as_tensor(uids == "uid-0")][:, 0].abs().min() > 0.01


def test_binary_rewards_match_verl_everywhere_but_singletons():
    rewards, mask, uids = make_batch(5, binary=True, equal_value=1.0)
    ours, _ = verl_est("grponorm_group_std", rewards, mask, uids)
    ref, _ = core_algos.compute_grpo_outcome_advantage(rewards.clone(), mask, uids)
    multi = group_sizes(uids) > 1
    torch.testing.assert_close(ours[multi], ref[multi], rtol=1e-5, atol=1e-6)


@pytest.mark.skipif("gpg" not in available_normalizers(), reason="no gpg normalizer")
def test_gpg_equals_verl_gpg_on_uniform_groups():
    rewards, mask, uids = make_batch(2, (4,) * 6, binary=True, equal_value=0.0)
    ours, _ = verl_est("grponorm_gpg", rewards, mask, uids)
    ref, _ = verl_est("gpg", rewards, mask, uids, config=None)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    ragged, m2, u2 = make_batch(2)
    with pytest.raises(ValueError, match="same size"):
        verl_est("grponorm_gpg", ragged, m2, u2)


@pytest.mark.skipif("grpo_passk" not in available_normalizers(), reason="no grpo_passk")
def test_grpo_passk_equals_verl_on_ragged_groups():
    rewards, mask, uids = make_batch(3, (2, 3, 5, 8, 8))
    ours, _ = verl_est("grponorm_grpo_passk", rewards, mask, uids)
    ref, _ = verl_est("grpo_passk", rewards, mask, uids, config={"norm_adv_by_std_in_grpo": True})
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


def test_batch_std_exact_on_uniform_interleaved_groups_and_raises_on_ragged():
    rewards, mask, uids = make_batch(4, (4,) * 5)
    ours, _ = verl_est("grponorm_batch_std", rewards, mask, uids)
    scores = rewards.sum(-1).double().numpy()  # (bs,)
    order = np.argsort(uids, kind="stable")
    grouped = scores[order].reshape(5, 4)  # (n_groups, G), groups in uid order
    expected = np.empty_like(scores)
    expected[order] = normalize(grouped, "batch_std").reshape(-1)
    torch.testing.assert_close(ours[:, 0], torch.tensor(expected, dtype=torch.float32))
    rewards, mask, uids = make_batch(4)
    with pytest.raises(ValueError, match="batch_std.*same size"):
        verl_est("grponorm_batch_std", rewards, mask, uids)


def test_through_verl_compute_advantage_with_config_options():
    ray_trainer = pytest.importorskip("verl.trainer.ppo.ray_trainer")
    from omegaconf import OmegaConf

    from verl import DataProto

    rewards, mask, uids = make_batch(6)
    data = DataProto.from_dict(
        tensors={"token_level_rewards": rewards.clone(), "response_mask": mask},
        non_tensors={"uid": uids},
    )
    cfg = OmegaConf.create({"adv_estimator": "grponorm_group_std", "grponorm": {"eps": 0.5}})
    OmegaConf.set_struct(cfg, True)
    out = ray_trainer.compute_advantage(data, adv_estimator=cfg.adv_estimator, config=cfg)
    expected, _ = gv.estimator("group_std", eps=0.5)(rewards, mask, index=uids)
    torch.testing.assert_close(out.batch["advantages"], expected)
    default, _ = gv.estimator("group_std")(rewards, mask, index=uids)
    assert not torch.allclose(expected, default)


def test_config_options_override_factory_options_and_algoconfig_has_none():
    from omegaconf import OmegaConf
    from verl.trainer.config import AlgoConfig

    rewards, mask, uids = make_batch(7)
    fn = gv.estimator("group_std", eps=0.5, ddof=0)
    cfg = OmegaConf.create({"grponorm": {"eps": 1e-6}})
    got, _ = fn(rewards, mask, index=uids, config=cfg)
    want, _ = gv.estimator("group_std", ddof=0)(rewards, mask, index=uids)
    torch.testing.assert_close(got, want)
    plain, _ = fn(rewards, mask, index=uids, config=AlgoConfig(adv_estimator="grponorm_x"))
    factory, _ = fn(rewards, mask, index=uids)
    torch.testing.assert_close(plain, factory)
    with pytest.raises(TypeError, match="mapping"):
        fn(rewards, mask, index=uids, config=OmegaConf.create({"grponorm": 1e-4}))


def test_hydra_override_reaches_the_estimator():
    pytest.importorskip("hydra")
    from hydra import compose, initialize_config_dir

    import verl

    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    overrides = ["algorithm.adv_estimator=grponorm_group_std", "+algorithm.grponorm.eps=0.5"]
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        cfg = compose(config_name="ppo_trainer", overrides=overrides)
    assert gv.options_from_config(cfg.algorithm) == {"eps": 0.5}
    rewards, mask, uids = make_batch(8)
    fn = core_algos.get_adv_estimator_fn(cfg.algorithm.adv_estimator)
    got, _ = fn(rewards, mask, index=uids, config=cfg.algorithm)
    want, _ = gv.estimator("group_std", eps=0.5)(rewards, mask, index=uids)
    torch.testing.assert_close(got, want)


def test_register_is_idempotent_and_covers_the_registry(registered):
    again = gv.register()
    assert again == registered == [f"grponorm_{n}" for n in available_normalizers()]
    for key in again:
        fn = core_algos.get_adv_estimator_fn(key)
        assert fn.grponorm_method == key.removeprefix("grponorm_")


def test_register_refuses_a_foreign_estimator(monkeypatch):
    monkeypatch.setitem(core_algos.ADV_ESTIMATOR_REGISTRY, "grponorm_none", lambda **kw: None)
    with pytest.raises(ValueError, match="already registered"):
        gv.register(["none"])


def test_last_stats_and_metrics():
    rewards, mask, uids = make_batch(0)
    fn = core_algos.get_adv_estimator_fn("grponorm_group_std")
    ours, _ = fn(token_level_rewards=rewards, response_mask=mask, index=uids, config=None)
    stats = fn.last_stats
    assert stats.n_groups == len(SIZES)
    assert stats.n_flat == stats.n_zero_adv == 3  # two singletons and the all-equal group
    metrics = gv.stats_metrics(stats)
    assert metrics["grponorm/frac_flat"] == pytest.approx(3 / len(SIZES))
    assert metrics["grponorm/frac_zero_adv"] == pytest.approx(3 / len(SIZES))
    assert set(metrics) == {f"grponorm/{k}" for k in stats.as_dict()}


def test_bf16_rewards_keep_their_dtype():
    rewards, mask, uids = make_batch(1)
    ours, _ = verl_est("grponorm_group_std", rewards.bfloat16(), mask, uids)
    assert ours.dtype == torch.bfloat16


def _fresh_python(code: str, **env: str) -> str:
    """Runs ``code`` in a new interpreter of this venv; only ``env`` sets verl's plugin policy."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("VERL_USE_EXTERNAL")}
    full_env.update(env)
    result = subprocess.run(
        [sys.executable, "-c", code], env=full_env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip()


CHECK = (
    "import sys, verl\n"
    "from verl.trainer.ppo import core_algos\n"
    "names = sorted(k for k in core_algos.ADV_ESTIMATOR_REGISTRY if k.startswith('grponorm_'))\n"
    "print(','.join(names))\n"
)


def test_plain_import_verl_registers_through_the_entry_point():
    eps = [ep for ep in entry_points(group="verl.plugins") if ep.name == "grponorm"]
    assert eps, (
        "grponorm's verl.plugins entry point is not installed: add it to pyproject.toml and "
        "rerun scripts/setup_verl.sh"
    )
    assert eps[0].value == "grponorm.integrations.verl:plugin"
    names = _fresh_python(CHECK, VERL_USE_EXTERNAL_PLUGINS="auto")
    assert names.split(",") == [f"grponorm_{n}" for n in available_normalizers()]


def test_verl_use_external_modules_registers_without_the_entry_point():
    names = _fresh_python(
        CHECK,
        VERL_USE_EXTERNAL_PLUGINS="none",
        VERL_USE_EXTERNAL_MODULES="grponorm.integrations.verl",
    )
    assert "grponorm_group_std" in names.split(",")
    assert _fresh_python(CHECK, VERL_USE_EXTERNAL_PLUGINS="none") == ""


# ------------------------------------------------------------------------------------------
# Issue 17: opo, reinforce_pp_baseline, gdpo against verl's own functions; refusals; state
# ------------------------------------------------------------------------------------------

NO_SINGLETONS = (2, 3, 3, 5, 8, 8)  # ragged, interleaved: verl gives singletons the raw score


@pytest.mark.parametrize("seed", range(3))
def test_opo_equals_verl_opo_on_ragged_groups(seed):
    rewards, mask, uids = make_batch(seed, NO_SINGLETONS)
    ours, _ = verl_est("grponorm_opo", rewards, mask, uids)
    ref, _ = verl_est("opo", rewards, mask, uids)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_reinforce_pp_baseline_equals_verl_on_ragged_groups(seed):
    rewards, mask, uids = make_batch(seed, NO_SINGLETONS, equal_value=None)
    fn = gv.estimator("reinforce_pp_baseline", token_weighted=True)  # verl whitens over tokens
    ours, _ = fn(rewards.clone(), mask, index=uids)
    ref, _ = verl_est("reinforce_plus_plus_baseline", rewards, mask, uids)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    sample, _ = verl_est("grponorm_reinforce_pp_baseline", rewards, mask, uids)
    assert not torch.allclose(sample, ref, atol=1e-3)  # the default weighs samples, not tokens


@pytest.mark.parametrize("seed", range(2))
def test_reinforce_pp_baseline_default_vs_verl_when_lengths_are_equal(seed):
    # Every response T tokens: token and sample weights give the same mean and the same sum of
    # squares; only the Bessel correction differs (N/(N - 1) over samples, NT/(NT - 1) over
    # tokens), so verl's advantages are the default's times sqrt((NT - 1) / (T (N - 1))).
    rewards, mask, uids = make_batch(seed, NO_SINGLETONS, equal_value=None)
    full = torch.ones_like(mask)
    ours, _ = verl_est("grponorm_reinforce_pp_baseline", rewards, full, uids)
    ref, _ = verl_est("reinforce_plus_plus_baseline", rewards, full, uids)
    n = len(uids)
    factor = ((n * T - 1) / (T * (n - 1))) ** 0.5
    assert factor > 1.01  # the difference is measurable here
    torch.testing.assert_close(ours * factor, ref, rtol=1e-5, atol=1e-5)
    one_token = torch.zeros_like(mask)
    one_token[:, 0] = 1.0  # one-token responses: no difference at all
    r1 = rewards.sum(-1, keepdim=True) * one_token
    ours, _ = verl_est("grponorm_reinforce_pp_baseline", r1, one_token, uids)
    ref, _ = verl_est("reinforce_plus_plus_baseline", r1, one_token, uids)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def _gdpo_batch(seed: int, n_groups: int = 5, g: int = 4, k: int = 3):
    rng = np.random.default_rng(seed)
    uids = np.array([f"u{i}" for i in range(n_groups) for _ in range(g)], dtype=object)
    perm = rng.permutation(uids.size)
    uids = uids[perm]
    comp = rng.integers(0, 3, size=(uids.size, k)).astype(np.float32) / 2  # (bs, K)
    comp[uids == "u0"] = comp[uids == "u0"][0]  # a group flat in every component
    lengths = rng.integers(1, T + 1, uids.size)
    mask = torch.tensor((np.arange(T)[None, :] < lengths[:, None]).astype(np.float32))
    prompt_len = 2
    attention = torch.cat([torch.ones(uids.size, prompt_len), mask], dim=1).long()
    batch = {"prompts": torch.zeros(uids.size, prompt_len, dtype=torch.long),
             "attention_mask": attention}
    keys = [f"r{j}" for j in range(k)]
    non_tensor = {key: comp[:, j] for j, key in enumerate(keys)}
    return uids, comp, mask, batch, keys, non_tensor


@pytest.mark.parametrize("seed", range(3))
def test_gdpo_equals_verl_gdpo(seed):
    from omegaconf import OmegaConf

    uids, comp, mask, batch, keys, non_tensor = _gdpo_batch(seed)
    weights = [1.0, 0.5, 2.0]
    cfg = OmegaConf.create({"gdpo_reward_keys": keys, "gdpo_reward_weights": weights})
    rewards = torch.zeros_like(mask)
    ref, _ = core_algos.compute_gdpo_outcome_advantage(
        token_level_rewards=rewards, response_mask=mask, index=uids, config=cfg,
        non_tensor_batch=non_tensor, batch=batch,
    )
    order = np.argsort(uids, kind="stable")  # group the rows: (n_groups, G)
    grouped = torch.tensor(comp[order]).double().view(5, 4, 3)
    lengths = mask.sum(-1).double()[order].view(5, 4)
    adv = normalize(grouped.sum(-1), "gdpo", weights=weights, token_weighted=True,
                    context=NormalizerContext(components=grouped, lengths=lengths))
    ours = torch.empty(uids.size, dtype=torch.float64)
    ours[torch.as_tensor(order)] = adv.reshape(-1)
    torch.testing.assert_close((ours[:, None] * mask).float(), ref, rtol=1e-5, atol=1e-5)


def test_verl_refuses_what_it_cannot_feed():
    rewards, mask, uids = make_batch(0, NO_SINGLETONS)
    with pytest.raises(ValueError, match="no reward components.*7473"):
        verl_est("grponorm_gdpo", rewards, mask, uids)
    with pytest.raises(ValueError, match="uuid4.*persist=False"):
        gv.estimator("krpo", persist=True)
    with pytest.raises(ValueError, match="reward components"):
        gv.estimator("gdpo")
    adv, _ = verl_est("grponorm_krpo", rewards, mask, uids)  # default: the authors' fresh filter
    assert adv.shape == rewards.shape


def test_running_std_state_lives_in_the_estimator_across_calls():
    fn = gv.estimator("running_std")
    rewards, mask, uids = make_batch(1, NO_SINGLETONS)
    fn(rewards, mask, index=uids)
    first = fn.grponorm_state.count
    fn(rewards, mask, index=uids)
    assert first == len(uids) and fn.grponorm_state.count == 2 * len(uids)
