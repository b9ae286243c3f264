"""The embedded model's quality gates, measured on held-out problems.

    python -m nnpatch.toy.evaluate [--weights nnpatch/weights/toy-codi]

1. answer accuracy with thoughts (greedy decoding through the real loop, CODI's parsing);
2. the same with every thought vector replaced by its mean over the data (per step);
3. a layer-mode sweep on toy-arithmetic pairs: the best layer's mean recovery.
"""

from __future__ import annotations

import argparse
import random

import torch

from nnpatch.models.base import ThoughtModel
from nnpatch.models.text import answer_is
from nnpatch.pairs.toy import NUM_OPS, Problem, sample

HELD_OUT_SEED = 10_000  # training draws from random.Random(seed); held-out problems from here


def held_out(count: int = 512, num_ops: int = NUM_OPS) -> list[Problem]:
    return [sample(random.Random(HELD_OUT_SEED + i), num_ops) for i in range(count)]


@torch.no_grad()
def accuracy(model: ThoughtModel, problems: list[Problem], batch: int = 256) -> float:
    correct = 0
    for start in range(0, len(problems), batch):
        chunk = problems[start : start + batch]
        answers = model.greedy_answers([p.question for p in chunk], max_new=8)
        correct += sum(answer_is(a, str(p.answer)) for a, p in zip(answers, chunk, strict=True))
    return correct / len(problems)


@torch.no_grad()
def mean_thought_accuracy(model: ThoughtModel, problems: list[Problem]) -> float:
    """Accuracy when thought t is always the mean of thought t over `problems`."""
    prj = model.module.prj
    seen: list[torch.Tensor] = []
    hook = prj.register_forward_hook(lambda m, a, out: seen.append(out.detach()))
    try:
        accuracy(model, problems, batch=len(problems))
    finally:
        hook.remove()
    means = [step.mean(dim=0, keepdim=True) for step in seen]  # K × [1, 1, d]
    calls = {"n": 0}

    def replace(module, args, out):
        mean = means[calls["n"] % len(means)]
        calls["n"] += 1
        return mean.expand_as(out)

    hook = prj.register_forward_hook(replace)
    try:
        return accuracy(model, problems, batch=len(problems))
    finally:
        hook.remove()


def best_layer_recovery(model: ThoughtModel, pairs) -> tuple[int, float, list[float]]:
    """Mean recovery per layer of a layer-mode sweep (resid, denoise); the best layer."""
    from nnpatch.engine.plan import PatchSpec
    from nnpatch.engine.trace import Engine

    engine = Engine(model, "resid", "denoise", ["recovery"])
    answers = engine.answers(pairs)
    positions = tuple(str(t) for t in range(model.num_thoughts))
    cells = [(layer, p) for layer in range(model.num_layers) for p in positions]
    base = engine.baselines(pairs, answers, cells, chunk=64)
    specs = [PatchSpec(layer, positions) for layer in range(model.num_layers)]
    rows = [(spec, i, i) for spec in specs for i in range(len(pairs))]
    values = engine.patch(pairs, answers, base, rows, batch_size=128)[:, 0]
    per_layer = values.view(len(specs), len(pairs)).mean(dim=1).tolist()
    best = max(range(len(per_layer)), key=per_layer.__getitem__)
    return best, per_layer[best], per_layer


def main() -> None:
    from nnpatch.models.presets import toy_codi
    from nnpatch.pairs.toy import toy_arithmetic

    parser = argparse.ArgumentParser(description="Measure the toy model's quality gates.")
    parser.add_argument("--weights", default=None, help="a folder (default: the embedded one)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = toy_codi(folder=args.weights)
    problems = held_out()
    with_thoughts = accuracy(model, problems)
    with_means = mean_thought_accuracy(model, problems)
    layer, recovery, per_layer = best_layer_recovery(model, toy_arithmetic())
    print(f"held-out accuracy with thoughts: {with_thoughts:.3f} ({len(problems)} problems)")
    print(
        f"with every thought replaced by its mean: {with_means:.3f} "
        f"(drop {100 * (with_thoughts - with_means):.1f} points)"
    )
    print(
        "layer-mode mean recovery per layer: "
        + ", ".join(f"L{i} {r:.2f}" for i, r in enumerate(per_layer))
    )
    print(f"best layer: L{layer} with mean recovery {recovery:.2f}")


if __name__ == "__main__":
    main()
