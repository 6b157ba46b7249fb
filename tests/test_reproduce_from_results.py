"""`grponorm reproduce --from-results`: the report of the committed results goes under --out,
nothing under the results folder changes (contents or modes), and E6 is read as pre-registered
(docs/e6-preregistration.md), its numbers recomputed here from the runs' own records."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from grponorm import cli  # noqa: E402
from grponorm.experiments.rows import interval_text  # noqa: E402
from grponorm.stats import compare  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _snapshot(folder: Path) -> dict:
    """Every path under ``folder``: its mode and, for a file, the hash of its bytes."""
    return {str(p.relative_to(folder)): (p.stat().st_mode, hashlib.sha256(p.read_bytes())
                                          .hexdigest() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


def _primary(run_dir: Path, window: int = 10) -> float:
    """The pre-registered primary metric of one run, from its metrics.jsonl."""
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return float(np.mean([r["acc"] for r in recs if r.get("kind") == "train"][-window:]))


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory):
    """The committed results/ in a git repository of its own, the report rebuilt from them."""
    tmp = tmp_path_factory.mktemp("from_results")
    repo = tmp / "repo"
    shutil.copytree(ROOT / "results", repo / "results")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "results"], check=True)
    commit = subprocess.run([*git, "log", "-1", "--format=%h"], check=True, capture_output=True,
                            text=True).stdout.strip()
    before = _snapshot(repo)
    cwd, out = tmp / "cwd", tmp / "out"
    cwd.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        rc = cli.main(["reproduce", "--from-results", str(repo / "results"), "--out", str(out),
                       "--no-progress"])
    return {"repo": repo, "before": before, "cwd": cwd, "out": out, "rc": rc,
            "commit": commit}


def test_nothing_under_the_results_changes_and_the_report_is_under_out(rebuilt):
    assert rebuilt["rc"] == 0
    assert _snapshot(rebuilt["repo"]) == rebuilt["before"]  # contents and modes, .git too
    report = rebuilt["out"] / "reproduce-results"
    assert (report / "report.html").is_file() and (report / "report.md").is_file()
    (analysis,) = (report / "E6" / "rl_compare").iterdir()  # E6's analysis: under --out
    assert (analysis / "summary.json").is_file() and (analysis / "accuracy.png").is_file()
    assert list(rebuilt["cwd"].iterdir()) == []  # nothing in the working folder


def test_sections_say_they_come_from_the_results_with_commit_and_wall_time(rebuilt):
    md = (rebuilt["out"] / "reproduce-results" / "report.md").read_text()
    assert "(ran now)" not in md and "None s" not in md
    results = rebuilt["repo"] / "results"
    for name in ("e3-cpu", "e5-cpu"):
        wall = json.loads((results / name / "summary.json").read_text())["wall_time_s"]
        assert (f"from results, committed in {rebuilt['commit']}" in md
                and f"wall time {wall} s (the experiment's run)" in md), name
    runs = sorted((results / "e6-cpu" / "confirm" / "runs").glob("*/summary.json"))
    wall = round(sum(json.loads(p.read_text())["wall_time_s"] for p in runs), 1)
    assert f"wall time {wall} s (summed over its {len(runs)} runs)" in md


def test_e6_leads_with_the_confirmatory_reading_then_all_seeds_then_the_corrected_extension(
        rebuilt):
    md = (rebuilt["out"] / "reproduce-results" / "report.md").read_text()
    e6 = md[md.index("## E6: "):]
    results = rebuilt["repo"] / "results" / "e6-cpu"

    def diff(seeds, confidence=0.95):
        a, b = ([_primary(results / ("pilot" if s < 8 else "confirm") / "runs" /
                          f"hard-{arm}-s{s}") for s in seeds] for arm in ("group_std", "none"))
        return interval_text(compare(a, b, confidence=confidence))

    rows = [line for line in e6.splitlines() if line.startswith("| Hard: PRIMARY")]
    assert "confirmatory seeds 8–31" in rows[0] and diff(range(8, 32)) in rows[0]
    assert "all seeds 0–31" in rows[1] and diff(range(0, 32)) in rows[1]
    assert "extended to seeds 8–47" in rows[2] and "97.5% CI" in rows[2]
    assert diff(range(8, 48), 0.975) in rows[2] and "97.5% interval excludes" in rows[2]
    assert "Hard: training accuracy level (base-rate caveat)" in e6
    summary = json.loads(next((rebuilt["out"] / "reproduce-results" / "E6" / "rl_compare")
                              .glob("*/summary.json")).read_text())
    assert summary["preregistration"]["applies"] and summary["pilot"]["seeds"] == list(range(8))
    assert summary["grid_dir"] == str(results / "confirm")
