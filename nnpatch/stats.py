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


def bootstrap_ci(values: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean over pairs (`RESAMPLES` resamples)."""
    if len(values) == 1:
        return float(values[0]), float(values[0])
    draws = rng.integers(0, len(values), size=(RESAMPLES, len(values)))
    means = values[draws].mean(axis=1)
    tail = 100 * (1 - LEVEL) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def cell_stats(values: np.ndarray, control: np.ndarray | None, seed: int, key: str) -> dict:
    """mean, sem, CI; with control rows (same pairs, same order): their CI, the paired
    difference's CI, and whether that excludes zero (the cell beats the noise floor)."""
    n = len(values)
    low, high = bootstrap_ci(values, generator(seed, key))
    out = {
        "n": n,
        "mean": float(values.mean()),
        "sem": float(values.std(ddof=1) / np.sqrt(n)) if n > 1 else None,
        "ci95_low": low,
        "ci95_high": high,
        "control_mean": None,
        "control_ci95_low": None,
        "control_ci95_high": None,
        "diff_ci95_low": None,
        "diff_ci95_high": None,
        "beats_control": None,
    }
    if control is not None:
        c_low, c_high = bootstrap_ci(control, generator(seed, key + "|control"))
        d_low, d_high = bootstrap_ci(values - control, generator(seed, key + "|diff"))
        out.update(
            control_mean=float(control.mean()),
            control_ci95_low=c_low,
            control_ci95_high=c_high,
            diff_ci95_low=d_low,
            diff_ci95_high=d_high,
            beats_control=bool(d_low > 0 or d_high < 0),
        )
    return out
