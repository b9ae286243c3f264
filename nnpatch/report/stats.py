"""Per-cell statistics over pairs: mean, sem, bootstrap CIs, and the comparison to control.

Every bootstrap draws from its own generator, seeded by the run seed and the cell's key, so
a cell's interval can be recomputed from the stored rows alone (and does not depend on which
other cells the run had).
"""

from __future__ import annotations

import zlib

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95


def generator(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(key.encode())])


MIN_PAIRS = 2  # fewer finite pairs carry no interval and no comparison


def bootstrap_means(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`RESAMPLES` means of resamples of the values (with replacement); needs at least
    `MIN_PAIRS` values (callers give None below that)."""
    if len(values) < MIN_PAIRS:
        raise ValueError(f"a bootstrap CI needs at least {MIN_PAIRS} values")
    draws = rng.integers(0, len(values), size=(RESAMPLES, len(values)))
    return values[draws].mean(axis=1)


def percentile_ci(means: np.ndarray) -> tuple[float, float]:
    tail = 100 * (1 - LEVEL) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_ci(values: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean over pairs."""
    return percentile_ci(bootstrap_means(values, rng))


def bootstrap_p(means: np.ndarray) -> float:
    """Two-sided bootstrap p-value of "the mean is zero", from the same resampled means as
    the CI: twice the smaller share of means on either side of zero, counted with the
    observed sample ((k + 1) / (R + 1), never 0), at most 1."""
    below, above = int((means <= 0).sum()), int((means >= 0).sum())
    return min(1.0, 2 * (min(below, above) + 1) / (len(means) + 1))


def bh_q_values(p: list[float | None]) -> list[float | None]:
    """Benjamini-Hochberg q-values of the p-values given (None: no test, left out of the
    family): q_(i) = min over j >= i of m p_(j) / j, at most 1, in the input order."""
    tested = sorted((value, i) for i, value in enumerate(p) if value is not None)
    q: list[float | None] = [None] * len(p)
    smallest = 1.0
    for rank in range(len(tested), 0, -1):
        value, i = tested[rank - 1]
        smallest = min(smallest, value * len(tested) / rank)
        q[i] = smallest
    return q


EMPTY = dict.fromkeys(
    [
        "mean",
        "sem",
        "ci95_low",
        "ci95_high",
        "control_mean",
        "control_ci95_low",
        "control_ci95_high",
        "diff_ci95_low",
        "diff_ci95_high",
        "differs_from_control",
        "p_value",
    ]
)


Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson_ci(successes: float, n: int) -> tuple[float, float]:
    """Wilson score 95% interval of a proportion: keeps its coverage near 95% where the
    percentile bootstrap of a 0/1 mean collapses (every pair right gives [1, 1])."""
    if n == 0:
        return float("nan"), float("nan")
    p, z2 = successes / n, Z95 * Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact ends, not 1 - 1e-16
    high = 1.0 if successes == n else min(1.0, centre + half)
    return float(low), float(high)


def excludes_zero(low: float | None, high: float | None) -> bool | None:
    """Whether a CI excludes zero; None when there is no interval or it has no width (every
    resample gave one value: the data cannot tell a difference from a constant)."""
    if low is None or high is None or not low < high:
        return None
    return bool(low > 0 or high < 0)


def cell_stats(
    values: np.ndarray, control: np.ndarray | None, seed: int, key: str, binary: bool = False
) -> dict:
    """mean, sem, CI; with control rows (same pairs, same order): their CI, the paired
    difference's CI, and whether that excludes zero (the cell differs from the noise floor).
    `binary`: the values are 0/1 (answer accuracy): the mean's and the control's CIs are
    Wilson intervals; the paired difference stays a bootstrap.

    Pairs whose value (or control value) is not finite, e.g. recovery where the clean and
    corrupted logit differences coincide, are left out and counted in `nonfinite_pairs`.
    Below `MIN_PAIRS` finite pairs there is a mean but no sem, CI or comparison, and a
    zero-width difference CI never says `differs_from_control` and has no `p_value`."""
    finite = np.isfinite(values) if control is None else np.isfinite(values) & np.isfinite(control)
    dropped = int(len(values) - finite.sum())
    values = values[finite]
    control = None if control is None else control[finite]
    n = len(values)
    if n == 0:
        return {**EMPTY, "n": 0, "nonfinite_pairs": dropped}
    if n < MIN_PAIRS:
        return {**EMPTY, "n": n, "mean": float(values.mean()), "nonfinite_pairs": dropped}
    interval = (
        (lambda v, _key: wilson_ci(float(v.sum()), len(v)))
        if binary
        else (lambda v, k: bootstrap_ci(v, generator(seed, k)))
    )
    low, high = interval(values, key)
    out = {
        "n": n,
        "mean": float(values.mean()),
        "sem": float(values.std(ddof=1) / np.sqrt(n)),
        "ci95_low": low,
        "ci95_high": high,
        "control_mean": None,
        "control_ci95_low": None,
        "control_ci95_high": None,
        "diff_ci95_low": None,
        "diff_ci95_high": None,
        "differs_from_control": None,
        "p_value": None,
        "nonfinite_pairs": dropped,
    }
    if control is not None:
        c_low, c_high = interval(control, key + "|control")
        means = bootstrap_means(values - control, generator(seed, key + "|diff"))
        d_low, d_high = percentile_ci(means)
        differs = excludes_zero(d_low, d_high)
        out.update(
            control_mean=float(control.mean()),
            control_ci95_low=c_low,
            control_ci95_high=c_high,
            diff_ci95_low=d_low,
            diff_ci95_high=d_high,
            differs_from_control=differs,
            # no interval, no test: a zero-width difference is not evidence of one
            p_value=None if differs is None else bootstrap_p(means),
        )
    return out
