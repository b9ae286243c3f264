"""Per-cell statistics: non-finite pairs are left out and counted."""

import numpy as np

from nnpatch.report.stats import cell_stats


def test_nonfinite_pairs_are_dropped_and_counted():
    """A NaN or inf value (or control value) removes that pair from every statistic."""
    values = np.array([1.0, np.inf, 3.0, 5.0])
    control = np.array([0.0, 0.0, np.nan, 1.0])
    out = cell_stats(values, control, seed=0, key="k")
    assert out["n"] == 2 and out["nonfinite_pairs"] == 2 and out["mean"] == 3.0
    assert np.isfinite([out["ci95_low"], out["ci95_high"], out["diff_ci95_low"]]).all()


def test_one_finite_pair_has_a_mean_but_no_interval_or_verdict():
    """n = 1: the mean stands, but there is no sem, CI or comparison with the control."""
    out = cell_stats(np.array([0.7, np.nan]), np.array([0.1, 0.2]), seed=0, key="k")
    assert out["n"] == 1 and out["mean"] == 0.7
    assert out["sem"] is None and out["ci95_low"] is None and out["diff_ci95_low"] is None
    assert out["differs_from_control"] is None


def test_a_zero_width_interval_never_differs_from_control():
    """Every pair moves by exactly 0.5 more than its control: the paired CI is [0.5, 0.5],
    which is no evidence of anything but a constant, so no verdict is given."""
    values, control = np.full(6, 1.0), np.full(6, 0.5)
    out = cell_stats(values, control, seed=0, key="k")
    assert out["diff_ci95_low"] == out["diff_ci95_high"] == 0.5
    assert out["differs_from_control"] is None


def test_a_spread_difference_still_gets_its_verdict():
    """With real spread the usual rule holds: the paired CI excluding zero says it differs."""
    rng = np.random.default_rng(0)
    values = 1.0 + 0.1 * rng.standard_normal(20)
    out = cell_stats(values, np.zeros(20), seed=0, key="k")
    assert out["differs_from_control"] is True
    same = cell_stats(values, values + 0.01 * rng.standard_normal(20), seed=0, key="k")
    assert same["differs_from_control"] is False
