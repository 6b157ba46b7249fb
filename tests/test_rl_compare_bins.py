"""E6 by base pass rate (experiments.rl_compare_bins): pairing, bins, tuned picks, figure."""

import matplotlib.image as mpimg
import numpy as np
import pytest

from grponorm.experiments.rl_compare_bins import bin_rows, bins_figure, tuned_picks
from grponorm.stats.clustered import cluster_bootstrap_mean

ARMS = ("group_std", "none")
QUESTIONS = {"p0": "q0", "p1": "q1", "p2": "q2"}
RATES = {"q0": 0.1, "q1": 0.6, "q2": 0.9}  # bins [0, .25), [.5, .75), [.75, 1]


def _recs(steps: dict[int, list[tuple[str, float]]]) -> list[dict]:
    return [{"kind": "train", "step": t, "problems": [p for p, _ in ps],
             "group_acc": [a for _, a in ps]} for t, ps in sorted(steps.items())]


def _curves():
    """Two seeds; at seed 1 No-Std's LR 0.01 run exists too (the tuned pick)."""
    c = {}
    for seed, shift in ((0, 0.0), (1, 0.1)):
        c[("hard/group_std/adamw/lr0.001", seed)] = _recs(
            {1: [("p0", 0.9)], 2: [("p0", 0.5 + shift), ("p1", 0.75)], 3: [("p2", 1.0)]})
        c[("hard/none/adamw/lr0.001", seed)] = _recs(
            {1: [("p0", 0.0)], 2: [("p0", 0.25), ("p1", 0.5)], 3: [("p2", 1.0)]})
    c[("hard/none/adamw/lr0.01", 1)] = _recs({2: [("p0", 0.0), ("p1", 0.0)], 3: [("p2", 0.5)]})
    return c


def test_pairs_by_step_and_problem_over_the_window_and_pools_by_seed():
    picks = {0: (1e-3, 1e-3), 1: (1e-3, 1e-3)}
    rows = bin_rows(_curves(), RATES, QUESTIONS, "hard", ARMS, "adamw", picks,
                    [0.25, 0.5, 0.75], window=2, reading="shared LR", reps=500)
    by_bin = {tuple(r["bin"]): r for r in rows}
    assert set(by_bin) == {(0.0, 0.25), (0.5, 0.75), (0.75, 1.0)}  # no problem in [.25, .5)
    low = by_bin[(0.0, 0.25)]  # step 1 is outside the 2-step window: only step 2's p0
    assert low["prompts"] == 2 and low["n"] == 2
    assert low["diff"] == pytest.approx(np.mean([0.25, 0.35]))
    assert low["change_a"] == pytest.approx(np.mean([0.5, 0.6]) - 0.1)
    assert low["change_b"] == pytest.approx(0.25 - 0.1)
    ref = cluster_bootstrap_mean([[0.25], [0.35]], reps=500, seed=0)
    assert (low["low"], low["high"]) == pytest.approx((ref.low, ref.high))
    assert by_bin[(0.75, 1.0)]["diff"] == 0.0
    assert by_bin[(0.75, 1.0)]["cell"] == "no clear difference"
    assert by_bin[(0.5, 0.75)]["diff"] == pytest.approx(0.25)
    assert by_bin[(0.5, 0.75)]["cell"] == "positive"  # +0.25 both seeds


def test_interim_rows_keep_their_numbers_and_draw_no_direction():
    picks = {0: (1e-3, 1e-3), 1: (1e-3, 1e-3)}
    args = (_curves(), RATES, QUESTIONS, "hard", ARMS, "adamw", picks, [0.25, 0.5, 0.75])
    plain = bin_rows(*args, window=2, reading="tuned LR", reps=100)
    interim = bin_rows(*args, window=2, reading="tuned LR", reps=100,
                       interim="interim, n = 2, not the pre-registered reading")
    assert [r["diff"] for r in interim] == [r["diff"] for r in plain]
    assert all(r["cell"] == "inconclusive (interim, n = 2, not the pre-registered reading: "
               "no verdict drawn)" for r in interim)


def test_tuned_picks_follow_the_fold_of_each_seed():
    row = {"seeds": [8, 9, 10], "chosen": {"group_std": {"even": 1e-3, "odd": 5e-3},
                                           "none": {"even": 1e-2, "odd": 1e-3}}}
    assert tuned_picks(row, ARMS) == {8: (1e-3, 1e-2), 9: (5e-3, 1e-3), 10: (1e-3, 1e-2)}


def test_each_seed_is_compared_at_its_own_picks():
    rows = bin_rows(_curves(), RATES, QUESTIONS, "hard", ARMS, "adamw", {1: (1e-3, 1e-2)},
                    [0.25, 0.5, 0.75], window=2, reading="tuned LR", reps=100)
    by_bin = {tuple(r["bin"]): r for r in rows}
    assert by_bin[(0.0, 0.25)]["diff"] == pytest.approx(0.6)  # 0.6 at 1e-3 vs 0.0 at 1e-2
    assert by_bin[(0.0, 0.25)]["low"] is None  # one seed: no interval
    assert by_bin[(0.75, 1.0)]["diff"] == pytest.approx(0.5)


def test_figure_has_a_panel_per_slice(tmp_path):
    picks = {0: (1e-3, 1e-3), 1: (1e-3, 1e-3)}
    rows = bin_rows(_curves(), RATES, QUESTIONS, "hard", ARMS, "adamw", picks,
                    [0.25, 0.5, 0.75], window=2, reading="shared LR", reps=100)
    bins_figure(rows, ["easy", "hard"], tmp_path / "b.png")
    img = mpimg.imread(tmp_path / "b.png")
    assert img.shape[1] > img.shape[0] > 100 and img[..., :3].std() > 0.05
