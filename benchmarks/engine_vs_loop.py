"""The same sweep three ways in one process, and the speed-up of nnpatch's batched engine.

    python benchmarks/engine_vs_loop.py [--pairs 8] [--batch-size 64] [--preset tiny-random-codi]

(a) nnpatch: one nnsight trace of the recurrent forward per batch of rows;
(b) one nnsight trace per patch (the engine with batch size 1);
(c) the plain PyTorch forward-hook loop of tests/reference.py, one forward per patch.
The sweep is the original experiment's shape: every layer × every thought, single mode.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from reference import reference_rows  # noqa: E402

from nnpatch.engine.metrics import METRICS  # noqa: E402
from nnpatch.engine.plan import PatchSpec  # noqa: E402
from nnpatch.engine.trace import Engine  # noqa: E402
from nnpatch.models.presets import PRESETS  # noqa: E402
from nnpatch.pairs.builtin import tiny_arithmetic  # noqa: E402


def engine_sweep(model, pairs, specs, batch_size: int) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    engine = Engine(model, "resid", "denoise", list(METRICS))
    answers = engine.answers(pairs)
    cells = sorted({(s.layer, p) for s in specs for p in s.positions})
    base = engine.baselines(pairs, answers, cells, max(1, batch_size // 2))
    rows = [(spec, i, i) for spec in specs for i in range(len(pairs))]
    values = engine.patch(pairs, answers, base, rows, batch_size)
    return time.perf_counter() - start, values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--preset", default="tiny-random-codi", choices=list(PRESETS))
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    model = PRESETS[args.preset]()
    pairs = tiny_arithmetic(count=max(args.pairs, 1))[: args.pairs]
    specs = [
        PatchSpec(layer, (str(t),))
        for layer in range(model.num_layers)
        for t in range(model.num_thoughts)
    ]
    patches = len(specs) * len(pairs)
    print(
        f"{model.name}: {len(pairs)} pairs × {model.num_layers} layers × "
        f"{model.num_thoughts} thoughts = {patches} patches, {torch.get_num_threads()} threads"
    )

    engine_sweep(model, pairs[:1], specs[:2], args.batch_size)  # warm-up
    batched_s, batched = engine_sweep(model, pairs, specs, args.batch_size)
    per_trace_s, per_trace = engine_sweep(model, pairs, specs, 1)
    start = time.perf_counter()
    reference = reference_rows(model, pairs, specs, "resid", "denoise")
    hooks_s = time.perf_counter() - start

    ref_ld = torch.tensor([r["logit_diff"] for r in reference]).view(len(pairs), len(specs))
    engine_ld = batched[:, 0].view(len(specs), len(pairs)).T.double()
    agree = (ref_ld - engine_ld).abs().max().item()

    for label, seconds in [
        (f"(a) nnpatch, batch {args.batch_size}", batched_s),
        ("(b) one nnsight trace per patch", per_trace_s),
        ("(c) one hooked forward per patch", hooks_s),
    ]:
        print(f"{label:<34} {seconds:8.2f} s  {patches / seconds:9.1f} patches/s")
    print(f"speed-up a/b: {per_trace_s / batched_s:.1f}x   a/c: {hooks_s / batched_s:.1f}x")
    print(f"max |logit_diff| difference, nnpatch vs hook loop: {agree:.2e}")
    assert (per_trace - batched).abs().max() < 1e-3


if __name__ == "__main__":
    main()
