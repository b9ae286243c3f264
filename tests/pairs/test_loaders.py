"""Pairs: built-in sets, JSONL files, and the checks that keep bad pairs out."""

from __future__ import annotations

import pytest
from helpers import write_pairs

from nnpatch.errors import PairsError
from nnpatch.pairs import load_pairs
from nnpatch.pairs.builtin import tiny_arithmetic

ROW = {
    "id": "a",
    "clean_question": "Tom has 3 pens.",
    "clean_answer": "3",
    "corrupted_question": "Tom has 4 pens.",
    "corrupted_answer": "4",
}


def test_builtin_set_is_deterministic_and_answers_differ():
    """tiny-arithmetic: same pairs every time; one number changes and so does the answer."""
    pairs = tiny_arithmetic()
    assert pairs == tiny_arithmetic() and len(pairs) == 24
    assert all(p.clean_answer != p.corrupted_answer for p in pairs)


def test_jsonl_relative_to_base_dir(tmp_path):
    """A relative path is read from the recipe's folder; numbers become text; limit applies."""
    write_pairs(tmp_path / "p.jsonl", [ROW, {**ROW, "id": "b", "clean_answer": 7}])
    pairs = load_pairs("p.jsonl", tmp_path, limit=1)
    assert len(pairs) == 1 and pairs[0].id == "a"
    assert load_pairs("p.jsonl", tmp_path)[1].clean_answer == "7"


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b'{"id": "a"\n', r"p\.jsonl:1: malformed JSON"),
        (b"[1, 2]\n", r"p\.jsonl:1: expected a JSON object"),
        (b'{"id": "a", "clean_question": "q"}\n', r"p\.jsonl:1: field 'clean_answer' is missing"),
        (b"\n\n", r"no pairs in the file"),
        (b"\xff\xfe bad", r"not UTF-8"),
    ],
)
def test_malformed_files_name_the_line(tmp_path, content, match):
    """Each malformed file gives one line naming the file (and line) and the fix."""
    (tmp_path / "p.jsonl").write_bytes(content)
    with pytest.raises(PairsError, match=match):
        load_pairs("p.jsonl", tmp_path)


def test_missing_file(tmp_path):
    """A path that is neither a file nor a built-in set says both."""
    with pytest.raises(PairsError, match=r"neither a file .* nor a built-in set"):
        load_pairs("nope.jsonl", tmp_path)


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ([ROW, ROW], r"pair id 'a' appears twice"),
        ([{**ROW, "corrupted_answer": "3"}], r"equal clean and corrupted answers"),
        ([{**ROW, "id": "  "}], r"field 'id' is empty"),
    ],
)
def test_bad_pairs(tmp_path, rows, match):
    """Duplicate ids, equal answers and empty fields are rejected."""
    write_pairs(tmp_path / "p.jsonl", rows)
    with pytest.raises(PairsError, match=match):
        load_pairs("p.jsonl", tmp_path)


def test_line_and_paragraph_separators_inside_strings_are_read(tmp_path):
    """JSONL lines end at "\\n" only: U+2028, U+2029, U+0085 and a form feed inside a
    question (as nnpatch's own generator writes them, unescaped) are part of the text."""
    import json

    from nnpatch.pairs import read_jsonl

    odd = "Tom has 3 coins.\u2028Then\u2029he finds\x85 4\x0c more."
    row = {
        "id": "a",
        "clean_question": odd,
        "clean_answer": "7",
        "corrupted_question": odd.replace("3", "5"),
        "corrupted_answer": "9",
    }
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(row, ensure_ascii=False) + "\r\n", encoding="utf-8")
    (pair,) = read_jsonl(path)
    assert pair.clean_question == odd


def test_generated_gsm8k_pairs_with_separators_read_back(tmp_path):
    """`nnpatch pairs gsm8k` writes what nnpatch then reads, U+2028 in a question included."""
    from nnpatch.pairs import load_pairs
    from nnpatch.pairs.gsm8k import make_pairs, write_pairs_jsonl

    rows = [
        {
            "question": "Tom has 12 coins.\u2028He finds 3 more. How many coins?",
            "answer": "12 + 3 = <<12+3=15>>15\n#### 15",
        }
    ]
    records, _ = make_pairs(rows)
    write_pairs_jsonl(records, tmp_path / "pairs.jsonl")
    (pair,) = load_pairs("pairs.jsonl", tmp_path)
    assert "\u2028" in pair.clean_question and pair.clean_question == rows[0]["question"]
