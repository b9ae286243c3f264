"""Toy multi-step arithmetic in the GSM8K-Aug style, for the embedded trained model.

A problem starts from a number and applies a chain of operations, all modulo 10 (the count
"wraps", so every value is one digit and every answer one token):

    question  Tom has 3 coins . Then he gets 4 more . Then he has 2 times as many . ...
    steps     <<3+4=7>> <<7*2=4>> ...          (calculator-style, results mod 10)
    answer    4

Each step needs the previous result, so the chain is serial: a model answering without
writing the steps has to carry them somewhere, which is what the continuous thoughts are for.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from nnpatch.pairs.schema import Pair

NAMES = ["Tom", "Sam", "Ann", "Mia", "Leo", "Zoe", "Ben", "Eva"]
ITEMS = ["coins", "cards", "eggs", "pens"]
# every phrase is 8 tokens, so each number sits at the same position in every question
PHRASES = {
    "+": "Then {p} finds {k} more of them .",
    "-": "Then {p} gives {k} of them away .",
    "*": "Then {p} has {k} times as many .",
}
NUM_OPS = 3  # serial steps per problem
PRONOUN = {"Tom": "he", "Sam": "he", "Leo": "he", "Ben": "he"}


@dataclass(frozen=True)
class Problem:
    question: str
    steps: list[str]  # "<<3+4=7>>" per operation
    results: tuple[int, ...]  # the value after each operation (the last is the answer)
    answer: int
    start: int
    ops: tuple[tuple[str, int], ...]
    name: str
    item: str


def apply(op: str, value: int, k: int) -> int:
    if op == "+":
        return (value + k) % 10
    if op == "-":
        return (value - k) % 10
    return (value * k) % 10


def render(start: int, ops: tuple[tuple[str, int], ...], name: str, item: str) -> Problem:
    pronoun = PRONOUN.get(name, "she")
    parts = [f"{name} has {start} {item} ."]
    steps, results, value = [], [], start
    for op, k in ops:
        parts.append(PHRASES[op].format(p=pronoun, k=k))
        result = apply(op, value, k)
        steps.append(f"<<{value}{op}{k}={result}>>")
        results.append(result)
        value = result
    parts.append(f"How many {item} does {pronoun} have ?")
    return Problem(" ".join(parts), steps, tuple(results), value, start, ops, name, item)


OPS = "+-"  # the ops a problem draws from ("*" is supported by render and apply)


def sample(rng: random.Random, num_ops: int = NUM_OPS) -> Problem:
    ops = []
    for _ in range(num_ops):
        op = rng.choice(OPS)
        ops.append((op, rng.randint(2, 9) if op == "*" else rng.randint(1, 9)))
    return render(rng.randint(0, 9), tuple(ops), rng.choice(NAMES), rng.choice(ITEMS))


PAIR_COUNT, PAIR_SEED = 64, 1234


def pair_problems(
    count: int = PAIR_COUNT, seed: int = PAIR_SEED, num_ops: int = NUM_OPS
) -> list[tuple[Problem, Problem]]:
    """(clean, corrupted) problems: the corrupted one changes the starting number."""
    rng = random.Random(seed)
    out: list[tuple[Problem, Problem]] = []
    while len(out) < count:
        clean = sample(rng, num_ops)
        new_start = rng.choice([s for s in range(10) if s != clean.start])
        corrupt = render(new_start, clean.ops, clean.name, clean.item)
        if corrupt.answer != clean.answer:
            out.append((clean, corrupt))
    return out


def toy_arithmetic(
    count: int = PAIR_COUNT, seed: int = PAIR_SEED, num_ops: int = NUM_OPS
) -> list[Pair]:
    """Pairs for the embedded model: one number changed, the answer recomputed."""
    return [
        Pair(
            f"toy-{i:03d}",
            clean.question,
            str(clean.answer),
            corrupt.question,
            str(corrupt.answer),
            clean_steps=tuple(map(str, clean.results)),
            corrupted_steps=tuple(map(str, corrupt.results)),
        )
        for i, (clean, corrupt) in enumerate(pair_problems(count, seed, num_ops))
    ]
