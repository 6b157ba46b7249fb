"""NormalizedGRPOTrainer against TRL's real GRPOTrainer (tiny Llama on CPU, offline).

Rewards are deterministic tables keyed by (prompt, position in the group), so every group's
rewards are known whatever the random model generates; prompts are plain text in the tiny
tokenizer's vocabulary. One training step per trainer.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("trl")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from grponorm.integrations.trl import (  # noqa: E402
    NormalizedGRPOTrainer,
    advantages_from_gathered,
    combined_rewards,
)
from grponorm.normalizers import UnknownNormalizerError, normalize  # noqa: E402

G = 4
NAN = None  # a reward function's "no score"

#: Binary rewards; "2 + 2" is a zero-variance group.
BINARY = {
    "what is 1 + 1 ?": [1.0, 0.0, 0.0, 1.0],
    "what is 2 + 2 ?": [1.0, 1.0, 1.0, 1.0],
    "what is 3 * 3 ?": [0.0, 0.0, 1.0, 0.0],
}
#: Two reward functions (weights 1 and 2) with None entries; row 1 of "3 * 3" is unscored.
MAIN = {
    "what is 1 + 1 ?": [1.0, 0.0, 0.0, 1.0],
    "what is 2 + 2 ?": [1.0, 1.0, 1.0, 1.0],
    "what is 3 * 3 ?": [0.0, NAN, 1.0, 0.5],
}
BONUS = {
    "what is 1 + 1 ?": [0.5, NAN, NAN, NAN],
    "what is 2 + 2 ?": [NAN, NAN, NAN, NAN],
    "what is 3 * 3 ?": [NAN, NAN, 1.0, NAN],
}
#: Their combined reward (main + 2 * bonus, nansum), NaN where both are None.
COMBINED = {
    "what is 1 + 1 ?": [2.0, 0.0, 0.0, 1.0],
    "what is 2 + 2 ?": [1.0, 1.0, 1.0, 1.0],
    "what is 3 * 3 ?": [0.0, math.nan, 3.0, 0.5],
}
WORKER = Path(__file__).with_name("trl_two_process_worker.py")
GLOO_WORKER = Path(__file__).with_name("gloo_teardown_worker.py")


def _table_reward(table):
    """A reward function: row i of the (single-process) batch is position i % G of its group."""

    def reward(prompts, completions, **kwargs):
        return [table[p][i % G] for i, p in enumerate(prompts)]

    reward.__name__ = f"table_{id(table)}"
    return reward


class Recorder:
    """Mixin: records each generation batch's prompts, trained and table-logged advantages."""

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        self.records = getattr(self, "records", [])
        self.records.append(
            {
                "prompts": [x["prompt"] for x in inputs],
                "advantages": out["advantages"].detach().clone(),  # (B,)
                "logged": torch.tensor(list(self._logs["advantages"])),  # (B,)
            }
        )
        return out


class StockRecorder(Recorder, GRPOTrainer):
    pass


class NormalizedRecorder(Recorder, NormalizedGRPOTrainer):
    pass


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _args(tmp_path: Path, **overrides) -> GRPOConfig:
    """One CPU step over the three prompts: 3 groups of G=4 in one generation batch."""
    kwargs = dict(
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=3 * G,
        num_generations=G,
        max_completion_length=4,
        max_steps=1,
        logging_steps=1,
        learning_rate=1e-3,
        bf16=False,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    kwargs.update(overrides)
    return GRPOConfig(**kwargs)


def _train(cls, model_dir, tmp_path, reward_funcs, args=None, **kwargs):
    """Builds ``cls`` on the tiny policy, trains one step, returns the trainer."""
    trainer = cls(
        model=str(model_dir),
        reward_funcs=reward_funcs,
        args=args or _args(tmp_path),
        train_dataset=Dataset.from_dict({"prompt": list(BINARY)}),
        **kwargs,
    )
    trainer.train()
    return trainer


def _expected(prompts, table, method, **options) -> torch.Tensor:
    """Registry advantages of ``table`` laid out like ``prompts`` (row i = position i % G)."""
    out = []
    for i, p in enumerate(prompts):
        rewards = torch.tensor([table[p]])  # (1, G)
        out.append(float(normalize(rewards, method, **options)[0, i % G]))
    return torch.tensor(out)  # (B,)


def _only_record(trainer) -> dict:
    (record,) = trainer.records
    assert torch.equal(record["advantages"], record["logged"])  # the table shows what trains
    return record


@pytest.mark.parametrize(
    ("scale_rewards", "normalizer", "options"),
    [("group", "group_std", {"eps": 1e-4}), ("none", "none", {})],
)
def test_matches_stock_trl(tiny_policy_dir, tmp_path, scale_rewards, normalizer, options):
    """Same rewards (weights, None entries, one unscored row): TRL's advantages, to 1e-6."""
    funcs = [_table_reward(MAIN), _table_reward(BONUS)]
    kw = dict(reward_weights=[1.0, 2.0])
    stock = _train(
        StockRecorder,
        tiny_policy_dir,
        tmp_path,
        funcs,
        args=_args(tmp_path, scale_rewards=scale_rewards, **kw),
    )
    ours = _train(
        NormalizedRecorder,
        tiny_policy_dir,
        tmp_path,
        funcs,
        args=_args(tmp_path, scale_rewards="batch", **kw),  # ignored: the normalizer decides
        normalizer=normalizer,
        normalizer_options=options,
    )
    want, got = stock.records[0], _only_record(ours)
    assert want["prompts"] == got["prompts"]
    torch.testing.assert_close(got["advantages"], want["advantages"], rtol=1e-5, atol=1e-6)
    assert got["advantages"].abs().max() > 0.5  # a real signal, not all zeros
    # Independently: the unscored row gets 0, the others the registry over scored rows.
    for i, p in enumerate(got["prompts"]):
        row = torch.tensor([COMBINED[p]])  # (1, G)
        scored = ~torch.isnan(row[0])
        expect = torch.zeros(G)
        if not bool((row[0][scored] == row[0][scored][0]).all()):
            expect[scored] = normalize(row[:, scored], normalizer, **options)[0]
        assert float(got["advantages"][i]) == pytest.approx(float(expect[i % G]), abs=1e-6)


@pytest.mark.parametrize("normalizer", ["rloo", "bernoulli_std"])
def test_normalizers_trl_lacks(tiny_policy_dir, tmp_path, normalizer):
    """rloo / bernoulli_std: the registry over each whole group; the flat group gets exactly 0."""
    trainer = _train(
        NormalizedRecorder,
        tiny_policy_dir,
        tmp_path,
        [_table_reward(BINARY)],
        normalizer=normalizer,
    )
    record = _only_record(trainer)
    expected = _expected(record["prompts"], BINARY, normalizer)
    torch.testing.assert_close(record["advantages"], expected, rtol=1e-6, atol=1e-6)
    flat = torch.tensor([p == "what is 2 + 2 ?" for p in record["prompts"]])
    assert int(flat.sum()) == G
    assert bool((record["advantages"][flat] == 0.0).all())  # exactly 0, not eps-small
    assert bool((record["advantages"][~flat] != 0.0).all())


def test_zero_variance_group_std_is_exactly_zero(tiny_policy_dir, tmp_path):
    """group_std with a tiny eps: the flat group is 0.0 exactly, the others unaffected."""
    trainer = _train(
        NormalizedRecorder,
        tiny_policy_dir,
        tmp_path,
        [_table_reward(BINARY)],
        normalizer="group_std",
        normalizer_options={"eps": 1e-12},
    )
    record = _only_record(trainer)
    flat = torch.tensor([p == "what is 2 + 2 ?" for p in record["prompts"]])
    assert bool((record["advantages"][flat] == 0.0).all())
    expected = _expected(record["prompts"], BINARY, "group_std", eps=1e-12)
    torch.testing.assert_close(record["advantages"], expected, rtol=1e-6, atol=1e-6)


def test_metrics_reach_the_log(tiny_policy_dir, tmp_path):
    """grponorm's metrics and the normalizer's name are in the trainer's logged metrics."""
    trainer = _train(
        NormalizedRecorder,
        tiny_policy_dir,
        tmp_path,
        [_table_reward(BINARY)],
        normalizer="rloo",
    )
    log = trainer.state.log_history[0]
    adv = _only_record(trainer)["advantages"]
    assert log["grponorm/normalizer"] == "rloo"
    assert json.loads(log["grponorm/normalizer_options"]) == {}
    assert log["grponorm/frac_flat"] == pytest.approx(1 / 3)  # "2 + 2" is flat
    assert log["grponorm/frac_zero_adv"] == pytest.approx(1 / 3)
    assert log["grponorm/adv_mean"] == pytest.approx(float(adv.mean()), abs=1e-6)
    assert log["grponorm/adv_std"] == pytest.approx(float(adv.std(correction=0)), rel=1e-5)
    assert log["grponorm/adv_abs_max"] == pytest.approx(float(adv.abs().max()), rel=1e-6)
    stds = [float(torch.tensor(r).std()) for r in BINARY.values()]  # Bessel, as TRL
    assert log["grponorm/group_reward_std/mean"] == pytest.approx(sum(stds) / 3, rel=1e-5)
    assert log["grponorm/group_reward_std/min"] == pytest.approx(min(stds), abs=1e-7)
    assert log["grponorm/group_reward_std/max"] == pytest.approx(max(stds), rel=1e-5)
    assert "grponorm/normalizer" not in trainer.state.log_history[-1]  # only once
    assert "grponorm" in trainer._tag_names


def test_construction_validates_the_normalizer(tiny_policy_dir, tmp_path):
    """Unknown names and options fail before TRL builds anything; normalize_then_sum is refused."""
    with pytest.raises(UnknownNormalizerError, match="available: .*group_std"):
        NormalizedGRPOTrainer(model="never-loaded", normalizer="group_sdt")
    with pytest.raises(TypeError, match="normalizer_options"):
        NormalizedGRPOTrainer(model="unused", normalizer="rloo", normalizer_options={"eps": 1})
    with pytest.raises(ValueError, match="eps"):
        NormalizedGRPOTrainer(model="never-loaded", normalizer_options={"eps": -1.0})
    with pytest.raises(ValueError, match="multi_objective_aggregation"):
        NormalizedGRPOTrainer(
            model=str(tiny_policy_dir),
            reward_funcs=[_table_reward(BINARY)],
            args=_args(tmp_path, multi_objective_aggregation="normalize_then_sum"),
            train_dataset=Dataset.from_dict({"prompt": list(BINARY)}),
        )


def test_gathered_edge_cases():
    """Pure helper: weights and nansum, an unscored group, G=1 (eval), the process slice."""
    nan = math.nan
    per_func = torch.tensor([[1.0, nan], [0.0, 1.0], [nan, nan], [nan, nan]])  # (4, 2)
    rewards = combined_rewards(per_func, torch.tensor([1.0, 0.5]))
    torch.testing.assert_close(rewards, torch.tensor([1.0, 0.5, nan, nan]), equal_nan=True)
    got = advantages_from_gathered(rewards, 2, 1, 2, "rloo")
    torch.testing.assert_close(got.all, torch.tensor([0.5, -0.5, 0.0, 0.0]))  # 1 - 0.5
    torch.testing.assert_close(got.local, torch.tensor([0.0, 0.0]))
    assert (got.stats.n_flat, got.stats.n_zero_adv, got.stats.adv_abs_max) == (1, 1, 0.5)
    assert math.isnan(float(got.group_reward_std[1]))
    single = advantages_from_gathered(torch.tensor([1.0, 0.0]), 1, 0, 2, "rloo")
    assert bool((single.all == 0).all())
    assert (single.stats.frac_flat, single.stats.frac_zero_adv) == (1.0, 1.0)
    # batch_zscore moves flat groups (and singletons): flat, but not zero
    moved = advantages_from_gathered(torch.tensor([1.0, nan, 0.0, 0.0]), 2, 0, 4,
                                     "batch_zscore")
    assert (moved.stats.n_flat, moved.stats.n_zero_adv) == (2, 0)
    assert bool((moved.all[[0, 2, 3]] != 0).all()) and float(moved.all[1]) == 0.0


def _launch_two_ranks(worker: Path, *args: object, timeout: float) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 worker *args``, failing (not hanging) past
    ``timeout``.

    ``--standalone``: the launcher binds its store on a port the OS picks (no port chosen here and
    bound later). Past ``timeout`` every rank still alive is asked for its Python stacks
    (SIGUSR1: the workers register faulthandler) and, where py-spy is installed, its native ones;
    the ranks (each in its own session under torchrun) and the launcher are then killed and the
    test fails with those stacks and the end of stderr.
    """
    import psutil  # an accelerate dependency, hence there wherever TRL is

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(worker), *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        launcher = psutil.Process(proc.pid)
        ranks = launcher.children(recursive=True)
        venv_bin = str(Path(sys.executable).parent)
        spy = shutil.which("py-spy") or shutil.which("py-spy", path=venv_bin)
        report = []
        for rank in ranks:
            with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError,
                                     subprocess.TimeoutExpired):  # a rank that ends meanwhile
                report.append(f"--- pid {rank.pid}: {' '.join(rank.cmdline()[-3:])}")
                os.kill(rank.pid, signal.SIGUSR1)  # Python stacks of all threads, to stderr
                if spy:
                    dump = subprocess.run([spy, "dump", "--native", "--pid", str(rank.pid)],
                                          capture_output=True, text=True, timeout=60)
                    report.append(dump.stdout + dump.stderr)
        time.sleep(2)  # faulthandler writes from the signal handler
        for p in [*ranks, launcher]:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        out, err = proc.communicate()
        pytest.fail(f"{worker.name} did not finish in {timeout:.0f} s; ranks still alive:\n"
                    + "\n".join(report) + f"\n--- stderr (end) ---\n{err[-12000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_two_processes_normalize_split_groups_whole(tiny_policy_dir, tmp_path):
    """2 gloo ranks, real trainer: a group split over the ranks is normalized as one group."""
    sys.path.insert(0, str(WORKER.parent))
    try:
        from trl_two_process_worker import PER_RANK, TABLE
    finally:
        sys.path.remove(str(WORKER.parent))
    # ~12 s on a quiet machine, 25-50 s on 2 loaded cores. The worker tears gloo down after the
    # DDP wrapper is gone (gloo_teardown_worker.destroy_after_ddp); the other order hung one rank
    # at exit in 2 of 40 runs (test_gloo_teardown_... below forces that hazard).
    done = _launch_two_ranks(WORKER, tiny_policy_dir, tmp_path, timeout=180)
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["world_size"], r["backend"]) for r in ranks] == [(2, "gloo")] * 2
    calls = [r["calls"][0] for r in ranks]
    prompts = calls[0]["prompts"] + calls[1]["prompts"]  # gather order, 12 rows
    assert prompts[PER_RANK - 2 : PER_RANK + 2] == ["what is 2 + 2 ?"] * G  # split 2 | 2
    rewards = torch.tensor([TABLE[p][i % G] for i, p in enumerate(prompts)]).view(-1, G)
    whole = normalize(rewards, "bernoulli_std").reshape(-1)  # (12,)
    for rank, call in enumerate(calls):
        mine = whole[rank * PER_RANK : (rank + 1) * PER_RANK]
        torch.testing.assert_close(torch.tensor(call["advantages"]), mine, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(torch.tensor(call["logged"]), whole, rtol=1e-6, atol=1e-6)
    # Each half of the split group alone is flat (1, 1 | 0, 0) and would get 0.
    split = torch.tensor(calls[0]["advantages"][-2:] + calls[1]["advantages"][:2])
    assert bool((split.abs() > 0.5).all())
    for r in ranks:
        assert r["log"]["grponorm/normalizer"] == "bernoulli_std"
        assert (r["log"]["grponorm/frac_flat"], r["log"]["grponorm/frac_zero_adv"]) == (0.0, 0.0)


def test_gloo_teardown_with_a_gloo_thread_that_needs_the_gil(tmp_path):
    """The teardown of the 2-process workers, with the hang's condition forced: on rank 0 a
    Python callback holds a gloo worker thread until teardown begins and then needs the GIL.
    Destroying the group after the DDP wrapper is freed (its Reducer would otherwise destroy it
    under the GIL and join that thread for ever) waits for the thread, then exits."""
    sys.path.insert(0, str(GLOO_WORKER.parent))
    try:
        from gloo_teardown_worker import HOLD_S
    finally:
        sys.path.remove(str(GLOO_WORKER.parent))
    done = _launch_two_ranks(GLOO_WORKER, "safe", tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["gathered"] for r in ranks] == [[[0.0, 0.0], [1.0, 1.0]]] * 2
    assert ranks[0]["held_on_worker_thread"] == [True]  # the callback ran on a gloo thread
    # The group's destructor returned only after the held thread had taken the GIL again.
    assert json.loads((tmp_path / "teardown0.json").read_text())["teardown_s"] >= HOLD_S


#: A second reward function, fully scored, that disagrees with BINARY within groups.
STYLE = {
    "what is 1 + 1 ?": [0.0, 1.0, 0.5, 0.5],
    "what is 2 + 2 ?": [1.0, 0.0, 0.0, 1.0],  # BINARY is flat here: GDPO still moves it
    "what is 3 * 3 ?": [0.5, 0.5, 0.5, 0.5],
}


def test_gdpo_with_two_reward_functions_trains_on_gdpo_advantages(tiny_policy_dir, tmp_path):
    """One real TRL step: components from rewards_per_func, weights from reward_weights."""
    from grponorm.normalizers import NormalizerContext

    trainer = _train(
        NormalizedRecorder,
        tiny_policy_dir,
        tmp_path,
        [_table_reward(BINARY), _table_reward(STYLE)],
        args=_args(tmp_path, reward_weights=[1.0, 0.5]),
        normalizer="gdpo",
    )
    record = _only_record(trainer)
    prompts = record["prompts"][::G]  # one per group, TRL's contiguous layout
    comp = torch.tensor([[BINARY[p], STYLE[p]] for p in prompts]).transpose(1, 2)  # (3, G, 2)
    want = normalize(comp.sum(-1), "gdpo", weights=[1.0, 0.5],
                     context=NormalizerContext(components=comp)).reshape(-1)
    torch.testing.assert_close(record["advantages"], want, rtol=1e-5, atol=1e-6)
    flat_binary = torch.tensor([p == "what is 2 + 2 ?" for p in record["prompts"]])
    assert bool((record["advantages"][flat_binary] != 0).all())


def test_normalizer_state_is_saved_with_checkpoints_and_restored(tiny_policy_dir, tmp_path):
    """running_std: the state goes into checkpoint-1 and comes back on resume."""
    from grponorm.integrations.trl import STATE_FILE

    args = _args(tmp_path, save_strategy="steps", save_steps=1)
    trainer = _train(NormalizedRecorder, tiny_policy_dir, tmp_path, [_table_reward(BINARY)],
                     args=args, normalizer="running_std")
    assert trainer.normalizer_state.count == 3 * G
    ckpt = Path(args.output_dir) / "checkpoint-1"
    saved = json.loads((ckpt / STATE_FILE).read_text())
    assert saved["normalizer"] == "running_std"
    assert saved["state"] == trainer.normalizer_state.state_dict()
    fresh = NormalizedRecorder(
        model=str(tiny_policy_dir), reward_funcs=[_table_reward(BINARY)], args=args,
        train_dataset=Dataset.from_dict({"prompt": list(BINARY)}), normalizer="running_std",
    )
    assert fresh.normalizer_state.count == 0
    fresh._load_from_checkpoint(str(ckpt))
    assert fresh.normalizer_state.state_dict() == saved["state"]
