"""Per-cell statistics: non-finite pairs are left out and counted."""

import numpy as np

from nnpatch.stats import cell_stats


def test_nonfinite_pairs_are_dropped_and_counted():
    """A NaN or inf value (or control value) removes that pair from every statistic."""
    values = np.array([1.0, np.inf, 3.0, 5.0])
    control = np.array([0.0, 0.0, np.nan, 1.0])
    out = cell_stats(values, control, seed=0, key="k")
    assert out["n"] == 2 and out["nonfinite_pairs"] == 2 and out["mean"] == 3.0
    assert np.isfinite([out["ci95_low"], out["ci95_high"], out["diff_ci95_low"]]).all()
