"""A clean/corrupted pair: two questions that differ in one number, and their answers."""

from __future__ import annotations

from dataclasses import dataclass

FIELDS = ("id", "clean_question", "clean_answer", "corrupted_question", "corrupted_answer")


@dataclass(frozen=True)
class Pair:
    id: str
    clean_question: str
    clean_answer: str
    corrupted_question: str
    corrupted_answer: str
