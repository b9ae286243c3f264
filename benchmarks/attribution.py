"""Attribution patching against the exact sweep, in one process: agreement and speed-up.

    python benchmarks/attribution.py [--preset tiny-random-codi] [--pairs 24] [--batch-size 64]

Both cover every layer × every thought (single cells, resid, denoise) of the same pairs:
(a) exact: the nnsight engine, one patched row per (cell, pair);
(b) attribution: one forward and one backward per chunk of pairs for all cells at once.
Printed: wall time of each (the shared baseline pass counted in both), the speed-up a/b, and
the Spearman correlation between the cells' mean estimated and mean exact recovery.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from nnpatch.attribution import estimate
from nnpatch.engine import Engine
from nnpatch.models.presets import PRESETS
from nnpatch.pairs.builtin import BUILTIN
from nnpatch.plan import PatchSpec

METRICS = ["recovery"]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    keep = np.isfinite(a) & np.isfinite(b)
    ranks = [np.argsort(np.argsort(x[keep])).astype(float) for x in (a, b)]
    return float(np.corrcoef(*ranks)[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny-random-codi", choices=list(PRESETS))
    parser.add_argument("--pairs", default="tiny-arithmetic", choices=list(BUILTIN))
    parser.add_argument("--count", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    model = PRESETS[args.preset]()
    pairs = BUILTIN[args.pairs]()[: args.count]
    specs = [
        PatchSpec(layer, (str(t),))
        for layer in range(model.num_layers)
        for t in range(model.num_thoughts)
    ]
    cells = [(s.layer, s.positions[0]) for s in specs]
    engine = Engine(model, "resid", "denoise", METRICS)
    answers = engine.answers(pairs)
    chunk = max(1, args.batch_size // 2)
    print(
        f"{model.name}: {len(pairs)} pairs × {len(specs)} cells = {len(pairs) * len(specs)} "
        f"patches, {torch.get_num_threads()} threads"
    )

    clock = time.perf_counter()
    base = engine.baselines(pairs, answers, cells, chunk)
    baseline_s = time.perf_counter() - clock

    clock = time.perf_counter()
    rows = [(spec, i, i) for spec in specs for i in range(len(pairs))]
    exact = engine.patch(pairs, answers, base, rows, args.batch_size)
    exact_s = baseline_s + time.perf_counter() - clock

    clock = time.perf_counter()
    estimated = estimate(engine, pairs, answers, base, specs, chunk)
    estimate_s = baseline_s + time.perf_counter() - clock

    per_cell = [
        v[:, 0].reshape(len(specs), len(pairs)).nanmean(dim=1).numpy() for v in (exact, estimated)
    ]
    print(f"baselines:    {baseline_s:7.2f} s (shared, counted in both)")
    print(f"exact sweep:  {exact_s:7.2f} s")
    print(f"attribution:  {estimate_s:7.2f} s")
    print(f"speed-up:     {exact_s / estimate_s:7.1f}x")
    print(f"Spearman (mean recovery per cell, {len(specs)} cells): {spearman(*per_cell):+.3f}")


if __name__ == "__main__":
    main()
