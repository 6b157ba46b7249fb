"""The `grponorm bandit ...` commands end to end on tiny configs: files, figures, numbers."""

import json
from pathlib import Path

import matplotlib.image as mpimg
import pytest

from grponorm.cli import main


def _only_run(root: Path, experiment: str) -> Path:
    runs = list((root / experiment).iterdir())
    assert len(runs) == 1
    return runs[0]


def _check_png(path: Path):
    img = mpimg.imread(path)
    assert img.shape[0] > 200 and img.shape[1] > 300
    assert img[..., :3].std() > 0.05  # not a blank canvas


def test_bounds_command(tmp_path, capsys):
    rc = main(["bandit", "bounds", "--n-instances", "150", "--n-lemma4", "15",
               "--ball-points", "4", "--traj-steps", "500", "--traj-seeds", "2",
               "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    run = _only_run(tmp_path, "bandit_bounds")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["violated"] == []
    assert summary["checks"]["lemma2"]["sharp_constant"] <= 4.0
    assert set(summary["checks"]) >= {"lemma2", "corollary1", "lemma3", "lemma4", "theorem3",
                                      "theorem4"}
    _check_png(run / "bounds.png")
    assert json.loads((run / "config.json").read_text())["config"]["n_instances"] == 150
    assert "| lemma2 |" in capsys.readouterr().out


def test_exact_command(tmp_path):
    rc = main(["bandit", "exact", "--n", "10", "--K", "4", "--T", "20000", "--seeds", "3",
               "--inits", "none,0.001", "--overlaps", "0,0.3", "--overlap-n", "5",
               "--overlap-K", "3", "--overlap-T", "300", "--record-every", "100",
               "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    run = _only_run(tmp_path, "bandit_exact")
    s = json.loads((run / "summary.json").read_text())
    assert s["etas"] == {"reinforce": pytest.approx(1.0), "grpo": pytest.approx(0.5)}
    low = s["speedup"]["pi0=0.001"]["0.9"]
    assert low["grpo"]["reached"] == 3
    assert low["speedup"] is None or low["speedup"] > 1
    assert len(s["overlap"]) == 2
    _check_png(run / "exact_convergence.png")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 * 2 * 3  # inits x methods x seeds


def test_sampled_command(tmp_path):
    rc = main(["bandit", "sampled", "--n", "8", "--K", "4", "--T", "15", "--seeds", "2",
               "--normalizers", "group_std,none", "--lrs", "0.3,1,3", "--shared-lr", "1",
               "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    run = _only_run(tmp_path, "bandit_sampled")
    s = json.loads((run / "summary.json").read_text())
    assert set(s["tuned_lr"]["sgd"]) == {"easy", "hard"}
    assert set(s["tuned"]["sgd"]) == {"easy/group_std", "easy/none", "hard/group_std",
                                      "hard/none"}
    for per_seed in s["tuned_lr"]["sgd"]["hard"].values():  # cross-fitted: one LR per seed
        assert len(per_seed) == 2 and set(per_seed) <= {0.3, 1.0, 3.0}
    assert s["comparisons"]["sgd"]["tuned"]["hard"]["n"] == 2
    _check_png(run / "sampled_normalizers.png")
    _check_png(run / "std_gap.png")
    table = (run / "table.md").read_text()
    assert "Shared learning rate" in table and "best learning rate" in table
    assert "n=2 paired" in table


def test_bad_flag_values_are_reported(tmp_path, capsys):
    rc = main(["bandit", "sampled", "--shared-lr", "7", "--out", str(tmp_path),
               "--no-progress"])
    assert rc == 2
    assert "shared_lr=7" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bandit", "exact", "--T", "many"])
