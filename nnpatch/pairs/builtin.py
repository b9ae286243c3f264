"""Built-in pair sets, generated in code (seeded), so a smoke run needs no data file."""

from __future__ import annotations

import random

from nnpatch.pairs.schema import Pair

NAMES = ["Tom", "Sam", "Ann", "Mia", "Leo", "Zoe", "Ben", "Eva"]
ITEMS = ["apples", "pens", "books", "coins", "cards", "marbles", "eggs", "cookies"]
# (question template, the two steps' results from the three numbers; the last is the answer)
TEMPLATES = [
    (
        "{n} has {a} {x}. {n} buys {b} more and then gives away {c}. How many {x} does {n} have?",
        lambda a, b, c: (a + b, a + b - c),
    ),
    (
        "{n} has {a} {x} and finds {b} more. Then {n} loses {c}. How many {x} are left?",
        lambda a, b, c: (a + b, a + b - c),
    ),
    (
        "{n} has {a} boxes with {b} {x} each and eats {c}. How many {x} are left?",
        lambda a, b, c: (a * b, a * b - c),
    ),
]


def tiny_arithmetic(count: int = 24, seed: int = 0) -> list[Pair]:
    """Two-step word problems; the corrupted question changes the first number."""
    rng = random.Random(seed)
    pairs = []
    for index in range(count):
        template, solve = TEMPLATES[index % len(TEMPLATES)]
        name, item = rng.choice(NAMES), rng.choice(ITEMS)
        a, b, c = rng.randint(2, 30), rng.randint(2, 9), rng.randint(1, 5)
        a2 = a + rng.choice([-1, 1]) * rng.randint(1, 9)
        if a2 < 2 or a2 == a:
            a2 = a + 10
        fill = {"n": name, "x": item, "b": b, "c": c}
        clean, corrupt = solve(a, b, c), solve(a2, b, c)
        pairs.append(
            Pair(
                id=f"tiny-{index:03d}",
                clean_question=template.format(a=a, **fill),
                clean_answer=str(clean[-1]),
                corrupted_question=template.format(a=a2, **fill),
                corrupted_answer=str(corrupt[-1]),
                clean_steps=tuple(map(str, clean)),
                corrupted_steps=tuple(map(str, corrupt)),
            )
        )
    return pairs


def _toy_arithmetic() -> list[Pair]:
    from nnpatch.pairs.toy import toy_arithmetic

    return toy_arithmetic()


BUILTIN = {"tiny-arithmetic": tiny_arithmetic, "toy-arithmetic": _toy_arithmetic}
