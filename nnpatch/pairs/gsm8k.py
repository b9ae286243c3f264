"""Clean/corrupted pairs from GSM8K: change one number in a question, recompute the answer.

The new answer comes from re-running the solution's `<<expr=result>>` calculator annotations
with the new number propagated, exactly (fractions, not floats). Every literal in an
annotation must be traced to its source: the changed number, an earlier step's result, or a
value that stays fixed (another number in the question, a number word, a unit constant the
question implies). When a literal has two sources that would now disagree, we cannot tell
which was meant, so the problem is skipped with a named reason rather than guessed at.
"""

from __future__ import annotations

import ast
import json
import os
import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

from nnpatch.errors import PairsError
from nnpatch.pairs.jsonl import jsonl_lines, write_pairs_jsonl  # noqa: F401 - re-exported
from nnpatch.pairs.schema import Pair

# A candidate: an integer in digits, with optional thousands commas, not part of a decimal,
# a word ("3rd", "10am") or another number ("1,5").
CANDIDATE = re.compile(r"(?<![\w.,])(?:\d{1,3}(?:,\d{3})+|\d+)(?![\w]|[.,]\d)")
# Any number in the question, loosely: all of these stay fixed unless chosen.
ANY_NUMBER = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?|\.\d+")
ANNOTATION = re.compile(r"<<([^<>=]*)=([^<>]*)>>")
DIGIT_COMMA = re.compile(r"(?<=\d),(?=\d{3})")

WORDS = {
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14,
    "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19,
    "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70,
    "eighty": 80, "ninety": 90, "hundred": 100, "thousand": 1000, "half": 2, "twice": 2,
    "double": 2, "pair": 2, "couple": 2, "both": 2, "third": 3, "triple": 3, "quarter": 4,
    "dozen": 12,
}  # fmt: skip
# Constants a solution uses without the question writing them (12 months, 60 minutes, 100%).
# A word stem in the question makes its value a fixed source too.
UNITS = {
    "week": (7, 52), "day": (7, 24, 30, 365), "month": (12, 30), "year": (12, 52, 365),
    "hour": (24, 60), "minute": (60,), "second": (60,), "%": (100,), "percent": (100,),
    "cent": (100,), "dollar": (100,), "inch": (12,), "foot": (12, 3), "feet": (12, 3),
    "yard": (3, 36), "pound": (16,), "ounce": (16,), "gallon": (4, 128), "quart": (4,),
    "kilo": (1000,), "gram": (1000,), "meter": (100, 1000), "liter": (1000,), "ml": (1000,),
}  # fmt: skip
# How many new values to try per candidate number before moving to the next candidate.
TRIES = 4


class Skip(Exception):
    """This problem (or this choice of number) cannot give a trustworthy pair.

    Reasons, per problem: no_final_answer, final_answer_not_positive_integer,
    unparsable_annotation, annotation_mismatch, division_by_zero, no_annotations,
    answer_not_traceable (`####` is not the last step's result), no_candidate_number.
    Per choice of number: changed_value_also_implied (a unit or number word has its value),
    untraced_number, ambiguous_reused_result, ambiguous_collision,
    changed_number_not_in_annotations, step_not_positive_integer,
    answer_not_positive_integer, answer_unchanged.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Step:
    expr: ast.expr
    result: Fraction


def read_gsm8k(path: str | Path) -> list[dict]:
    """GSM8K rows ({"question", "answer"}) from a JSONL file (blank lines are ignored), a
    Hugging Face dataset folder, or (where no such path exists) a hub id in the local cache."""
    from nnpatch.pairs import hf

    path = Path(path)
    if hf.is_dataset_folder(path) or (not path.exists() and hf.looks_like_hub_id(str(path))):
        rows = hf.folder_rows(path) if path.exists() else hf.hub_rows(str(path))
        for number, row in enumerate(rows, 1):
            _check_row(row, f"{path} row {number}")
        return rows
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise PairsError(f"{path}: cannot read GSM8K file ({err.__class__.__name__})") from None
    rows = []
    for number, line in jsonl_lines(text):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise PairsError(f"{path}:{number}: malformed JSON ({err.msg})") from None
        _check_row(row, f"{path}:{number}")
        rows.append(row)
    return rows


def _check_row(row: object, where: str) -> None:
    if not isinstance(row, dict) or not all(
        isinstance(row.get(key), str) for key in ("question", "answer")
    ):
        raise PairsError(f"{where}: expected an object with text fields 'question' and 'answer'")


def check_distinct_paths(input_path: str | Path, out_path: str | Path) -> None:
    """The pairs file must not be the GSM8K file it is made from (by any name or link)."""
    source, target = Path(input_path), Path(out_path)
    same = source.resolve() == target.resolve()
    if not same and source.exists() and target.exists():
        same = os.path.samefile(source, target)
    if same:
        raise PairsError(
            f"--out {out_path} is the --input file itself; writing it would destroy the GSM8K "
            "data, so nothing was written: choose another --out"
        )


def make_pairs(
    rows: list[dict], n: int | None = None, seed: int = 0
) -> tuple[list[dict], dict[str, int]]:
    """Pair records (Pair fields plus provenance) and counts.

    Rows are scanned in order and scanning stops once `n` pairs are kept, so "read" counts
    the rows looked at and kept / read is the yield. Each row draws from its own generator,
    seeded by (seed, row index), so a row's pair does not depend on `n` or on other rows.
    Candidate numbers are tried in seeded order, a few new values each, and the first that
    recomputes cleanly is kept; a skipped row adds one to "skipped_<reason>", the reason
    being the first failure met (see Skip).
    """
    records: list[dict] = []
    counts: Counter[str] = Counter(read=0, kept=0)
    for index, row in enumerate(rows):
        if n is not None and len(records) >= n:
            break
        counts["read"] += 1
        try:
            record = _pair_for_row(row, index, random.Random(f"{seed}:{index}"))
            if seed:  # another seed changes another number: the id must differ too
                record["id"] = f"{record['id']}-s{seed}"
            records.append(record)
            counts["kept"] += 1
        except Skip as skip:
            counts[f"skipped_{skip.reason}"] += 1
    return records, dict(counts)


def describe_counts(counts: dict[str, int]) -> str:
    """One line for a log: yield, then skip reasons, most common first."""
    read, kept = counts.get("read", 0), counts.get("kept", 0)
    share = kept / read if read else 0.0
    skips = sorted(((v, k) for k, v in counts.items() if k.startswith("skipped_")), reverse=True)
    reasons = ", ".join(f"{key.removeprefix('skipped_')} {value}" for value, key in skips)
    return f"kept {kept}/{read} ({share:.0%})" + (f"; skipped: {reasons}" if reasons else "")


def _pair_for_row(row: dict, index: int, rng: random.Random) -> dict:
    question, answer = row.get("question"), row.get("answer")
    if not isinstance(question, str) or not isinstance(answer, str):
        raise PairsError(f"GSM8K row {index}: needs text fields 'question' and 'answer'")
    steps, final = _parse_solution(answer)
    candidates = _candidates(question)
    if not candidates:
        raise Skip("no_candidate_number")
    rng.shuffle(candidates)
    first: Skip | None = None
    # Candidates in seeded order; the first that gives a clean recomputation is used.
    for match in candidates:
        old = int(match.group().replace(",", ""))
        fixed = _fixed_values(question, skip=match)
        for new in _new_values(old, rng):
            try:
                new_steps = _recompute(steps, Fraction(old), Fraction(new), fixed)
            except Skip as skip:
                first = first or skip
                continue
            new_answer = int(new_steps[-1])
            if new_answer == final:
                first = first or Skip("answer_unchanged")
                continue
            pair = Pair(
                id=f"gsm8k-{index}",
                clean_question=question,
                clean_answer=str(final),
                corrupted_question=question[: match.start()] + str(new) + question[match.end() :],
                corrupted_answer=str(new_answer),
                clean_steps=tuple(step_text(step.result) for step in steps),
                corrupted_steps=tuple(map(step_text, new_steps)),
            )
            provenance = {"changed_number": match.group(), "old_value": old, "new_value": new}
            record = asdict(pair) | {"source_index": index} | provenance
            return record | {key: list(record[key]) for key in ("clean_steps", "corrupted_steps")}
    assert first is not None
    raise first


def _parse_solution(answer: str) -> tuple[list[Step], int]:
    """The annotation steps and the `####` answer, which must be the last step's result."""
    body, sep, tail = answer.rpartition("####")
    if not sep:
        raise Skip("no_final_answer")
    final = _number(tail.strip())
    if final is None or final.denominator != 1 or final <= 0:
        raise Skip("final_answer_not_positive_integer")
    steps = []
    for expr_text, result_text in ANNOTATION.findall(body):
        result = _number(result_text.strip())
        expr = _parse_expr(expr_text)
        if result is None or expr is None:
            raise Skip("unparsable_annotation")
        # A step whose arithmetic is off (rounded or wrong) cannot be re-run faithfully.
        if _evaluate(expr, lambda value: value) != result:
            raise Skip("annotation_mismatch")
        steps.append(Step(expr, result))
    if not steps:
        raise Skip("no_annotations")
    if steps[-1].result != final:
        raise Skip("answer_not_traceable")
    return steps, int(final)


def _number(text: str) -> Fraction | None:
    text = DIGIT_COMMA.sub("", text)
    if not re.fullmatch(r"\d+(?:\.\d+)?|\.\d+", text):
        return None
    return Fraction(text)


def _parse_expr(text: str) -> ast.expr | None:
    """The expression's AST if it uses only numbers, + - * /, parentheses and unary minus."""
    text = DIGIT_COMMA.sub("", text).strip()
    if not text or not re.fullmatch(r"[\d.+\-*/() ]+", text):
        return None
    try:
        tree = ast.parse(text, mode="eval").body
    except SyntaxError:
        return None
    allowed = (ast.BinOp, ast.UnaryOp, ast.USub, ast.Constant, ast.Add, ast.Sub, ast.Mult, ast.Div)
    for node in ast.walk(tree):
        if isinstance(node, ast.UnaryOp) and not isinstance(node.op, ast.USub):
            return None
        if not isinstance(node, allowed):
            return None
        if isinstance(node, ast.Constant) and type(node.value) not in (int, float):
            return None
    return tree


def _evaluate(node: ast.expr, literal: Callable[[Fraction], Fraction]) -> Fraction:
    """Exact value of a checked expression; `literal` maps each number to the one to use."""
    if isinstance(node, ast.Constant):
        return literal(Fraction(repr(node.value)))
    if isinstance(node, ast.UnaryOp):
        return -_evaluate(node.operand, literal)
    assert isinstance(node, ast.BinOp)
    left, right = _evaluate(node.left, literal), _evaluate(node.right, literal)
    if isinstance(node.op, ast.Add):
        return left + right
    if isinstance(node.op, ast.Sub):
        return left - right
    if isinstance(node.op, ast.Mult):
        return left * right
    if right == 0:
        raise Skip("division_by_zero")
    return left / right


def _candidates(question: str) -> list[re.Match]:
    """Integers written once in the question, whose value no other number there shares."""
    values = Counter(_value(m.group()) for m in ANY_NUMBER.finditer(question))
    return [m for m in CANDIDATE.finditer(question) if values[_value(m.group())] == 1]


def _fixed_values(question: str, skip: re.Match) -> set[Fraction]:
    """Values that may appear in the solution and must not change: the question's other
    numbers, its number words, and unit constants its words imply."""
    lower = question.lower()
    fixed = {
        _value(m.group())
        for m in ANY_NUMBER.finditer(question)
        if not (m.start() <= skip.start() < m.end())
    }
    words = set(re.findall(r"[a-z]+", lower))
    fixed |= {Fraction(value) for word, value in WORDS.items() if word in words}
    for stem, values in UNITS.items():
        if stem in lower:
            fixed |= {Fraction(value) for value in values}
    return fixed


def _value(text: str) -> Fraction:
    return Fraction(text.replace(",", ""))


def _new_values(old: int, rng: random.Random) -> list[int]:
    """Up to TRIES distinct positive values near `old`, keeping its round-ness (80000 moves
    in thousands, 35 in ones) so the new question reads like the old one."""
    unit = 1
    while old % (unit * 10) == 0 and old // (unit * 10) >= 10:
        unit *= 10
    spread = max(2, old // unit // 5)
    values: list[int] = []
    for _ in range(4 * TRIES):
        new = old + rng.choice((-1, 1)) * rng.randint(1, spread) * unit
        if new > 0 and new != old and new not in values:
            values.append(new)
        if len(values) == TRIES:
            break
    return values


def step_text(value: Fraction) -> str:
    """A step's result as GSM8K writes it: 24, 2.5 (a fraction that does not end, to 6 places)."""
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.6f}".rstrip("0").rstrip(".")


def _recompute(
    steps: list[Step], old: Fraction, new: Fraction, fixed: set[Fraction]
) -> list[Fraction]:
    """Every step's result with `old` changed to `new` and every change propagated (the last
    is the answer)."""
    if old in fixed:
        raise Skip("changed_value_also_implied")
    produced: dict[Fraction, set[Fraction]] = {}  # old step result -> its new values
    used = False

    def literal(value: Fraction) -> Fraction:
        nonlocal used
        sources = set(produced.get(value, ()))
        if value == old:
            sources.add(new)
            used = True
        if value in fixed:
            sources.add(value)
        if not sources:
            # Not in the question, no earlier step made it, no unit explains it: likely a
            # step done outside the annotations, which might depend on the changed number.
            raise Skip("untraced_number")
        if len(produced.get(value, ())) > 1:
            raise Skip("ambiguous_reused_result")  # two steps made it, now with different values
        if len(sources) > 1:
            raise Skip("ambiguous_collision")  # e.g. a changed step result equals a fixed number
        return sources.pop()

    results = []
    for number, step in enumerate(steps, start=1):
        result = _evaluate(step.expr, literal)
        results.append(result)
        # A count or amount that was a positive whole number must stay one.
        whole = step.result > 0 and step.result.denominator == 1
        if whole and (result <= 0 or result.denominator != 1):
            last = number == len(steps)
            raise Skip("answer_not_positive_integer" if last else "step_not_positive_integer")
        produced.setdefault(step.result, set()).add(result)
    if not used:
        raise Skip("changed_number_not_in_annotations")
    return results
