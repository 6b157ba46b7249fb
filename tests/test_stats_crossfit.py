"""grponorm.stats.crossfit: two-fold cross-fitted selection (E3's and E6's tuned LR)."""

import numpy as np
import pytest

from grponorm.experiments import bandit_sampled
from grponorm.stats.crossfit import crossfit, fold_choices


def test_each_fold_is_chosen_on_the_other():
    finals = {0.1: np.array([0.9, 0.1, 0.9, 0.1]), 1.0: np.array([0.2, 0.8, 0.2, 0.8])}
    lrs, vals = crossfit(finals)
    # even seeds (0, 2) see the odd fold, where 1.0 is best; odd seeds see the even fold
    np.testing.assert_array_equal(lrs, [1.0, 0.1, 1.0, 0.1])
    np.testing.assert_array_equal(vals, [0.2, 0.1, 0.2, 0.1])
    assert fold_choices(lrs) == {"even": 1.0, "odd": 0.1}


def test_a_seed_never_chooses_its_own_value():
    rng = np.random.default_rng(3)
    finals = {lr: rng.uniform(size=7) for lr in (1e-4, 1e-3, 1e-2)}
    lrs, vals = crossfit(finals)
    for i in range(7):  # seed i's own scores, however extreme, do not move its fold's pick
        bumped = {lr: v.copy() for lr, v in finals.items()}
        for lr in bumped:
            bumped[lr][i] = 100.0 if lr != lrs[i] else -100.0
        lrs2, vals2 = crossfit(bumped)
        fold = np.arange(7) % 2 == i % 2
        np.testing.assert_array_equal(lrs2[fold], lrs[fold])
        assert vals2[i] == bumped[lrs[i]][i]  # its value is its own score at that pick
    # the value of every seed is its own score at the chosen value
    np.testing.assert_array_equal(vals, [finals[lr][i] for i, lr in enumerate(lrs)])


def test_ties_go_to_the_first_value_and_one_seed_is_in_sample():
    lrs, _ = crossfit({1e-4: np.array([0.5, 0.5]), 1e-3: np.array([0.5, 0.5])})
    assert lrs.tolist() == [1e-4, 1e-4]  # ascending order given: the smaller LR
    lrs1, vals1 = crossfit({0.1: np.array([0.3]), 1.0: np.array([0.5])})
    assert lrs1.tolist() == [1.0] and vals1.tolist() == [0.5]  # one seed: in-sample
    assert fold_choices(lrs1) == {"even": 1.0, "odd": None}


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="no values"):
        crossfit({})
    with pytest.raises(ValueError, match="same"):
        crossfit({0.1: np.array([0.1, 0.2]), 1.0: np.array([0.3])})
    with pytest.raises(ValueError, match="finite"):
        crossfit({0.1: np.array([0.1, np.nan])})


def test_e3_uses_the_shared_function():
    assert bandit_sampled.crossfit is crossfit
