"""Attribution estimators against the exact sweep, in one process: agreement and speed-up.

    python benchmarks/attribution.py [--preset toy-codi | --shape gpt2-small|llama-1b]
        [--pairs N] [--sites resid,attn,mlp] [--estimators atp,ig] [--ig-steps 5,32]
        [--device cpu] [--dtype float32]

Every layer × position cell of every site (single cells, denoise), over the same pairs:
(a) exact: the nnsight engine, one patched row per (cell, pair), site by site;
(b) each estimator: every cell of every site from the same forward and backward passes
    (`atp`: one; `ig` with S steps: S).
Each side's baseline passes are counted in its time. Printed per estimator: wall time, the
speed-up a/b, the Spearman correlation between cells' mean estimated and mean exact
recovery (means rounded to 1e-4, ties sharing their average rank: cells that move nothing
read 0 in both up to float noise), and the median relative error |estimate - exact| /
|exact| over cells with |exact| >= 0.1. With `--shape` the weights are random (the numbers
mean nothing there, the speed does); with `--preset` a trained model gives both.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sweep import SHAPES, build  # noqa: E402

from nnpatch.engine.gradients import estimate_sites  # noqa: E402
from nnpatch.engine.plan import PatchSpec  # noqa: E402
from nnpatch.engine.trace import Engine  # noqa: E402
from nnpatch.models.presets import PRESETS  # noqa: E402
from nnpatch.pairs.builtin import BUILTIN, tiny_arithmetic  # noqa: E402

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


def median_relative_error(exact: np.ndarray, estimated: np.ndarray) -> float:
    big = np.abs(exact) >= 0.1
    if not big.any():
        return float("nan")
    return float(np.median(np.abs(estimated[big] - exact[big]) / np.abs(exact[big])))


def cell_means(values: torch.Tensor, cells: int) -> np.ndarray:
    return values[:, 0].reshape(cells, -1).nanmean(dim=1).numpy()


def exact_sweep(model, pairs, sites: list[str], positions: list[str], batch: int):
    """Per site: its cells, its engine and baselines, and the exact mean recovery per cell;
    and the seconds all of it took."""
    clock = time.perf_counter()
    out = {}
    for site in sites:
        layers = [None] if site == "thought" else list(range(model.num_layers))
        specs = [PatchSpec(layer, (p,)) for layer in layers for p in positions]
        engine = Engine(model, site, "denoise", METRICS)
        answers = engine.answers(pairs)
        base = engine.baselines(pairs, answers, [(s.layer, s.positions[0]) for s in specs], batch)
        rows = [(spec, i, i) for spec in specs for i in range(len(pairs))]
        exact = engine.patch(pairs, answers, base, rows, batch)
        out[site] = (specs, engine, answers, base, cell_means(exact, len(specs)))
    return out, time.perf_counter() - clock


def estimated(model, pairs, swept: dict, positions, batch: int, steps: int):
    """Every site's estimates from one set of passes (its own baseline passes included)."""
    clock = time.perf_counter()
    first = next(iter(swept.values()))
    engine, answers = first[1], first[2]
    bases = {}
    for site, (specs, site_engine, _, _, _) in swept.items():
        cells = [(s.layer, s.positions[0]) for s in specs]
        bases[site] = (site_engine.baselines(pairs, answers, cells, batch), specs)
    values = estimate_sites(engine, pairs, answers, bases, batch, steps)
    means = {site: cell_means(values[site], len(bases[site][1])) for site in swept}
    return means, time.perf_counter() - clock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="toy-codi", choices=list(PRESETS))
    parser.add_argument("--shape", choices=list(SHAPES), help="random weights of this shape")
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--sites", default="resid,attn,mlp")
    parser.add_argument("--estimators", default="atp,ig")
    parser.add_argument("--ig-steps", default="5,32", help="ig steps to measure, a,b,…")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    if args.shape:
        model = build(args.shape, 6, args.device, getattr(torch, args.dtype))
        pairs = tiny_arithmetic(count=max(args.pairs, 2))[: args.pairs]
    else:
        model = PRESETS[args.preset]()
        source = "toy-arithmetic" if args.preset == "toy-codi" else "tiny-arithmetic"
        pairs = BUILTIN[source]()[: args.pairs]
    sites = args.sites.split(",")
    positions = [str(t) for t in range(model.num_thoughts)]
    print(
        f"{model.name}: {len(pairs)} pairs, sites {','.join(sites)}, {model.num_layers} layers "
        f"× thoughts 0..{model.num_thoughts - 1}, {torch.get_num_threads()} threads"
    )
    swept, exact_s = exact_sweep(model, pairs, sites, positions, args.batch_size)
    exact = np.concatenate([swept[s][4] for s in sites])
    cells = len(exact)
    print(f"exact sweep: {cells} cells × {len(pairs)} pairs in {exact_s:.2f} s")
    runs = []
    for name in args.estimators.split(","):
        for steps in [1] if name == "atp" else [int(s) for s in args.ig_steps.split(",")]:
            means, seconds = estimated(model, pairs, swept, positions, args.batch_size, steps)
            runs.append(
                (f"{name}" + ("" if name == "atp" else f" ({steps} steps)"), means, seconds)
            )
    header = (
        f"{'estimator':<16} {'seconds':>8} {'speed-up':>9} {'Spearman':>9} {'median rel. err':>16}"
    )
    print(header)
    for label, means, seconds in runs:
        guess = np.concatenate([means[s] for s in sites])
        print(
            f"{label:<16} {seconds:8.2f} {exact_s / seconds:8.1f}x {spearman(exact, guess):+9.3f} "
            f"{median_relative_error(exact, guess):16.3f}"
        )
    if not args.shape:
        print("cell                 exact  " + "  ".join(f"{label:>14}" for label, _, _ in runs))
        for site in sites:
            for i, spec in enumerate(swept[site][0]):
                row = "  ".join(f"{means[site][i]:14.3f}" for _, means, _ in runs)
                cell = f"{site:<5} L{spec.layer} t{spec.positions[0]}"
                print(f"{cell:<18} {swept[site][4][i]:6.3f}  {row}")


if __name__ == "__main__":
    main()
