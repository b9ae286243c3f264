"""Load clean/corrupted pairs from a JSONL file or a built-in set, and check them."""

from __future__ import annotations

import json
from pathlib import Path

from nnpatch.errors import PairsError
from nnpatch.pairs.builtin import BUILTIN
from nnpatch.pairs.jsonl import jsonl_lines
from nnpatch.pairs.schema import FIELDS, STEPS, Pair

GENERATORS = ("gsm8k",)


def load_pairs(source: str, base_dir: Path, limit: int | None = None) -> list[Pair]:
    """Pairs from a built-in set's name or a JSONL path (relative paths: to `base_dir`)."""
    pairs, _ = load_pair_set(source, base_dir, limit)
    return pairs


def load_pair_set(
    name: str,
    base_dir: Path,
    limit: int | None = None,
    source: str | None = None,
    seed: int = 0,
) -> tuple[list[Pair], dict[str, int]]:
    """Pairs and how they were obtained: read, generated, skipped (by reason), kept.

    `name` is a built-in set, a generator ("gsm8k", reading `source`) or a JSONL path;
    relative paths are resolved against `base_dir` (the recipe's folder).
    """
    if name in GENERATORS:
        if not source:
            raise PairsError(f"{name!r} generates pairs from a file: set data.source to it")
        from nnpatch.pairs.gsm8k import make_pairs, read_gsm8k

        records, counts = make_pairs(read_gsm8k(_gsm8k_source(source, base_dir)), limit, seed)
        pairs = [
            Pair(**{k: str(r[k]) for k in FIELDS}, **{k: tuple(r[k]) for k in STEPS})
            for r in records
        ]
        counts = {**counts, "generated": len(pairs)}
    else:
        pairs = BUILTIN[name]() if name in BUILTIN else read_pair_file(_resolve(name, base_dir))
        counts = {"read": len(pairs)}
    check_pairs(pairs, name)
    if not pairs:
        raise PairsError(f"{name!r} gave no pairs; check data.source")
    pairs = pairs[:limit] if limit else pairs
    return pairs, {**counts, "kept": len(pairs)}


def _gsm8k_source(source: str, base_dir: Path) -> Path:
    """A GSM8K file or dataset folder (relative to `base_dir`), else a hub id as given."""
    from nnpatch.pairs import hf

    path = _path(source, base_dir)
    if not path.exists() and hf.looks_like_hub_id(source):
        return Path(source)  # read_gsm8k looks it up in the Hugging Face cache
    return _resolve(source, base_dir)


def _path(source: str, base_dir: Path) -> Path:
    path = Path(source).expanduser()
    return path if path.is_absolute() else base_dir / path


def _resolve(source: str, base_dir: Path) -> Path:
    from nnpatch.pairs.hf import is_dataset_folder

    path = _path(source, base_dir)
    if not (path.is_file() or is_dataset_folder(path)):
        known = ", ".join((*BUILTIN, *GENERATORS))
        raise PairsError(
            f"{source!r} is neither a file (looked at {path}) nor a built-in set or generator "
            f"({known}); give a path relative to the recipe's folder"
        )
    return path


def read_pair_file(path: Path) -> list[Pair]:
    """Pairs from a JSONL file or a Hugging Face dataset folder of the same fields."""
    from nnpatch.pairs import hf

    if not hf.is_dataset_folder(path):
        return read_jsonl(path)
    rows = hf.folder_rows(path)
    if not rows:
        raise PairsError(f"{path}: no pairs in the dataset")
    return [_pair_from_row(row, f"{path} row {i}") for i, row in enumerate(rows, 1)]


def read_jsonl(path: Path) -> list[Pair]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise PairsError(f"{path}: not UTF-8 text; save the pairs file as UTF-8") from None
    pairs = []
    for number, line in jsonl_lines(text):
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise PairsError(f"{where}: malformed JSON ({err.msg}); one object per line") from None
        if not isinstance(row, dict):
            raise PairsError(f"{where}: expected a JSON object with fields {', '.join(FIELDS)}")
        pairs.append(_pair_from_row(row, where))
    if not pairs:
        raise PairsError(f"{path}: no pairs in the file; one JSON object per line")
    return pairs


QUESTIONS = ("clean_question", "corrupted_question")


def _pair_from_row(row: dict, where: str) -> Pair:
    """Ids and answers are stripped; questions are kept verbatim, because each model prepares
    its question as its authors' code does (CODI strips and collapses double spaces, Coconut
    feeds the raw text)."""
    values = {}
    for field in FIELDS:
        value = row.get(field)
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise PairsError(
                f"{where}: field {field!r} is missing or not text; every row needs "
                f"{', '.join(FIELDS)}"
            )
        text = str(value)
        if not text.strip():
            raise PairsError(f"{where}: field {field!r} is empty")
        values[field] = text if field in QUESTIONS else text.strip()
    for field in STEPS:
        if row.get(field) is not None:  # a dataset's absent column reads as None
            values[field] = _steps(row[field], field, where)
    return Pair(**values)


def _steps(value: object, field: str, where: str) -> tuple[str, ...]:
    """Each calculator step's result, in order: a list of numbers or text."""
    fine = isinstance(value, list) and all(
        isinstance(v, str | int | float) and not isinstance(v, bool) and str(v).strip()
        for v in value
    )
    if not fine:
        raise PairsError(
            f"{where}: field {field!r} must be a list of values (each calculator step's "
            'result, in order), e.g. ["24", "72"]'
        )
    return tuple(str(v).strip() for v in value)


def check_pairs(pairs: list[Pair], source: str) -> None:
    seen: set[str] = set()
    for pair in pairs:
        if pair.id in seen:
            raise PairsError(f"{source}: pair id {pair.id!r} appears twice; ids must be unique")
        seen.add(pair.id)
        if pair.clean_answer == pair.corrupted_answer:
            raise PairsError(
                f"{source}: pair {pair.id!r} has equal clean and corrupted answers "
                f"({pair.clean_answer!r}); patching needs answers that differ"
            )
        if pair.clean_question.strip() == pair.corrupted_question.strip():
            raise PairsError(
                f"{source}: pair {pair.id!r} has the same clean and corrupted question; "
                "patching needs questions that differ (change one number)"
            )
