"""E6: GRPO-Std vs No-Std (any normalizers) on Easy and Hard slices, paired by seed (Figure 2).

Reads top to bottom: measure the base model's per-prompt success on each slice and on candidate
levels (is there within-group variance to learn from? how was the Hard slice chosen?) -> train
one run per grid point, each in ``runs/<point>/``, ``workers`` at once (``grid.py``: worker
processes or a Ray cluster):

- the main grid: every slice x normalizer x seed at the shared ``lr`` and ``optimizer``;
- a learning-rate sweep (``lrs``, AdamW) and an optimizer study (``sgd_lrs``, plain SGD) on
  ``sweep_slices`` with the first ``sweep_seeds`` seeds;

-> smoothed training-accuracy curves with 95% bands -> per-seed results -> paired comparisons
with intervals and verdicts (``rl_compare_stats``): shared LR, tuned LR per normalizer, SGD, and
by base pass rate -> table and summary.

Analysis only (``analyze_only``, ``--analyze-only --grid-dir DIR``): the finished runs of a grid
folder are read as they are -- nothing is trained, measured or written there -- and the table,
figure and summary go to a new run folder under ``out`` (``runs/rl_compare/<stamp>/`` by
default), so a committed grid (``results/``) is never rewritten. ``pilot_dir`` names a pilot grid
whose seeds are pooled into the pre-registered all-seeds rows (``rl_compare_stats``); its runs
must have the grid's settings, run by run, or the analysis stops.

Resumable at run granularity: ``grid_dir=DIR`` (or re-running ``reproduce``) skips finished
runs (those with ``summary.json``) and resumes interrupted ones from their last checkpoint, with
the settings the grid was started with (``workers``, ``executor``, ``ray_address``,
``gpus_per_run`` and ``run_memory_gb`` are taken from the new invocation). A failing run leaves
``error.txt`` in its folder; the others finish, then :class:`grid.GridError` is raised.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
from scipy import stats as sps

from .. import plotting
from ..rl.choices import DIFFICULTIES, SLICES
from ..rl.config import TrainConfig, load_saved_config
from ..rl.problems import build_problems
from ..rl.summary import read_metrics, read_summary, summary_cells, summary_window
from ..runs import Run, environment, markdown_table
from .grid import GridError, Job, plan, run_jobs
from .rl_compare_bins import bin_rows, bins_figure, tuned_picks
from .rl_compare_report import METRIC_LABELS, ordered, report_rows  # noqa: F401 (module API)
from .rl_compare_spread import histogram_figure, measure_spread
from .rl_compare_stats import (
    METRICS,
    PAPER,
    PREREGISTRATION,
    PRIMARY,
    TUNED_PREREGISTRATION,
    base_rates,
    comparisons,
    preregistration_mismatches,
    rliable_inputs,
    rliable_rows,
)


@dataclass
class CompareConfig(TrainConfig):
    """E6 settings: the comparison grid; every other field is a ``rl train`` setting shared by
    all runs of the grid (``normalizer``, ``slice``, ``seed`` and ``run_dir`` are set per run)."""

    HIDDEN: ClassVar[tuple[str, ...]] = ("normalizer", "slice", "seed", "run_dir", "resume")
    normalizers: list = field(default_factory=lambda: ["group_std", "none"])  # compared (Std 1st)
    slices: list = field(default_factory=lambda: list(DIFFICULTIES))  # slices compared (panels)
    seeds: list = field(default_factory=lambda: [0])  # training seeds (same for every run)
    lrs: list[float] = field(default_factory=list)  # AdamW learning-rate sweep on sweep_slices
    sgd_lrs: list[float] = field(default_factory=list)  # plain-SGD LRs on sweep_slices (optimizers)
    sweep_slices: list = field(default_factory=lambda: ["hard"])  # slices of the sweeps
    sweep_seeds: int = 0  # seeds of the sweeps: the first N of seeds (0 = all)
    bins: list = field(default_factory=lambda: [0.25, 0.5, 0.75])  # base pass-rate bin edges
    smooth: int = 5  # moving-average window of the accuracy curves (steps)
    measure_spread: bool = True  # base pass rates: histograms and the pass-rate bins
    spread_n: int = 32  # questions per histogram (0 = all distinct questions)
    spread_levels: list = field(default_factory=list)  # candidate levels to histogram as well
    spread_only: bool = False  # only measure grid_dir's base pass rates into its spread.json
    steps: int = 25  # training steps per run
    checkpoint_every: int = 5  # checkpoint every N steps of each run
    grid_dir: str = ""  # compare folder to continue (finished runs skipped; more --seeds extend it)
    workers: int = 0  # runs at once (0 = auto from cores and GPUs)
    executor: str = "local"  # local (worker processes) or ray
    ray_address: str = ""  # Ray cluster address ("" = start a local one)
    threads: int = 0  # torch CPU threads of each run (0 = the cores split between the workers)
    gpus_per_run: float = 1.0  # GPU share of one run (0.5 = two runs per GPU)
    run_memory_gb: float = 1.1  # host memory of one CPU run (the embedded model in fp32: ~1.1)
    primary_window: int = 10  # the primary metric: train accuracy over the last N steps
    analyze_only: bool = False  # no training: table, figure, summary of grid_dir's finished runs
    # (written to a new run folder under out; the grid folder is only read)
    pilot_dir: str = ""  # a pilot grid pooled into the pre-registered all-seeds rows
    rliable_reps: int = 2000  # bootstrap resamples of the rliable rows (IQM, P(improvement))


#: The field ``reproduce`` sets to continue an interrupted grid (finished runs are skipped).
CONTINUE_FIELD = "grid_dir"
#: How a grid runs, not what it computes: taken from the invocation that continues a grid.
EXECUTION_FIELDS = ("workers", "executor", "ray_address", "gpus_per_run", "run_memory_gb",
                    "analyze_only", "spread_only")
#: How a grid is read, not what it trained: taken from the invocation too (``out`` is where an
#: analysis goes; a continued training grid writes into its own folder).
ANALYSIS_FIELDS = ("out", "pilot_dir", "rliable_reps")
#: Fields of a run's saved config that differ between runs of one setting (pooling check).
PER_RUN_FIELDS = ("seed", "run_dir", "out", "resume")


@dataclass(frozen=True)
class Point:
    """One run of the grid."""

    slice: str
    normalizer: str
    optimizer: str
    lr: float
    seed: int

    @property
    def key(self) -> str:  # the arm: what is compared across seeds
        return f"{self.slice}/{self.normalizer}/{self.optimizer}/lr{self.lr:g}"

    def folder(self, cfg: CompareConfig) -> str:
        if (self.optimizer, self.lr) == (cfg.optimizer, cfg.lr):  # the main grid
            return f"{self.slice}-{self.normalizer}-s{self.seed}"
        return f"{self.slice}-{self.normalizer}-{self.optimizer}-lr{self.lr:g}-s{self.seed}"


def train_config(
    cfg: CompareConfig, normalizer: str, slice_: str, seed: int, run_dir: Path,
    optimizer: str | None = None, lr: float | None = None,
) -> TrainConfig:
    """The TrainConfig of one sub-run: the shared settings plus this grid point."""
    return TrainConfig(**{**cfg.train_fields(), "normalizer": normalizer, "slice": slice_,
                          "seed": int(seed), "run_dir": str(run_dir), "resume": "",
                          "optimizer": optimizer or cfg.optimizer,
                          "lr": cfg.lr if lr is None else float(lr)})


def grid(cfg: CompareConfig) -> list[Point]:
    """Main grid first (every seed), then the sweeps; no point twice."""
    points = [Point(s, n, cfg.optimizer, cfg.lr, int(seed))
              for s in cfg.slices for n in cfg.normalizers for seed in cfg.seeds]
    sweep_seeds = cfg.seeds[: cfg.sweep_seeds or None]
    for opt, lrs in (("adamw", cfg.lrs), ("sgd", cfg.sgd_lrs)):
        points += [Point(s, n, opt, float(lr), int(seed)) for s in cfg.sweep_slices
                   for lr in lrs for n in cfg.normalizers for seed in sweep_seeds]
    return list(dict.fromkeys(points))


def smooth(y, window: int) -> np.ndarray:
    """Trailing moving average (the first points average what exists so far)."""
    y = np.asarray(y, dtype=float)
    if window <= 1 or y.size == 0:
        return y
    c = np.cumsum(np.insert(y, 0, 0.0))
    idx = np.arange(1, y.size + 1)
    lo = np.maximum(0, idx - window)
    return (c[idx] - c[lo]) / (idx - lo)


def _figure(cfg: CompareConfig, curves: dict, path: Path) -> None:
    """Smoothed training accuracy of the main grid: mean over seeds with a 95% t band."""
    fig, axes = plotting.subplots(1, len(cfg.slices), w=4.8, h=3.4)
    for ax, s in zip(axes[0], cfg.slices, strict=True):
        for norm in cfg.normalizers:
            key = Point(s, norm, cfg.optimizer, cfg.lr, 0).key
            ys = [[r["acc"] for r in recs] for (k, _), recs in curves.items() if k == key]
            if not ys:
                continue
            n = min(len(y) for y in ys)
            ys = np.array([smooth(y[:n], cfg.smooth) for y in ys])  # (seeds, steps)
            x, m = np.arange(1, n + 1), ys.mean(axis=0)
            (line,) = ax.plot(x, m, color=plotting.color(norm), lw=1.6,
                              label=f"{norm} ({len(ys)} seeds)")
            if len(ys) > 1:
                half = sps.t.ppf(0.975, len(ys) - 1) * ys.std(axis=0, ddof=1) / np.sqrt(len(ys))
                ax.fill_between(x, m - half, m + half, color=line.get_color(), alpha=0.2, lw=0)
        ax.set_title(f"{s.capitalize()} (smoothed, window {cfg.smooth}; 95% CI)")
        ax.set_xlabel("step")
        ax.set_ylabel("training sample accuracy")
        ax.legend(fontsize=7)
    plotting.save(fig, path)


def _settings(cfg: CompareConfig) -> CompareConfig:
    """A new grid's settings, or those a continued grid (``grid_dir``) was started with. Old
    compare folders (a ``resume`` field in config.json) read the same. More seeds extend a
    training grid (saved in its config.json); an analysis (``analyze_only``) reads the saved
    seeds and writes nothing into the grid folder."""
    if cfg.resume:
        raise ValueError("resume is set per run of the grid; continue a compare folder with "
                         "grid_dir (--grid-dir)")
    if not cfg.grid_dir:
        return cfg
    path = Path(cfg.grid_dir).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"cannot continue: {path / 'config.json'} not found")
    saved = load_saved_config(path, CompareConfig)
    default = CompareConfig()
    kept = {*EXECUTION_FIELDS, *ANALYSIS_FIELDS, "seeds", "grid_dir", "resume"}
    clash = [f"{f.name}={getattr(cfg, f.name)!r} (the grid's: {getattr(saved, f.name)!r})"
             for f in dataclasses.fields(CompareConfig) if f.name not in kept
             and getattr(cfg, f.name) != getattr(default, f.name)
             and getattr(cfg, f.name) != getattr(saved, f.name)]
    if clash:  # a setting given on the command line would otherwise be ignored in silence
        raise ValueError(f"{path} continues with the settings it was started with; these "
                         f"differ: {'; '.join(clash)}. Drop them, or start a new grid")
    seeds = list(saved.seeds)
    if set(saved.seeds) < set(cfg.seeds) and not cfg.analyze_only:  # extend it, in order
        seeds += [s for s in cfg.seeds if s not in saved.seeds]
        extended = dataclasses.replace(saved, seeds=seeds)
        Run(path).write_json("config.json", {"config": extended, "environment": environment()})
    return dataclasses.replace(saved, resume="", grid_dir=str(path), seeds=seeds,
                               **{k: getattr(cfg, k) for k in EXECUTION_FIELDS + ANALYSIS_FIELDS})


def run(cfg: CompareConfig, progress: bool = True) -> dict:
    """Train the grid (skipping finished runs), then write figures, table and summary."""
    cfg = _settings(cfg)
    if not cfg.normalizers or not cfg.slices or not cfg.seeds:
        raise ValueError("normalizers, slices and seeds must each name at least one value")
    bad = [s for s in [*cfg.slices, *cfg.sweep_slices] if s not in SLICES]
    if bad:
        raise ValueError(f"slices must be one of {', '.join(SLICES)}; got {bad}")
    for norm in cfg.normalizers:  # fail fast, before any training
        train_config(cfg, norm, cfg.slices[0], cfg.seeds[0], Path(".")).validate()
    if cfg.analyze_only and cfg.spread_only:
        raise ValueError("analyze_only reads a grid and spread_only writes into it: choose one")
    todo = grid(cfg)
    if cfg.analyze_only:
        return _analyze(cfg, todo)
    if cfg.spread_only:
        return _spread_only(cfg, progress)
    how = plan(len(todo), workers=cfg.workers, executor=cfg.executor,
               ray_address=cfg.ray_address, threads=cfg.threads, device=cfg.device,
               gpus_per_run=cfg.gpus_per_run, run_memory_gb=cfg.run_memory_gb)
    out = Run(Path(cfg.grid_dir)) if cfg.grid_dir else Run.create(cfg.out, "rl_compare", cfg)
    spread = None
    if cfg.measure_spread:
        spread_file = out.file("spread.json")
        if spread_file.is_file():
            spread = json.loads(spread_file.read_text())
        else:
            base = train_config(cfg, cfg.normalizers[0], "all", cfg.seeds[0], out.path)
            spread = measure_spread(base, cfg.slices, cfg.spread_levels, cfg.spread_n, out,
                                    progress)
            out.write_json("spread.json", spread)

    jobs = [Job(f"{pt.key} seed {pt.seed}",
                train_config(cfg, pt.normalizer, pt.slice, pt.seed,
                             out.path / "runs" / pt.folder(cfg), pt.optimizer, pt.lr))
            for pt in todo]
    results = run_jobs(jobs, how, progress, status_file=out.file("progress.json"))
    failed = [r for r in results if not r.ok]
    if failed:
        raise GridError(
            f"{len(failed)} of {len(results)} runs failed; the others finished. Fix the cause "
            f"and continue with --grid-dir {out.path}:\n"
            + "\n".join(f"  {r.run_dir}: {r.error} (traceback in error.txt there)" for r in failed))
    points, curves = _collect(cfg, todo, [(Path(r.run_dir), r.summary) for r in results])
    return _finish(cfg, out, out.path, points, curves, spread)


def _spread_only(cfg: CompareConfig, progress: bool) -> dict:
    """``spread_only``: the base pass rates of the grid's training questions (and their
    histograms) into ``grid_dir``'s ``spread.json`` / ``success_hist.png``; nothing is trained.
    An existing ``spread.json`` is kept (refused: delete it to measure again)."""
    if not cfg.grid_dir:
        raise ValueError("spread_only measures into a grid folder: give grid_dir (--grid-dir)")
    out = Run(Path(cfg.grid_dir))
    if out.file("spread.json").is_file():
        raise FileExistsError(f"{out.file('spread.json')} exists; delete it to measure again")
    base = train_config(cfg, cfg.normalizers[0], "all", cfg.seeds[0], out.path)
    spread = measure_spread(base, cfg.slices, cfg.spread_levels, cfg.spread_n, out, progress)
    out.write_json("spread.json", spread)
    return {"run_dir": str(out.path), "spread": {k: v for k, v in spread.items() if k != "rates"},
            "questions": len(spread["rates"])}


def _analyze(cfg: CompareConfig, todo: list[Point]) -> dict:
    """``analyze_only``: the finished runs of ``grid_dir`` (those with ``summary.json``) as they
    are; the table, figure and summary go to a new run folder under ``out``."""
    if not cfg.grid_dir:
        raise ValueError("analyze_only reads a grid folder: give grid_dir (--grid-dir)")
    grid_path = Path(cfg.grid_dir)
    done = [pt for pt in todo if (grid_path / "runs" / pt.folder(cfg) / "summary.json").is_file()]
    if not done:
        raise ValueError(f"analyze_only: no finished run under {grid_path / 'runs'}")
    spread_file = grid_path / "spread.json"
    spread = json.loads(spread_file.read_text()) if spread_file.is_file() else None
    pilot = _pilot(cfg, grid_path, done) if cfg.pilot_dir else None
    points, curves = _collect(cfg, done, [_finished(grid_path, pt, cfg) for pt in done])
    out = Run.create(cfg.out, "rl_compare", cfg)
    return _finish(cfg, out, grid_path, points, curves, spread, pilot)


def _collect(cfg: CompareConfig, pts: list[Point], runs: list[tuple[Path, dict]]):
    """``points`` (point key -> per-seed summaries with the window metrics) and ``curves``
    (``(point key, seed)`` -> train records) of finished runs, read from their folders."""
    points, curves = {}, {}
    for pt, (run_dir, summary) in zip(pts, runs, strict=True):
        recs = read_metrics(run_dir, None)  # train and eval records
        points.setdefault(pt.key, []).append(
            {**summary, **window_metrics(recs, cfg.primary_window)})
        curves[(pt.key, pt.seed)] = [r for r in recs if r.get("kind") == "train"]
    return points, curves


def _run_settings(run_dir: Path) -> tuple[dict, dict]:
    """A finished run's saved settings (less :data:`PER_RUN_FIELDS`) and environment."""
    saved = json.loads((run_dir / "config.json").read_text())
    return ({k: v for k, v in saved["config"].items() if k not in PER_RUN_FIELDS},
            saved.get("environment", {}))


def _pilot(cfg: CompareConfig, grid_path: Path, done: list[Point]) -> dict:
    """The pilot grid of ``pilot_dir``: its finished main-grid runs, each checked against the
    grid's run of the same slice and normalizer (every saved setting but the seed and the
    folders must be equal; otherwise ValueError: the seeds are not pooled).

    Returns:
        ``{"dir", "seeds", "points", "settings", "environment"}``: the pilot's points as
        :func:`_collect` gives them; ``settings`` says what was compared; ``environment``
        whether the runs' recorded environments (versions, platform, cores) were equal too.
    """
    path = Path(cfg.pilot_dir)
    pcfg = load_saved_config(path, CompareConfig)
    main = [pt for pt in grid(pcfg) if (pt.optimizer, pt.lr) == (pcfg.optimizer, pcfg.lr)
            and (path / "runs" / pt.folder(pcfg) / "summary.json").is_file()]
    if not main:
        raise ValueError(f"pilot_dir: no finished run under {path / 'runs'}")
    overlap = sorted({pt.seed for pt in main} & {pt.seed for pt in done})
    if overlap:
        raise ValueError(f"pilot_dir: seeds {overlap} are in the pilot and in the grid; a "
                         "pooled seed must come from one of them")
    ref = {}
    for pt in done:
        if (pt.optimizer, pt.lr) == (cfg.optimizer, cfg.lr):
            ref.setdefault((pt.slice, pt.normalizer), grid_path / "runs" / pt.folder(cfg))
    same_env = True
    for pt in main:
        if (pt.slice, pt.normalizer) not in ref:
            raise ValueError(f"pilot_dir: the grid has no finished {pt.slice}/{pt.normalizer} "
                             "run to check the pilot's against")
        (mine, env), (theirs, env0) = (_run_settings(path / "runs" / pt.folder(pcfg)),
                                       _run_settings(ref[(pt.slice, pt.normalizer)]))
        differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if differ:
            raise ValueError(f"pilot_dir: {path / 'runs' / pt.folder(pcfg)} differs from "
                             f"{ref[(pt.slice, pt.normalizer)]} in {differ}: its seeds are not "
                             "pooled with the grid's")
        same_env &= env == env0
    points, _ = _collect(cfg, main, [_finished(path, pt, pcfg) for pt in main])
    return {"dir": str(path), "seeds": sorted({pt.seed for pt in main}), "points": points,
            "settings": "identical to the grid's, run by run, except "
                        + ", ".join(PER_RUN_FIELDS),
            "environment": "identical" if same_env else "differs (versions or machine)"}


def _finished(grid_path: Path, pt: Point, cfg: CompareConfig) -> tuple[Path, dict]:
    """A finished run's folder and summary, read from the grid folder (``analyze_only``)."""
    run_dir = grid_path / "runs" / pt.folder(cfg)
    return run_dir, read_summary(run_dir)


def window_metrics(recs: list[dict], window: int) -> dict:
    """The pre-registered primary metric and the secondary held-out one of a run's records
    (docs/e6-preregistration.md): ``acc_primary``, the mean training sample accuracy over the
    last ``window`` steps, and ``eval_mean``, the held-out accuracy averaged over every eval
    after step 0 (None without one)."""
    train = [r["acc"] for r in recs if r.get("kind") == "train"][-window:]
    evals = [r["eval_acc"] for r in recs if r.get("kind") == "eval" and r["step"] > 0
             and r.get("eval_acc") is not None]
    return {"acc_primary": float(np.mean(train)) if train else None,
            "eval_mean": float(np.mean(evals)) if evals else None}


def _entry(rs: list[dict]) -> dict:
    """Means over seeds of a grid point, and the per-seed values the comparisons use."""
    def mean(key):
        vals = [r[key] for r in rs if r.get(key) is not None]
        return float(np.mean(vals)) if vals else None

    keys = ("acc_start", "acc_end", "acc_primary", "eval_start", "eval_end", "eval_mean",
            "frac_flat", "frac_zero_adv",
            "time_step_s", "time_generate_s", "time_train_s", "time_forward_s",
            "time_backward_s", "tokens_per_s", "train_time_s")
    return {**{k: mean(k) for k in keys}, "window": summary_window(rs[0]), "n_seeds": len(rs),
            "seeds": [r["seed"] for r in rs],
            **{f"{k}_seeds": [r.get(k) for r in rs] for k in METRICS}}


def preregistered(cfg: CompareConfig) -> tuple[bool, bool, list[str]]:
    """Whether the grid is docs/e6-preregistration.md's (its settings; the seeds are checked
    per reading) and whether its AdamW sweep is docs/e6-tuned-preregistration.md's, with the
    settings that differ from the pre-registered ones."""
    mismatches = preregistration_mismatches(dataclasses.asdict(cfg))
    tuned = TUNED_PREREGISTRATION
    swept = sorted({cfg.lr, *map(float, cfg.lrs)})
    tuned_ok = (not mismatches and len(swept) == len(tuned["lrs"])
                and all(np.isclose(swept, tuned["lrs"], rtol=1e-9))
                and set(tuned["slices"]) <= set(cfg.sweep_slices) and not cfg.sweep_seeds)
    return not mismatches, tuned_ok, mismatches


def _finish(cfg: CompareConfig, out: Run, grid_path: Path, points: dict, curves: dict, spread,
            pilot: dict | None = None) -> dict:
    _figure(cfg, curves, out.file("accuracy.png"))
    if spread and not out.file("success_hist.png").is_file():  # an analysis: drawn again
        histogram_figure(spread, cfg.pass_rate_k, out)
    entries = {k: _entry(rs) for k, rs in points.items()}
    arms = (cfg.normalizers[0], cfg.normalizers[1]) if len(cfg.normalizers) > 1 else None
    prereg, tuned_prereg, mismatches = preregistered(cfg)
    rows, bins, robust, bases = [], [], [], {}
    if arms:
        shared = (cfg.optimizer, cfg.lr)
        sweeps = {"adamw": sorted({cfg.lr, *map(float, cfg.lrs)}) if cfg.optimizer == "adamw"
                  else [float(x) for x in cfg.lrs], "sgd": [float(x) for x in cfg.sgd_lrs]}
        if cfg.optimizer == "sgd":
            sweeps["sgd"] = sorted({cfg.lr, *sweeps["sgd"]})
        rows = comparisons(points, cfg.slices, arms, shared,
                           {k: v for k, v in sweeps.items() if v}, cfg.sweep_slices,
                           preregistered=prereg, pilot=pilot["points"] if pilot else None,
                           tuned_preregistered=tuned_prereg)
        first = "confirmatory" if any(r.get("reading") == "confirmatory" for r in rows) \
            else "shared"
        what = {"confirmatory": "shared LR, confirmatory seeds",
                "shared": f"shared LR ({cfg.optimizer}, {cfg.lr:g})"}[first]
        robust = rliable_rows(rliable_inputs(rows, first), arms, what, cfg.rliable_reps)
        robust += rliable_rows(rliable_inputs(rows, "tuned"), arms, "cross-fitted tuned LR",
                               cfg.rliable_reps)
        bases = base_rates(points, cfg.slices, arms, shared)
        if spread and cfg.task == "arithmetic":
            bins = _bins(cfg, out, arms, curves, rows, spread["rates"])
    out.write_text("table.md", _table(cfg, entries, rows + robust, bins, spread, bases))
    # the main grid under "slice/normalizer" (what the report and older readers key on)
    main = {f"{k.split('/')[0]}/{k.split('/')[1]}": e for k, e in entries.items()
            if k.endswith(f"/{cfg.optimizer}/lr{cfg.lr:g}")}
    runs = [r for rs in points.values() for r in rs]
    summary = {
        "run_dir": str(out.path),
        "grid_dir": str(grid_path),
        "figures": ["accuracy.png"] + (["pass_rate_bins.png"] if bins else [])
        + (["success_hist.png"] if spread else []),
        "results": main,
        "points": entries,
        "comparisons": rows,
        "rliable": robust,
        "base_rates": bases,
        "primary_window": cfg.primary_window,
        "preregistration": {**PREREGISTRATION, "applies": prereg, "mismatches": mismatches,
                            "rule": "confirmatory seeds: 95% intervals, the verdict rows; the "
                                    "extension (a second look): alpha split over the looks "
                                    "(Bonferroni), 1 - alpha / looks intervals and TOST"},
        "tuned_preregistration": {**TUNED_PREREGISTRATION, "applies": tuned_prereg},
        "pilot": {k: v for k, v in pilot.items() if k != "points"} if pilot else None,
        "bins": bins,
        "spread": {k: v for k, v in (spread or {}).items() if k != "rates"} or None,
        "runs": len(runs),
        "runs_wall_time_s": round(sum(float(r.get("wall_time_s") or 0.0) for r in runs), 1),
        "environment": environment(),
    }
    out.finish(summary)
    return summary


def _bins(cfg: CompareConfig, out: Run, arms: tuple, curves: dict, rows: list[dict],
          rates: dict) -> list[dict]:
    """Std − No-Std by base pass rate (``rl_compare_bins``) at the shared LR and, where the
    tuned rows ran, at each arm's cross-fitted LR; draws ``pass_rate_bins.png``."""
    pool, _ = build_problems(train_config(cfg, arms[0], "all", 0, out.path))
    questions = {p.id: p.question for p in pool}
    seeds = sorted({seed for (_, seed) in curves})
    bins = []
    for s in cfg.slices:
        readings = {"shared LR": (cfg.optimizer, {x: (cfg.lr, cfg.lr) for x in seeds}, None)}
        tuned = [r for r in rows if r.get("reading") == "tuned" and r["slice"] == s
                 and r.get("metric") == PRIMARY and r.get("chosen")]
        if tuned:  # interim while the tuned rows are (the pre-registration's stopping rule)
            readings["tuned LR"] = (tuned[0]["optimizer"], tuned_picks(tuned[0], arms),
                                    tuned[0].get("interim"))
        for reading, (opt, picks, interim) in readings.items():
            bins += bin_rows(curves, rates, questions, s, arms, opt, picks, cfg.bins,
                             cfg.primary_window, reading, reps=cfg.rliable_reps,
                             interim=interim)
    if bins:
        bins_figure(bins, cfg.slices, out.file("pass_rate_bins.png"))
    return bins


def _table(cfg: CompareConfig, entries: dict, rows: list, bins: list, spread,
           bases: dict) -> str:
    window = next(iter(entries.values()))["window"]
    header = ["slice / normalizer / optimizer / lr", "seeds", f"train acc first {window}",
              f"train acc last {window}", "eval start", "eval end", "flat groups",
              "s/step (gen / fwd / bwd)", "tok/s"]
    text = markdown_table(header, [[k, e["n_seeds"], *summary_cells(e)] for k, e in
                                   entries.items()])
    cmp_header = ["comparison (Std − No-Std, paired by seed)", "slice", "metric",
                  "difference [CI], n: verdict"]
    text += "\n" + markdown_table(cmp_header, [[r["what"], r["slice"],
                                                r.get("metric", METRICS[0]),
                                                f"{r['text']}: {r['cell']}"]
                                               for r in ordered(rows) + bins])
    if bases:
        text += "\nTraining accuracy level of the main grid (both arms, every seed):\n\n"
        text += markdown_table(
            ["slice", "runs", f"train acc first {window}",
             f"train acc last {cfg.primary_window} (primary)", "paper (both arms)"],
            [[s, b["runs"], b["acc_start"], b["acc_primary"],
              "-" if not b["paper"] else f"{b['paper'][0]}–{b['paper'][-1]}%"]
             for s, b in bases.items()])
    if spread:
        hist = [[name, v["n"], v["per_sample_acc"], " ".join(map(str, v["hist"])),
                 v["frac_zero_variance_groups"]]
                for group in ("slices", "levels") for name, v in spread[group].items()]
        text += "\nBase model per-prompt success (before training):\n\n" + markdown_table(
            ["slice / level", "questions", "per-sample acc", "histogram (0..k correct)",
             "zero-var groups"], hist)
    return text


#: The order rows are shown in: the pre-registered primary reading first (confirmatory, then
#: all seeds, then the extension), the tuned LR, then the secondary metrics and readings.
# ------------------------------------------------------------------------------ report

TITLE = "LLM RLVR: GRPO-Std vs No-Std on Easy/Hard"
PAPER_LINE = "; ".join(f"{sl.capitalize()} ≈{p['group_std']}% vs {p['none']}%"
                       for sl, p in PAPER.items())
PROFILES = {
    # a smoke run that still draws both figures: 6 steps, 32 training questions per level (the
    # base pass rates are measured on all of them), 8 per histogram and eval
    "quick": dict(steps=6, n_train=32, spread_n=8, n_eval=8, eval_every=3, checkpoint_every=3),
    # Easy add1, Hard sub1 (base 19% per sample, half the groups all-wrong: room to learn
    # without saturating, unlike mul1); 8 paired seeds; LR sweep and SGD on Hard, 3 seeds
    "cpu": dict(levels=["add1", "sub1"], seeds=list(range(8)), steps=20, lrs=[2e-4, 1.5e-3],
                sgd_lrs=[0.3, 1.0, 3.0], sweep_seeds=3, spread_n=0,
                spread_levels=["add1", "mul1", "sub1", "add2", "ops2"]),
    "paper": dict(model="Qwen/Qwen2.5-Math-1.5B", device="cuda", task="gsm8k", slice_by="steps",
                  n_train=0, n_eval=200, max_new_tokens=512, temperature=1.0, lr=1e-5,
                  prompts_per_step=16, steps=500, eval_every=50, checkpoint_every=25,
                  seeds=[0, 1, 2], measure_spread=False, backend="trl"),
}
