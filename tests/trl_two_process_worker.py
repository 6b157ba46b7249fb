"""One rank of the 2-process NormalizedGRPOTrainer test (run by torchrun, gloo on CPU).

Usage: ``torchrun --nproc_per_node 2 tests/trl_two_process_worker.py MODEL_DIR OUT_DIR``.
Three prompts, G=4, 6 rows per process: group 1 (rewards 1, 1, 0, 0) is split across the two
ranks, whose halves alone would be flat. Each rank runs one real training step and writes
``rank<r>.json``: its prompts, the advantages it trains on, the completions-table advantages
(all ranks) and its logged metrics. The trainer (and its DDP wrapper) is freed before the gloo
group is destroyed (:func:`gloo_teardown_worker.destroy_after_ddp`: the other order can leave
a rank hanging at exit); SIGUSR1 dumps every thread's Python stack to stderr.
"""

from __future__ import annotations

import faulthandler
import json
import signal
import sys

import torch
import torch.distributed as dist

from gloo_teardown_worker import destroy_after_ddp  # also imports torch.distributed.nn first

#: Rewards by prompt and position in the group; the key order is the dataset order.
TABLE = {
    "what is 1 + 1 ?": [1.0, 0.0, 0.0, 1.0],
    "what is 2 + 2 ?": [1.0, 1.0, 0.0, 0.0],
    "what is 3 * 3 ?": [0.0, 1.0, 1.0, 1.0],
}
G = 4
PER_RANK = 6


def table_reward(prompts, completions, **kwargs):
    """Reward by (prompt, global row % G); rows are rank-major, as TRL gathers them."""
    offset = dist.get_rank() * len(prompts)
    return [TABLE[p][(offset + i) % G] for i, p in enumerate(prompts)]


def main(model_dir: str, out_dir: str) -> None:
    """One training step; writes this rank's record."""
    from datasets import Dataset
    from trl import GRPOConfig

    from grponorm.integrations.trl import NormalizedGRPOTrainer

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # stacks on demand (the test)
    torch.set_num_threads(1)
    records = []

    class Recorder(NormalizedGRPOTrainer):
        def _generate_and_score_completions(self, inputs):
            out = super()._generate_and_score_completions(inputs)
            records.append(
                {
                    "prompts": [x["prompt"] for x in inputs],
                    "advantages": out["advantages"].tolist(),
                    "logged": list(self._logs["advantages"]),
                }
            )
            return out

    args = GRPOConfig(
        output_dir=f"{out_dir}/run",
        per_device_train_batch_size=PER_RANK,
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
        shuffle_dataset=False,  # groups in TABLE order: group 1 straddles the two ranks
        seed=0,
    )
    trainer = Recorder(
        model=model_dir,
        reward_funcs=table_reward,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": list(TABLE)}),
        normalizer="bernoulli_std",
    )
    trainer.train()
    rank = dist.get_rank()
    record = {
        "rank": rank,
        "world_size": dist.get_world_size(),
        "backend": dist.get_backend(),
        "calls": records,
        "log": trainer.state.log_history[0],
    }
    del trainer  # its DDP wrapper must go before the group does
    with open(f"{out_dir}/rank{rank}.json", "w") as f:
        json.dump(record, f)
    dist.barrier()
    destroy_after_ddp()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
