"""GSM8K pairs: one number changed in the question, the answer recomputed through the steps."""

from __future__ import annotations

import json
import random
import re

import pytest
from helpers import GSM8K

from nnpatch.errors import PairsError
from nnpatch.pairs import load_pairs
from nnpatch.pairs.gsm8k import describe_counts, make_pairs, read_gsm8k, write_pairs_jsonl

GSM8K_TEST = GSM8K
NUMBER = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?")

# 12 boxes of 6 pens, 25 sold, 9 delivered: 12*6 - 25 + 9 = 56.
SHOP = {
    "question": "A shop has 12 boxes with 6 pens each. It sells 25 pens and then gets 9 more "
    "pens. How many pens does it have now?",
    "answer": "It has 12*6=<<12*6=72>>72 pens.\nAfter selling it has 72-25=<<72-25=47>>47.\n"
    "Then it has 47+9=<<47+9=56>>56 pens.\n#### 56",
}
SHOP_BY_HAND = {
    "12": lambda v: v * 6 - 25 + 9,
    "6": lambda v: 12 * v - 25 + 9,
    "25": lambda v: 12 * 6 - v + 9,
    "9": lambda v: 12 * 6 - 25 + v,
}


@pytest.fixture(scope="module")
def gsm8k_rows() -> list[dict]:
    if not GSM8K_TEST.is_file():
        pytest.skip(f"GSM8K test set not found at {GSM8K_TEST}")
    return read_gsm8k(GSM8K_TEST)


@pytest.fixture(scope="module")
def real_pairs(gsm8k_rows) -> list[dict]:
    records, _ = make_pairs(gsm8k_rows[:300], seed=0)
    return random.Random(0).sample(records, 40)


def recompute_by_replacement(answer: str, old: int, new: int) -> float:
    """Re-run the annotations as text: swap old values for new ones, then let Python evaluate."""
    changed = {float(old): float(new)}  # old value -> new value, for the number and each step
    result = float("nan")
    for expr, stated in re.findall(r"<<([^=<>]*)=([^<>]*)>>", answer):
        text = re.sub(
            r"\d*\.?\d+",
            lambda m: repr(changed.get(float(m.group()), float(m.group()))),
            expr.replace(",", ""),
        )
        assert re.fullmatch(r"[\d.e+\-*/() ]+", text), text
        result = eval(text, {"__builtins__": {}})  # arithmetic only, checked just above
        changed[float(stated.replace(",", ""))] = result
    return result


def test_hand_written_problem_matches_hand_computation():
    """Whichever number is changed, the corrupted answer is the hand-computed value."""
    chosen = set()
    for seed in range(20):
        records, _ = make_pairs([SHOP], seed=seed)
        (record,) = records
        chosen.add(record["changed_number"])
        expected = SHOP_BY_HAND[record["changed_number"]](record["new_value"])
        assert record["corrupted_answer"] == str(expected)
        assert record["clean_answer"] == "56"
    assert chosen == set(SHOP_BY_HAND)


def test_ambiguous_problems_are_skipped_with_reasons():
    """A repeated number, an untraceable answer and a reused result are each counted."""
    rows = [
        {"question": "Tom has 3 bags with 3 apples each. How many apples does he have?",
         "answer": "3*3=<<3*3=9>>9\n#### 9"},
        {"question": "Tom has 4 pens and buys 5 more, then gives some away. How many are left?",
         "answer": "4+5=<<4+5=9>>9, and giving 2 away leaves 7.\n#### 7"},
        {"question": "Sam has 5 red pens and 7 blue pens. Ann has 3 red pens and 9 blue pens. "
                     "How many pens do they have together?",
         "answer": "<<5+7=12>>12 and <<3+9=12>>12, so <<12+12=24>>24\n#### 24"},
    ]  # fmt: skip
    records, counts = make_pairs(rows)
    assert records == []
    assert counts == {
        "read": 3,
        "kept": 0,
        "skipped_no_candidate_number": 1,
        "skipped_answer_not_traceable": 1,
        "skipped_ambiguous_reused_result": 1,
    }


def test_real_pairs_match_independent_recomputation(gsm8k_rows, real_pairs):
    """On GSM8K, the corrupted answer equals a plain text-replacement re-run of the steps."""
    for record in real_pairs:
        answer = gsm8k_rows[record["source_index"]]["answer"]
        expected = recompute_by_replacement(answer, record["old_value"], record["new_value"])
        assert expected == pytest.approx(int(record["corrupted_answer"])), record["id"]


def test_real_pairs_differ_in_one_number_and_answer(real_pairs):
    """Answers are different positive integers; the questions differ in exactly one number."""
    for record in real_pairs:
        clean, corrupted = record["clean_answer"], record["corrupted_answer"]
        assert clean.isdigit() and corrupted.isdigit() and int(clean) > 0 and int(corrupted) > 0
        assert clean != corrupted
        before = NUMBER.findall(record["clean_question"])
        after = NUMBER.findall(record["corrupted_question"])
        diffs = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
        assert diffs == [(record["changed_number"], str(record["new_value"]))]
        assert NUMBER.sub("#", record["clean_question"]) == NUMBER.sub(
            "#", record["corrupted_question"]
        )


def test_yield_on_full_test_set(gsm8k_rows):
    """A sane share of GSM8K test problems gives a pair; counts add up to the rows read."""
    records, counts = make_pairs(gsm8k_rows)
    print(describe_counts(counts))
    share = counts["kept"] / counts["read"]
    assert 0.2 <= share <= 0.95
    assert counts["read"] == len(gsm8k_rows) and counts["kept"] == len(records)
    skipped = sum(v for k, v in counts.items() if k.startswith("skipped_"))
    assert counts["kept"] + skipped == counts["read"]


def test_deterministic_per_seed_and_n_stops_early(gsm8k_rows):
    """Same seed, same pairs; `n` keeps the first n of the full run and stops reading."""
    full, _ = make_pairs(gsm8k_rows[:100], seed=3)
    assert make_pairs(gsm8k_rows[:100], seed=3)[0] == full
    first, counts = make_pairs(gsm8k_rows[:100], n=5, seed=3)
    assert first == full[:5] and counts["kept"] == 5
    assert counts["read"] == full[4]["source_index"] + 1
    assert make_pairs(gsm8k_rows[:100], seed=4)[0] != full


def test_read_gsm8k_names_file_and_line_on_bad_input(tmp_path):
    """Malformed JSON or a row without question/answer raises a one-line PairsError."""
    path = tmp_path / "g.jsonl"
    path.write_text(json.dumps(SHOP) + "\n{oops\n", encoding="utf-8")
    with pytest.raises(PairsError, match=r"g\.jsonl:2: malformed JSON"):
        read_gsm8k(path)
    path.write_text(json.dumps({"question": "Q?"}) + "\n", encoding="utf-8")
    with pytest.raises(PairsError, match=r"g\.jsonl:1: expected an object"):
        read_gsm8k(path)


def test_written_pairs_load_as_pairs(tmp_path):
    """write_pairs_jsonl leaves only the target file, and load_pairs accepts it."""
    records, _ = make_pairs([SHOP])
    write_pairs_jsonl(records, tmp_path / "pairs.jsonl")
    assert [p.name for p in tmp_path.iterdir()] == ["pairs.jsonl"]
    (pair,) = load_pairs("pairs.jsonl", tmp_path)
    assert pair.id == "gsm8k-0" and pair.corrupted_answer == records[0]["corrupted_answer"]
