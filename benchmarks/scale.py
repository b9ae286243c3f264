"""A researcher's whole study at a model shape: every usable GSM8K test pair, every layer ×
position, three sites, both directions; then the other modes, each with its rows/s.

    python benchmarks/scale.py [--shape tiny|gpt2-small|llama-1b] [--device cpu|cuda]
                               [--dtype float32|bfloat16] [--pairs N] [--mode-pairs 32]
                               [--batch-size auto|N] [--max-memory 40GiB]

A random-weight CODI model of the shape (6 thoughts, as CODI-LLaMA; positions bot, 0..5,
eot), pairs generated from ../shared/data/gsm8k/test.jsonl and the tiny word tokenizer (an
unknown word is one token, so questions are about as long as in words). The study runs
through the run's own stages (`execute._sweep`: baselines, batch size, shards, tables):
single mode, sites resid, attn and mlp, denoise and noise. Then lens, mediation, subsets
(3 thoughts) and heads on `--mode-pairs` pairs. Per part: rows, seconds (baselines, batch
choice and rows), rows/s, peak memory, and the batch size `auto` chose.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep import SHAPES, _peak_memory, _reset, build  # noqa: E402

from nnpatch.engine.modes import mode_for  # noqa: E402
from nnpatch.engine.trace import Engine  # noqa: E402
from nnpatch.pairs import load_pair_set  # noqa: E402
from nnpatch.recipe import read_recipe  # noqa: E402
from nnpatch.run.execute import _sweep  # noqa: E402

GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "test.jsonl"
METRICS = ["logit_diff", "recovery", "kl_to_clean"]


class Bench:
    """What `prepare` would hand `execute`, for a model built here rather than from a recipe
    (with a recipe for the rest of the run)."""

    def __init__(self, model, pairs, patch: str, run: str, folder: Path):
        path = folder / f"recipe-{time.monotonic_ns()}.toml"
        path.write_text(
            f'name = "scale"\n[model]\npreset = "tiny-random-codi"\n[data]\n'
            f'pairs = "tiny-arithmetic"\n[patch]\n{patch}\n[metrics]\nnames = {METRICS!r}\n'
            f"[run]\n{run}\n".replace("'", '"')
        )
        self.recipe, _ = read_recipe(path)
        self.source, self.model, self.pairs = path, model, pairs
        self.mode = mode_for(self.recipe.patch.mode)
        self.plan = self.mode.plan(self.recipe.patch, model.shape, path)
        site, direction = self.mode.primary(self.recipe.patch)
        self.engine = Engine(model, site, direction, METRICS)
        self.answers = self.engine.answers(pairs)
        self.folder = folder

    def run(self) -> tuple[int, float, str]:
        """Rows, seconds (baselines, batch choice and rows) and how the batch was chosen,
        through the run's own stages (`execute._sweep`, which also writes the tables)."""
        manifest: dict = {}
        finished = _sweep(self, Path(tempfile.mkdtemp(dir=self.folder)), None, manifest)
        timings = finished.timings
        seconds = timings["baselines_s"] + timings["batch_size_s"] + timings["patch_s"]
        return finished.results.height, seconds, manifest["batch"]["how"]


def _peak(device: str) -> str:
    if device.startswith("cuda"):  # the batch-size probe resets CUDA's peak: the rows' peak
        return f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB (GPU, the rows)"
    return _peak_memory(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--pairs", type=int, default=None, help="default: every usable pair")
    parser.add_argument("--mode-pairs", type=int, default=32)
    parser.add_argument("--batch-size", default="auto")
    parser.add_argument("--max-memory", default=None)
    parser.add_argument("--parts", default="study,lens,mediation,subsets,heads")
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    model = build(args.shape, 6, args.device, getattr(torch, args.dtype))
    pairs, counts = load_pair_set("gsm8k", GSM8K.parent, args.pairs, str(GSM8K))
    size = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
    run = f"batch_size = {size!r}"
    if args.max_memory:
        run += f"\nmax_memory = {args.max_memory!r}"
    tokens = sum(len(model.tokenizer(p.clean_question).input_ids) for p in pairs) / len(pairs)
    print(
        f"{args.shape} ({args.dtype}, {args.device}), {model.num_layers} layers × "
        f"{len(model.position_labels())} positions; {len(pairs)} GSM8K pairs "
        f"(of {counts['read']} test questions), {tokens:.0f} question tokens on average; "
        f"{torch.get_num_threads()} threads"
    )
    parts = {
        "study": (
            'mode = "single"\nsite = ["resid", "attn", "mlp"]\npositions = '
            '["bot", 0, 1, 2, 3, 4, 5, "eot"]\ndirection = ["denoise", "noise"]\n'
            'control = "none"',
            pairs,
        ),
        "lens": ('mode = "lens"\nsite = "resid"', pairs[: args.mode_pairs]),
        "mediation": (
            'mode = "mediation"\nsite = "resid"\ncontrol = "none"',
            pairs[: args.mode_pairs],
        ),
        "subsets": (
            'mode = "subsets"\nsite = "resid"\npositions = [0, 2, 4]\ncontrol = "none"',
            pairs[: args.mode_pairs],
        ),
        "heads": (
            'mode = "single"\nsite = "head"\npositions = [0, 5]\ncontrol = "none"',
            pairs[: args.mode_pairs],
        ),
    }
    print(f"{'part':<10} {'pairs':>6} {'rows':>9} {'seconds':>9} {'rows/s':>9}  peak memory; batch")
    with tempfile.TemporaryDirectory() as folder:
        for name in args.parts.split(","):
            patch, some = parts[name]
            _reset(args.device)
            rows, seconds, how = Bench(model, some, patch, run, Path(folder)).run()
            print(
                f"{name:<10} {len(some):>6} {rows:>9,} {seconds:>9.1f} {rows / seconds:>9.0f}  "
                f"{_peak(args.device)}; {how}"
            )


if __name__ == "__main__":
    main()
