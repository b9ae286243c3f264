"""A clean/corrupted pair: two questions that differ in one number, and their answers;
optionally each side's intermediate values (the result of each calculator step, in order),
which the lens tracks beside the answers."""

from __future__ import annotations

from dataclasses import dataclass

FIELDS = ("id", "clean_question", "clean_answer", "corrupted_question", "corrupted_answer")
STEPS = ("clean_steps", "corrupted_steps")  # optional


@dataclass(frozen=True)
class Pair:
    id: str
    clean_question: str
    clean_answer: str
    corrupted_question: str
    corrupted_answer: str
    clean_steps: tuple[str, ...] = ()
    corrupted_steps: tuple[str, ...] = ()
