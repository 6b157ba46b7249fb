"""`grponorm reproduce`: run E1-E6 under one profile and write report.html + report.md.

The experiments are the paper entries of ``grponorm.experiments.registry``; each module owns
its config overrides per profile (``PROFILES``), the paper's numbers and ``report_rows``, which
turn its summary into "paper vs ours" rows with a one-line verdict. Finished experiments leave
<out>/<id>/done.json; a re-run skips them (delete the file, or use --force, to redo one). An
interrupted experiment continues where it stopped when its module names the config field that
continues it (``CONTINUE_FIELD``, e.g. E6's ``grid_dir``); the others start afresh.

``workers`` / ``executor`` / ``ray_address`` go to the experiments that train grids of runs
(those whose config has a ``workers`` field: E6), which run that many at once
(``experiments/grid.py``). The seed sweeps of E3 and E5 stay sequential, in one process.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from ..experiments.grid import check_settings
from ..experiments.registry import Experiment, by_id, paper_experiments
from ..runs import atomic_write, environment, to_jsonable
from . import render

PROFILES = ("quick", "cpu", "paper")


@dataclass
class Section:
    """What the report shows of one experiment (from its module's report contract)."""

    eid: str  # "E1".."E6"
    title: str  # section title
    paper: str  # the paper's result, one line
    rows: Callable[[dict], list[list]]  # summary -> [[quantity, paper, ours, verdict], ...]


def section(exp: Experiment, mod: ModuleType) -> Section:
    """The report section of a paper experiment, from its module."""
    return Section(exp.eid, mod.TITLE, mod.PAPER_LINE, mod.report_rows)


def _config(exp: Experiment, profile: str, out: Path, extra: dict | None = None):
    mod, cls = exp.load()
    overrides = {**mod.PROFILES.get(profile, {}), **(extra or {})}
    known = {f.name for f in dataclasses.fields(cls)}
    bad = set(overrides) - known
    if bad:
        raise ValueError(f"{exp.eid} profile {profile!r} sets unknown fields {sorted(bad)}")
    return mod, cls(**{**overrides, "out": str(out)})


def _previous_run(folder: Path) -> Path | None:
    """The newest run folder under ``folder`` (``<folder>/<experiment>/<stamp>/config.json``)
    of an experiment that never recorded ``done.json``: a killed session, or one killed after
    the experiment finished. A resumable experiment continues it (finished parts are reused);
    ``--force`` starts afresh."""
    started = [p.parent for p in folder.glob("*/*/config.json")]
    return max(started, key=lambda p: p.name) if started else None


def run_one(exp: Experiment, profile: str, out: Path, progress: bool, force: bool,
            extra: dict | None = None) -> dict:
    """Run one experiment (or load its finished result). Returns its record."""
    folder = out / exp.eid
    done = folder / "done.json"
    if done.exists() and not force:
        rec = json.loads(done.read_text())
        if rec.get("profile") == profile:
            rec["skipped"] = True
            return rec
    try:
        mod, cfg = _config(exp, profile, folder, extra)
    except ImportError as exc:
        return {"eid": exp.eid, "status": "unavailable", "reason": str(exc)}
    previous = _previous_run(folder)
    field = getattr(mod, "CONTINUE_FIELD", "")  # the module's own way to continue, if any
    if previous is not None and not force and field:
        print(f"[reproduce] {exp.eid}: continuing {previous}", file=sys.stderr)
        cfg = dataclasses.replace(cfg, **{field: str(previous)})  # finished runs are skipped
    t0 = time.time()
    summary = mod.run(cfg, progress=progress)
    rec = {"eid": exp.eid, "status": "done", "profile": profile, "summary": summary,
           "config": dataclasses.asdict(cfg), "wall_time_s": round(time.time() - t0, 1)}
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(to_jsonable(rec), indent=2)
    atomic_write(done, text)
    return json.loads(text)  # the same types a later, skipping run will read back


def reproduce(profile: str = "quick", only: list[str] | None = None, out: str | Path = "runs",
              progress: bool = True, force: bool = False,
              overrides: dict[str, dict] | None = None, workers: int = 0,
              executor: str = "local", ray_address: str = "") -> Path:
    """Run the selected experiments and write <out>/reproduce-<profile>/report.{html,md}.

    Args:
        overrides: per-experiment config fields on top of the profile, e.g. {"E1": {...}}.
        workers, executor, ray_address: how the grid experiments (E6) run their runs
            (``rl compare --workers/--executor/--ray-address``); an override wins.
    """
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    check_settings(workers, executor, ray_address)  # before any experiment starts
    exps = [by_id(i) for i in only] if only else paper_experiments()
    grid = {"workers": workers, "executor": executor, "ray_address": ray_address}
    root = Path(out) / f"reproduce-{profile}"
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    records = []
    sections = []
    for exp in exps:
        try:
            mod = exp.load()[0]
        except ImportError as exc:  # an optional part is not installed
            sections.append(Section(exp.eid, exp.help, "-", lambda s: []))
            records.append({"eid": exp.eid, "status": "unavailable", "reason": str(exc)})
            continue
        sections.append(section(exp, mod))
        print(f"[reproduce] {exp.eid}: {mod.TITLE}", file=sys.stderr)
        extra = (overrides or {}).get(exp.eid) or {}
        if "workers" in {f.name for f in dataclasses.fields(exp.load()[1])}:
            extra = {**grid, **extra}
        records.append(run_one(exp, profile, root, progress, force, extra))
    meta = {"profile": profile, "command": "grponorm " + " ".join(sys.argv[1:]),
            "environment": environment(), "wall_time_s": round(time.time() - t0, 1),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    return render.write_report(root, sections, records, meta)


#: The committed results a report is rebuilt from (``results/``): report section -> (paper id,
#: folder). E6 is re-analysed from its per-run summaries and metrics (``rl compare
#: --analyze-only``: nothing is trained), its pilot pooled into the pre-registered all-seeds rows
#: and its tuned-LR grid in a section of its own; the others' summaries are read as they were
#: written. Nothing is written under ``results/``.
RESULTS = {"E3": "e3-cpu", "E5": "e5-64", "E5-12": "e5-cpu", "E6": "e6-cpu/confirm",
           "E6-tuned": "e6-tuned"}
#: E6's pilot grid (seeds 0-7), under the results folder.
E6_PILOT = "e6-cpu/pilot"
#: Sections that are not a paper experiment's own: section -> (paper id, title of its part).
PARTS = {"E6-tuned": ("E6", "learning rate tuned per arm (cross-fitted, "
                            "docs/e6-tuned-preregistration.md)"),
         "E5-12": ("E5", "the earlier run with 12 probe prompts (E5 is the 64-prompt design)")}


def _commit(folder: Path) -> str:
    """Which commit holds ``folder``: ``committed in <hash> (<date>)`` from ``git log`` (read
    only), with a note when its files differ from that commit; what is known otherwise."""
    def git(*args):
        return subprocess.run(["git", "-C", str(folder), *args], capture_output=True,
                              text=True, timeout=60)

    try:
        log = git("log", "-1", "--format=%h %cs", "--", ".")
    except FileNotFoundError:
        return "commit not known (git is not installed)"
    if log.returncode != 0 or not log.stdout.strip():
        return "commit not known (not in a git repository's history)"
    commit, date = log.stdout.split()
    changed = git("status", "--porcelain", "--", ".").stdout.strip()
    return f"committed in {commit} ({date})" + (", with local changes" if changed else "")


def _provenance(eid: str, folder: Path, summary: dict) -> dict:
    """Where a rebuilt section's numbers come from: the results' commit and the runs' wall
    time (E6: summed over its runs, from their summaries; the others: the experiment's own)."""
    if eid == "E6":
        wall, what = summary.get("runs_wall_time_s"), f"summed over its {summary.get('runs')} runs"
    else:
        wall, what = summary.get("wall_time_s"), "the experiment's run"
    return {"commit": _commit(folder), "wall_time_s": wall, "wall_time_what": what,
            "folder": str(folder)}


def rebuild(results: str | Path = "results", out: str | Path | None = None,
            progress: bool = True) -> Path:
    """report.html / report.md from the committed results, without training anything and
    without writing anything under ``results`` (E6's analysis goes to ``out``).

    Args:
        results: the folder of :data:`RESULTS` (the repository's ``results/``).
        out: where the report goes (default ``runs/reproduce-results``), with E6's analysis
            folders (``<out>/E6``, ``<out>/E6-tuned``).
    """
    root = Path(results)
    if not root.is_dir():
        raise FileNotFoundError(f"no results folder at {root}")
    out = Path(out) if out else Path("runs") / "reproduce-results"
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    sections, records = [], []
    for key, name in RESULTS.items():
        eid, part = PARTS.get(key, (key, ""))
        exp = by_id(eid)
        mod, cls = exp.load()
        folder = root / name
        sec = section(exp, mod)
        if part:
            sec = Section(key, f"{mod.TITLE}: {part}", sec.paper, sec.rows)
        sections.append(sec)
        if not (folder / "config.json").is_file():
            records.append({"eid": key, "status": "not in the results",
                            "reason": f"{folder / 'config.json'} not found"})
            continue
        if eid == "E6":
            pilot = root / E6_PILOT
            cfg = cls(grid_dir=str(folder), analyze_only=True, out=str(out / key),
                      pilot_dir=str(pilot) if key == "E6" and (pilot / "config.json").is_file()
                      else "")
            summary = mod.run(cfg, progress=progress)
        else:  # E5: the pooled Table 1 recomputed from its train/metrics.jsonl (read only)
            summary = (mod.reanalyze(folder) if eid == "E5"
                       else json.loads((folder / "summary.json").read_text()))
            summary = {**summary, "run_dir": str(folder),  # figures that were committed only
                       "figures": [f for f in summary.get("figures", [])
                                   if (folder / f).is_file()]}
            draw = getattr(mod, "figures_from_summary", None)  # figures drawn from the summary
            if draw is not None:
                summary["figures"] = draw(summary, out / key)
        source = _provenance(eid, folder, summary)
        records.append({"eid": key, "status": "done", "profile": "cpu", "summary": summary,
                        "config": json.loads((folder / "config.json").read_text())["config"],
                        "wall_time_s": source["wall_time_s"], "from_results": source})
    meta = {"profile": "cpu",
            "command": "grponorm " + " ".join(sys.argv[1:]), "environment": environment(),
            "wall_time_s": round(time.time() - t0, 1), "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    return render.write_report(out, sections, records, meta)
