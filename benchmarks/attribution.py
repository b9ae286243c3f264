"""Attribution patching against the exact sweep, in one process: agreement and speed-up.

    python benchmarks/attribution.py [--preset toy-codi] [--pairs toy-arithmetic] [--count 64]
                                     [--sites resid,attn,mlp] [--positions all|thoughts]

For each site, both cover every layer × position (single cells, denoise) of the same pairs:
(a) exact: the nnsight engine, one patched row per (cell, pair);
(b) attribution: one forward and one backward per chunk of pairs for all cells at once.
Printed per cell: mean exact and mean estimated recovery. Then per site and over all cells:
wall time of each (the site's baseline pass counted in both), the speed-up a/b, and the
Spearman correlation between the cells' mean estimated and mean exact recovery. Ranks are
taken on means rounded to 1e-4, ties sharing their average rank: cells that move nothing
read 0 in both up to float noise, and that noise should not rank them.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from nnpatch.engine.gradients import estimate
from nnpatch.engine.plan import PatchSpec
from nnpatch.engine.trace import Engine
from nnpatch.models.presets import PRESETS
from nnpatch.pairs.builtin import BUILTIN

METRICS = ["recovery"]


def ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 0, ties sharing the mean of the ranks they span."""
    order = np.argsort(values, kind="stable")
    rank = np.empty(len(values))
    rank[order] = np.arange(len(values))
    for value in np.unique(values):
        tied = values == value
        rank[tied] = rank[tied].mean()
    return rank


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = (np.round(x[keep], 4) for x in (a, b))
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def sweep_site(model, pairs, site: str, positions: list[str], batch_size: int) -> dict:
    """Exact and estimated mean recovery per cell of one site, and the seconds of each."""
    specs = [PatchSpec(layer, (p,)) for layer in range(model.num_layers) for p in positions]
    cells = [(s.layer, s.positions[0]) for s in specs]
    engine = Engine(model, site, "denoise", METRICS)
    answers = engine.answers(pairs)
    chunk = max(1, batch_size // 2)

    clock = time.perf_counter()
    base = engine.baselines(pairs, answers, cells, chunk)
    baseline_s = time.perf_counter() - clock

    clock = time.perf_counter()
    rows = [(spec, i, i) for spec in specs for i in range(len(pairs))]
    exact = engine.patch(pairs, answers, base, rows, batch_size)
    exact_s = baseline_s + time.perf_counter() - clock

    clock = time.perf_counter()
    estimated = estimate(engine, pairs, answers, base, specs, chunk)
    estimate_s = baseline_s + time.perf_counter() - clock

    exact_mean, estimated_mean = (
        v[:, 0].reshape(len(specs), len(pairs)).nanmean(dim=1).numpy() for v in (exact, estimated)
    )
    return {
        "cells": [f"{site} L{s.layer} {s.positions[0]}" for s in specs],
        "exact": exact_mean,
        "estimated": estimated_mean,
        "exact_s": exact_s,
        "estimate_s": estimate_s,
    }


def summary(name: str, exact: np.ndarray, estimated: np.ndarray, exact_s, estimate_s) -> str:
    return (
        f"{name:<10} {len(exact):>3} cells  exact {exact_s:6.2f} s  attribution "
        f"{estimate_s:6.2f} s  speed-up {exact_s / estimate_s:5.1f}x  "
        f"Spearman {spearman(exact, estimated):+.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="toy-codi", choices=list(PRESETS))
    parser.add_argument("--pairs", default="toy-arithmetic", choices=list(BUILTIN))
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--sites", default="resid,attn,mlp")
    parser.add_argument("--positions", default="all", choices=["all", "thoughts"])
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    model = PRESETS[args.preset]()
    pairs = BUILTIN[args.pairs]()[: args.count]
    positions = model.position_labels()
    if args.positions == "thoughts":
        positions = [str(t) for t in range(model.num_thoughts)]
    print(
        f"{model.name}: {len(pairs)} pairs × {model.num_layers} layers × positions "
        f"{','.join(positions)}, {torch.get_num_threads()} threads"
    )
    sites = [sweep_site(model, pairs, s, positions, args.batch_size) for s in args.sites.split(",")]
    print("cell                mean recovery: exact  estimated")
    for site in sites:
        for cell, a, b in zip(site["cells"], site["exact"], site["estimated"], strict=True):
            print(f"{cell:<20} {a:22.3f} {b:10.3f}")
    for name, site in zip(args.sites.split(","), sites, strict=True):
        print(summary(name, site["exact"], site["estimated"], site["exact_s"], site["estimate_s"]))
    if len(sites) > 1:
        joined = [np.concatenate([s[k] for s in sites]) for k in ("exact", "estimated")]
        seconds = [sum(s[k] for s in sites) for k in ("exact_s", "estimate_s")]
        print(summary("all sites", *joined, *seconds))


if __name__ == "__main__":
    main()
