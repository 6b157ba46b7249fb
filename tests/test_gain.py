"""Effective gain of the normalizers on binary groups, verl's variance proxy, and the
``normalizers show`` experiment end to end (tiny G)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from grponorm import normalizers as nz
from grponorm.diagnostics.gain import (
    alignment,
    binary_group,
    centered_norm,
    gain_curve,
    gains,
    ladder,
    score_norm_proxy,
    variance_proxy,
)
from grponorm.experiments import normalizers_show as show

# ----------------------------------------------------------------------------- gain by hand


def _std_bessel(k: int, G: int) -> float:
    """Bessel std of k ones and G - k zeros: sqrt(k (G - k) / (G (G - 1)))."""
    return math.sqrt(k * (G - k) / (G * (G - 1)))


@pytest.mark.parametrize("G", [5, 8])
def test_group_std_gain_is_one_over_bessel_std_plus_eps(G):
    c = gain_curve("group_std", G)
    want = [0.0] + [1.0 / (_std_bessel(k, G) + 1e-6) for k in range(1, G)] + [0.0]
    np.testing.assert_allclose(c.gain, want, rtol=1e-12)
    np.testing.assert_allclose(c.cos[1:G], 1.0, rtol=1e-12)  # a pure rescaling of none
    assert not c.batch_level


def test_group_std_options_reach_the_normalizer():
    G, eps = 6, 0.25
    c = gain_curve("group_std", G, ddof=0, eps=eps)
    pop = [math.sqrt(k * (G - k)) / G for k in range(1, G)]  # population std
    np.testing.assert_allclose(c.gain[1:G], [1.0 / (s + eps) for s in pop], rtol=1e-12)


def test_none_gain_is_one_and_flat_groups_zero():
    c = gain_curve("none", 8)
    np.testing.assert_array_equal(c.gain, [0.0] + [1.0] * 7 + [0.0])
    np.testing.assert_allclose(c.p_hat, np.arange(9) / 8)


def test_rloo_gain_is_g_over_g_minus_one():
    for G in (2, 4, 8):
        c = gain_curve("rloo", G)
        np.testing.assert_allclose(c.gain[1:G], G / (G - 1), rtol=1e-12)
        assert c.gain[0] == c.gain[G] == 0.0


def test_bernoulli_std_gain_is_the_eq6_scale():
    G = 8
    p = np.arange(1, G) / G
    c = gain_curve("bernoulli_std", G)
    np.testing.assert_allclose(c.gain[1:G], 1.0 / np.sqrt(p * (1 - p)), rtol=1e-12)


def test_flat_groups_get_zero_gain_unless_the_normalizer_moves_them():
    measured = 0
    for m in nz.available_normalizers():
        curve, note = show.measure(m, 4, "ladder")
        if curve is None:
            assert note.startswith("needs context: "), (m, note)
            continue
        measured += 1
        ends = curve.gain[[0, -1]]
        if nz.get_spec(m).zeroes_flat({}):
            np.testing.assert_array_equal(ends, 0.0, err_msg=m)  # 0/0 := 0
        else:  # e.g. a batch-mean baseline: the flat group moves, x/0 = inf, ||A|| is reported
            assert all(g == 0.0 or (np.isinf(g) and n > 0) for g, n in
                       zip(ends, curve.norm[[0, -1]])), m
    assert measured >= 5


def test_gains_and_alignment_on_given_rows():
    rewards = np.array([[1.0, 0.0, 0.0, 0.0], [2.0, 2.0, 2.0, 2.0], [1.0, 1.0, 0.0, 0.0]])
    adv = np.array([[3.0, -1.0, -1.0, -1.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    with np.errstate(all="raise"):  # the flat row is 0/0 := 0 without a warning
        g = gains(adv, rewards)
        cos = alignment(adv, rewards)
    np.testing.assert_allclose(g, [math.sqrt(12) / math.sqrt(0.75), 0.0, 0.0])
    np.testing.assert_allclose(cos, [1.0, 0.0, 0.0])
    one_hot = np.array([[1.0, 0.0, 0.0, 0.0]])  # passk-like: only the best sample moves
    np.testing.assert_allclose(alignment(one_hot, rewards[:1]), math.sqrt(0.75), rtol=1e-12)


def test_binary_groups_and_centered_norm():
    np.testing.assert_array_equal(binary_group(2, 4), [1, 1, 0, 0])
    assert ladder(3).shape == (4, 3) and ladder(3).sum(axis=1).tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(centered_norm(np.arange(5), 4), np.sqrt([0, 0.75, 1, 0.75, 0]))
    with pytest.raises(ValueError):
        binary_group(5, 4)


def test_batch_level_is_detected_and_alone_is_the_group_itself():
    ladder_curve = gain_curve("batch_std", 8)
    assert ladder_curve.batch_level
    # the batch's Bessel std over the 9 x 8 ladder: mean 1/2, 36 ones of 72
    std = math.sqrt(72 * 0.25 / 71)
    np.testing.assert_allclose(ladder_curve.gain[1:8], 1.0 / (std + 1e-6), rtol=1e-12)
    alone = gain_curve("batch_std", 8, reference="alone")  # batch of one = group_std
    np.testing.assert_allclose(alone.gain, gain_curve("group_std", 8).gain, rtol=1e-12)
    with pytest.raises(ValueError, match="reference"):
        gain_curve("none", 8, reference="mixed")


# ----------------------------------------------------------------------------- variance proxy


def test_variance_proxy_hand_case():
    adv = np.array([1.0, -2.0, 0.5])
    w = np.array([2.0, 3.0, -1.0])  # a negative W is clamped to 0, as in verl
    assert variance_proxy(adv, w) == pytest.approx((1 * 2 + 4 * 3 + 0) / 3)
    assert variance_proxy(adv, w, valid=np.array([True, False, True])) == pytest.approx(1.0)
    rho = np.array([2.0, 1.0, 1.0])
    assert variance_proxy(adv, w, is_weights=rho) == pytest.approx((4 * 2 + 12) / 3)
    assert variance_proxy(adv, w, valid=np.zeros(3, bool)) == 0.0
    with pytest.raises(ValueError):
        variance_proxy(adv, w[:2])


def test_score_norm_proxy_sums_masked_token_terms():
    logp = np.log(np.array([[0.5, 0.25, 0.9], [1.0, 0.5, 0.5]]))  # (2, 3)
    sum_sq = np.array([[0.5, 0.25, 0.82], [1.0, 0.3, 0.3]])  # (2, 3)
    mask = np.array([[1, 1, 0], [1, 1, 1]])  # (2, 3)
    # 1 - 2 pi + sum pi^2 per token: row 0: 0.5 + 0.75 (third masked); row 1: 0 + 0.3 + 0.3
    np.testing.assert_allclose(score_norm_proxy(logp, sum_sq, mask), [1.25, 0.6], rtol=1e-12)


# ----------------------------------------------------------------------------- context handling


def test_measure_marks_missing_context_instead_of_crashing(monkeypatch):
    def needs_context(method, G, reference):
        raise nz.MissingContextError("normalizer 'none' needs context lengths")

    monkeypatch.setattr(show, "gain_curve", needs_context)
    curve, note = show.measure("none", 4, "ladder")  # the spec names no field: the message
    assert curve is None and note == "needs context: normalizer 'none' needs context lengths"

    def rejects(method, G, reference):
        raise ValueError("needs rewards in [0, 5]")

    monkeypatch.setattr(show, "gain_curve", rejects)
    assert show.measure("none", 4, "ladder") == (None, "not measured: needs rewards in [0, 5]")


# ----------------------------------------------------------------------------- experiment


def test_experiment_writes_table_figure_and_summary(tmp_path):
    cfg = show.ShowConfig(G=3, normalizers=["group_std", "none", "grpo_passk", "batch_std"],
                          out=str(tmp_path))
    s = show.run(cfg, progress=False)
    run_dir = Path(s["run_dir"])
    table = (run_dir / "table.md").read_text()
    assert "| k=0 (p̂=0) |" in table and "| k=3 (p̂=1) |" in table
    assert "| none | group | 0 | 1 | 1 | 0 | 1 |" in table
    assert "| batch_std | batch (ladder) |" in table
    png = (run_dir / show.FIGURE).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((run_dir / "summary.json").read_text())
    np.testing.assert_allclose(summary["gain"]["group_std"][1], 1 / (_std_bessel(1, 3) + 1e-6))
    assert summary["batch_level"] == {"group_std": False, "none": False, "grpo_passk": False,
                                      "batch_std": True}
    assert summary["not_measured"] == []


def test_experiment_rejects_unknown_normalizer_before_writing(tmp_path):
    with pytest.raises(ValueError, match="unknown normalizer"):
        show.run(show.ShowConfig(normalizers=["nope"], out=str(tmp_path)), progress=False)
    assert not any(tmp_path.iterdir())


def test_registered_context_and_state_normalizers_are_marked_or_fresh():
    names = set(nz.available_normalizers())
    if "opo" in names:  # needs completion lengths: marked, not crashed
        assert show.measure("opo", 4, "ladder") == (None, "needs context: lengths")
    if "running_std" in names:  # keeps state: measured from a fresh state
        curve, note = show.measure("running_std", 4, "ladder")
        assert curve is not None and note == "fresh state"
        again, _ = show.measure("running_std", 4, "ladder")
        np.testing.assert_array_equal(again.gain, curve.gain)  # no history leaks between runs
    if not {"opo", "running_std"} & names:
        pytest.skip("no context or state normalizer registered")


def test_cli_runs_the_tool(tmp_path, capsys):
    from grponorm import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["normalizers", "show", "--help"])
    assert exit_info.value.code == 0
    assert "--reference" in capsys.readouterr().out
    rc = cli.main(["normalizers", "show", "--G", "3", "--normalizers", "none,rloo",
                   "--out", str(tmp_path)])
    assert rc == 0
    assert "| rloo | group | 0 | 1.5 | 1.5 | 0 | 1 |" in capsys.readouterr().out
