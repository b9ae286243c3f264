"""How a question reaches a model as text, and how an answer is read back from text: each
family's preparation as its authors' evaluation does it, and CODI's number reading."""

from __future__ import annotations

import re


def codi_question(question: str) -> str:
    """The question as CODI's test.py feeds it: stripped, then each run of two spaces made one
    (`.strip().replace('  ', ' ')`, a single pass: three spaces become two, as there)."""
    return question.strip().replace("  ", " ")


def coconut_question(question: str) -> str:
    """The question as Coconut's dataset.py feeds it: the raw text and a newline."""
    return question + "\n"


ANSWER_ONLY = " Output only the answer and nothing else."


def answer_only_question(question: str) -> str:
    """The question as Cywiński et al.'s test.py feeds an answer-only checkpoint: CODI's
    preparation, then their instruction to answer with the number alone."""
    return codi_question(question) + ANSWER_ONLY


QUESTION_STYLES = {
    "raw": lambda question: question,  # PCCoT's data processor reads the text as it is
    # Dilgren & Wiegreffe's evaluation pipeline: stripped, inner spaces kept (multimode CODI),
    # and then Coconut's newline (multimode Coconut)
    "strip": lambda question: question.strip(),
    "strip-newline": lambda question: question.strip() + "\n",
    "codi": codi_question,
    "coconut": coconut_question,
    "answer-only": answer_only_question,
}


NUMBER = re.compile(r"-?\d+\.?\d*")  # CODI's extract_answer_number


def last_number(text: str) -> float | None:
    """The answer in decoded text as CODI's evaluation reads it: commas dropped, the last
    number, as a float."""
    numbers = NUMBER.findall(text.replace(",", ""))
    return float(numbers[-1]) if numbers else None


def answer_is(decoded: str, expected: str) -> bool:
    """Whether decoded text gives the expected answer. Numbers compare as numbers, as CODI's
    evaluation does ("72.0" is "72", "1,000" is "1000"); other answers compare as text."""
    try:
        target = float(expected.replace(",", ""))
    except ValueError:
        return decoded.strip() == expected.strip()
    return last_number(decoded) == target
