"""One linear probe, cross-validated by pair: multinomial logistic regression on standardized
features (torch, full-batch L-BFGS, L2 on the weights), scored on held-out pairs, beside
the majority class and a control task.

Every fold of the real task and of the control task is one problem of a single batched
fit: the objective is a sum of independent terms, so its optimum is each problem's own.
The weights start at zero and nothing is sampled inside the fit, so the seed (the folds
and the control labels) is all the randomness there is.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from nnpatch.report.stats import wilson_ci

WEIGHT_DECAY = 1e-2  # times the sum of squared weights, added to the mean cross-entropy
MAX_ITER = 100  # L-BFGS iterations at most; held-out argmaxes settle well before


def pair_folds(pair_ids: Sequence[str], folds: int, seed: int) -> torch.Tensor:
    """Each example's fold [n]: the pairs, in a seeded random order, dealt round-robin into
    `folds` folds, so both runs of a pair share a fold and folds differ by one pair at most."""
    unique = sorted(set(pair_ids))
    if not 2 <= folds <= len(unique):
        raise ValueError(f"{folds} folds need from 2 to {len(unique)} pairs' worth of folds")
    order = torch.randperm(len(unique), generator=torch.Generator().manual_seed(seed))
    fold_of = {unique[int(j)]: i % folds for i, j in enumerate(order)}
    return torch.tensor([fold_of[p] for p in pair_ids], dtype=torch.long)


def control_labels(labels: Sequence[str], seed: int) -> list[str]:
    """The control task's labels: the real ones permuted across examples (seeded). Same
    classes, same frequencies, no relation to the activations: what a probe scores on them
    held out is what it scores without the activations carrying the value.

    Not Hewitt & Liang's map from each input type to a random class: here the only thing
    that recurs across examples is the value itself, and a map from the value to a class is
    the real task with some classes merged, which a probe that decodes the value decodes too.
    """
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed + 1))
    return [labels[int(j)] for j in order]


def cross_validate(
    x: torch.Tensor,
    labels: Sequence[str],
    pair_ids: Sequence[str],
    folds: int,
    seed: int,
    weight_decay: float = WEIGHT_DECAY,
) -> dict:
    """Held-out accuracy of the probe on `labels` from `x` [n, d], `folds` folds by pair:
    accuracy over all held-out examples with its Wilson 95% interval, the majority class of
    the training folds scored on the held-out ones, and the control task's accuracy."""
    folds = min(folds, len(set(pair_ids)))  # at most one pair per fold
    classes = sorted(set(labels))
    code = {c: i for i, c in enumerate(classes)}
    real = torch.tensor([code[v] for v in labels])
    control = torch.tensor([code[v] for v in control_labels(labels, seed)])
    fold = pair_folds(pair_ids, folds, seed)
    test = fold.unsqueeze(0) == torch.arange(folds).unsqueeze(1)  # [folds, n]
    y = torch.cat([real.expand(folds, -1), control.expand(folds, -1)])  # [2 * folds, n]
    train = ~torch.cat([test, test])
    predicted = fit_predict(x, y, train, len(classes), weight_decay)
    right = (predicted == y) & ~train  # each example held out once per task
    correct, n = int(right[:folds].sum()), len(labels)
    low, high = wilson_ci(correct, n)
    majority = sum(int((real[t] == _majority(real[~t], len(classes))).sum()) for t in test)
    accuracy, control_accuracy = correct / n, int(right[folds:].sum()) / n
    return {
        "accuracy": accuracy,
        "ci95_low": low,
        "ci95_high": high,
        "n": n,
        "classes": len(classes),
        "majority": majority / n,
        "control_accuracy": control_accuracy,
        "selectivity": accuracy - control_accuracy,
        "folds": folds,
    }


def _majority(y: torch.Tensor, classes: int) -> int:
    """The most frequent class (the first of a tie)."""
    return int(torch.bincount(y, minlength=classes).argmax())


def fit_predict(
    x: torch.Tensor,
    y: torch.Tensor,
    train: torch.Tensor,
    classes: int,
    weight_decay: float = WEIGHT_DECAY,
    max_iter: int = MAX_ITER,
) -> torch.Tensor:
    """Fit one probe per problem (row of `y` [problems, n], trained on its `train` [problems,
    n] examples of `x` [n, d], standardized by their mean and deviation) and predict every
    example: the argmax class [problems, n]."""
    x = x.double()
    weight = train.double().unsqueeze(-1)  # [problems, n, 1]
    count = weight.sum(1)  # [problems, 1]
    mean = (weight * x).sum(1) / count  # [problems, d]
    std = ((weight * (x - mean.unsqueeze(1)) ** 2).sum(1) / count).sqrt()
    std = torch.where(std > 1e-8, std, torch.ones_like(std))  # a constant feature stays 0
    z = (x - mean.unsqueeze(1)) / std.unsqueeze(1)  # [problems, n, d]
    problems, d = z.shape[0], z.shape[-1]
    w = torch.zeros(problems, d, classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(problems, 1, classes, dtype=torch.float64, requires_grad=True)
    mask = train.double()
    optimizer = torch.optim.LBFGS(
        [w, b],
        lr=1,
        max_iter=max_iter,
        tolerance_grad=1e-5,
        tolerance_change=1e-7,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        logits = torch.baddbmm(b, z, w)  # [problems, n, classes]
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, classes), y.reshape(-1), reduction="none"
        ).view(problems, -1)
        value = ((nll * mask).sum(1) / count.squeeze(1)).sum() + weight_decay * w.pow(2).sum()
        value.backward()
        return value

    optimizer.step(loss)
    with torch.no_grad():
        return torch.baddbmm(b, z, w).argmax(-1)
