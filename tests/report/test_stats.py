"""Per-cell statistics: non-finite pairs are left out and counted; accuracy intervals keep
their coverage."""

import numpy as np
import pytest

from nnpatch.report.stats import cell_stats, wilson_ci


def test_the_wilson_interval_matches_the_textbook_and_is_exact_at_the_ends():
    """Newcombe (1998), table I: 81/263 gives 0.2553-0.3662; 0/n starts at 0, n/n ends at 1."""
    low, high = wilson_ci(81, 263)
    assert round(low, 4) == 0.2553 and round(high, 4) == 0.3662
    assert wilson_ci(10, 10)[1] == 1.0 and wilson_ci(0, 10)[0] == 0.0


@pytest.mark.parametrize(("n", "p"), [(30, 0.5), (57, 0.2), (100, 0.55), (200, 0.9)])
def test_accuracy_intervals_cover_the_true_rate_95_percent_of_the_time(n, p):
    """A known accuracy p, 4,000 simulated runs of n pairs: the 95% interval a cell reports
    (cell_stats on 0/1 values) covers p in 93-97% of them."""
    rng = np.random.default_rng(11)
    covered = 0
    draws = 4000
    for _ in range(draws):
        values = (rng.random(n) < p).astype(float)
        out = cell_stats(values, None, seed=0, key="k", binary=True)
        covered += out["ci95_low"] <= p <= out["ci95_high"]
    assert 0.93 <= covered / draws <= 0.97


def test_a_bootstrap_of_a_perfect_accuracy_would_claim_certainty():
    """Why accuracy uses Wilson: every pair right gives a percentile bootstrap of [1, 1],
    while Wilson still admits the rate could be lower."""
    values = np.ones(20)
    assert cell_stats(values, None, 0, "k")["ci95_low"] == 1.0
    assert cell_stats(values, None, 0, "k", binary=True)["ci95_low"] < 0.85


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


def step_up_rejections(p: list[float], alpha: float) -> set[int]:
    """The Benjamini-Hochberg procedure as first stated: reject the k* smallest p-values,
    k* the largest k with p_(k) <= k alpha / m."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    k_star = max(
        (k for k in range(1, len(p) + 1) if p[order[k - 1]] <= k * alpha / len(p)), default=0
    )
    return set(order[:k_star])


def test_bh_q_values_are_the_step_up_procedure_at_every_level():
    """q <= alpha picks exactly the hypotheses BH's step-up rejects at alpha, for every alpha;
    untested cells (None) stay out of the family; q is monotone in p and at most 1."""
    from nnpatch.report.stats import bh_q_values

    rng = np.random.default_rng(3)
    p = list(np.concatenate([rng.uniform(0, 0.02, 15), rng.uniform(0, 1, 40), [0.01, 0.01]]))
    with_gaps = p[:10] + [None] + p[10:] + [None]
    q = bh_q_values(with_gaps)
    assert q[10] is None and q[-1] is None
    tested = [value for value in q if value is not None]
    assert all(0 <= value <= 1 for value in tested)
    for alpha in [0.001, 0.01, 0.03, 0.05, 0.1, 0.25, 0.5]:
        assert {i for i, value in enumerate(tested) if value <= alpha} == step_up_rejections(
            p, alpha
        )
    ranked = sorted(zip(p, tested, strict=True))
    assert all(a[1] <= b[1] for a, b in zip(ranked, ranked[1:], strict=False))


def test_the_p_value_comes_from_the_same_resamples_as_the_ci():
    """p = 2 min(share of resampled mean differences <= 0, share >= 0), counted with the
    observed sample; the difference CI is the one those resamples give."""
    from nnpatch.report.stats import RESAMPLES, generator

    rng = np.random.default_rng(1)
    values, control = 0.2 + rng.standard_normal(12), rng.standard_normal(12)
    out = cell_stats(values, control, seed=5, key="L1|0|recovery")
    draws = generator(5, "L1|0|recovery|diff").integers(0, 12, size=(RESAMPLES, 12))
    means = (values - control)[draws].mean(axis=1)
    below, above = (means <= 0).sum(), (means >= 0).sum()
    assert out["p_value"] == min(1.0, 2 * (min(below, above) + 1) / (RESAMPLES + 1))
    ci = (out["diff_ci95_low"], out["diff_ci95_high"])
    np.testing.assert_allclose(ci, np.percentile(means, [2.5, 97.5]), rtol=1e-12)
    assert 0 < out["p_value"] < 1


def test_no_interval_means_no_p_value():
    assert cell_stats(np.full(6, 1.0), np.full(6, 0.5), seed=0, key="k")["p_value"] is None
    assert cell_stats(np.array([1.0]), np.array([0.0]), seed=0, key="k")["p_value"] is None
    assert cell_stats(np.array([1.0, 2.0]), None, seed=0, key="k")["p_value"] is None


def test_summary_q_values_are_bh_over_each_metrics_cells():
    """summarize: per metric, q over that metric's cells with a p-value; the FDR flag is
    q <= fdr; a cell without a test has neither."""
    import polars as pl

    from nnpatch.report.stats import bh_q_values
    from nnpatch.report.summary import summarize

    rng = np.random.default_rng(0)
    rows = []
    for layer in range(4):
        for position in ("0", "1", "2"):
            for i in range(8):
                for control in (False, True):
                    shift = 0 if control else 0.3 * layer
                    rows.append(
                        {
                            "pair_id": f"p{i}",
                            "mode": "single",
                            "site": "resid",
                            "direction": "denoise",
                            "layer": layer,
                            "position": position,
                            "positions": [position],
                            "control": control,
                            "a": shift + rng.standard_normal(),
                            # constant: a zero-width difference, no test
                            "b": 1.0 if position == "2" else shift + rng.standard_normal(),
                        }
                    )
    summary = summarize(pl.DataFrame(rows), ["a", "b"], seed=0, fdr=0.1)
    for metric in ("a", "b"):
        part = summary.filter(pl.col("metric") == metric)
        assert part["q_value"].to_list() == bh_q_values(part["p_value"].to_list())
        flags = [None if q is None else q <= 0.1 for q in part["q_value"]]
        assert part["differs_from_control_fdr"].to_list() == flags
    untested = summary.filter((pl.col("metric") == "b") & (pl.col("position") == "2"))
    assert untested["q_value"].null_count() == untested.height == 4
    assert summary.filter(pl.col("metric") == "a")["differs_from_control_fdr"].any()
