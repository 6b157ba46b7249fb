"""E3's figures: the ranked interval plot (one row per normalizer) and curve panels of at most
MAX_LINES lines, drawn from the summary alone."""

import matplotlib.image as mpimg
import pytest

from grponorm.experiments import bandit_sampled
from grponorm.experiments.bandit_sampled_ranked import MAX_LINES, ranked_figure, ranked_rows
from grponorm.normalizers import available_normalizers


def test_ranked_rows_are_one_per_normalizer_best_first():
    table = {"hard/a": {"final mean π*": 0.5, "95% CI ±": 0.1},
             "hard/b": {"final mean π*": 0.9, "95% CI ±": 0.0},
             "hard/c": {"final mean π*": 0.5, "95% CI ±": 0.2},
             "easy/a": {"final mean π*": 1.0, "95% CI ±": 0.0}}
    assert ranked_rows(table, "hard") == [("b", 0.9, 0.0), ("a", 0.5, 0.1), ("c", 0.5, 0.2)]


def test_curve_panels_keep_at_most_max_lines():
    every = available_normalizers()
    assert len(every) > MAX_LINES
    kept = bandit_sampled.curve_normalizers(every)
    assert 2 <= len(kept) <= MAX_LINES and {"group_std", "none"} <= set(kept)
    assert bandit_sampled.curve_normalizers(["rloo", "gpg"]) == ["rloo"]
    odd = [f"n{i}" for i in range(12)]
    assert bandit_sampled.curve_normalizers(odd) == odd[:MAX_LINES]


@pytest.fixture(scope="module")
def summary(tmp_path_factory):
    norms = ["group_std", "none", "rloo", "max_rl", "gpg", "bnpo", "mapo", "loo_std",
             "batch_std", "bernoulli_std"]
    cfg = bandit_sampled.SampledConfig(n=6, K=4, T=5, seeds=2, normalizers=norms,
                                       lrs=[1.0], optimizers=["sgd"],
                                       out=str(tmp_path_factory.mktemp("e3")))
    return bandit_sampled.run(cfg, progress=False)


def test_the_run_draws_the_ranked_plot_first(summary, tmp_path):
    assert summary["figures"][0] == bandit_sampled.RANKED
    figs = bandit_sampled.figures_from_summary(summary, tmp_path)
    assert figs[0].endswith(bandit_sampled.RANKED) and all(f.startswith("/") for f in figs)
    img = mpimg.imread(figs[0])
    assert img.shape[0] > 300 and img[..., :3].std() > 0.05


def test_each_panel_has_one_row_per_normalizer(summary, tmp_path, monkeypatch):
    import matplotlib.axes

    seen = []
    real = matplotlib.axes.Axes.set_yticks
    monkeypatch.setattr(matplotlib.axes.Axes, "set_yticks",
                        lambda self, ticks, labels=None, **kw: (seen.append(list(labels)),
                                                               real(self, ticks, labels, **kw)))
    ranked_figure(summary, tmp_path / "r.png")
    assert len(seen) == 2 * 2  # (shared, tuned) x (easy, hard) for one optimizer
    for labels in seen:
        assert sorted(labels) == sorted({k.split("/")[1] for k in summary["shared"]["sgd"]})
