"""Questions reach each model exactly as its authors' code prepares them: CODI's test.py
strips and collapses double spaces, Coconut's dataset.py feeds the raw text and a newline."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import GSM8K, byte_level_tokenizer

from nnpatch.models.base import ThoughtModel
from nnpatch.models.codi import CodiModel, Projection
from nnpatch.models.tiny import tiny_lm


def codi_model(tokenizer, style: str = "codi") -> ThoughtModel:
    vocab = len(tokenizer)
    lm = tiny_lm("llama", vocab + 3, 1)
    module = CodiModel(lm, Projection(64, 64), 2, bot_id=vocab + 1, eot_id=vocab + 2, pad_id=vocab)
    return ThoughtModel(module, tokenizer, "bpe-codi", question_style=style)


def codi_test_py_ids(tokenizer, question: str, bot_id: int) -> list[int]:
    """CODI's test.py, line for line: the question list, the batch tokenizer call, and
    `remove_eos=True`'s bot appended (its release scripts pass --remove_eos True)."""
    questions = [f"{question.strip().replace('  ', ' ')}"]
    batch = tokenizer(questions, return_tensors="pt", padding="longest")
    bot = torch.tensor([bot_id], dtype=torch.long).expand(batch["input_ids"].size(0), 1)
    return torch.cat((batch["input_ids"], bot), dim=1)[0].tolist()


@pytest.fixture(scope="module")
def bpe():
    return byte_level_tokenizer()


@pytest.mark.parametrize(
    "question",
    [
        "Tom has 3 coins.  He finds 4 more.",  # two spaces after a sentence
        "Tom has 3   coins. ",  # three spaces: one pass leaves two, as in CODI
        "  Tom has 3 coins.\n",  # surrounding whitespace
        "Tom has 3 coins.    He finds 4 more.",  # four spaces become two
    ],
)
def test_codi_question_ids_equal_codi_test_py(bpe, question):
    """A CODI question with runs of spaces gives exactly the ids CODI's test.py gives."""
    model = codi_model(bpe)
    assert model.question_ids(question) == codi_test_py_ids(bpe, question, model.module.bot_id)
    stripped_only = bpe(question.strip()).input_ids + [model.module.bot_id]
    if "  " in question.strip():
        assert model.question_ids(question) != stripped_only  # the tokenizer sees the spaces


def test_every_gsm8k_test_question_matches_codi(bpe):
    """On all 1,319 GSM8K test questions (336 with a double space) nnpatch's CODI ids equal
    test.py's; stripping alone would differ on the double-spaced ones."""
    if not GSM8K.exists():
        pytest.skip("GSM8K data not beside the repo")
    questions = [json.loads(line)["question"] for line in GSM8K.read_text().split("\n") if line]
    model = codi_model(bpe)
    bot = model.module.bot_id
    doubled = [q for q in questions if "  " in q]
    assert len(questions) == 1319 and len(doubled) == 336
    assert all(model.question_ids(q) == codi_test_py_ids(bpe, q, bot) for q in questions)
    differ = sum(model.question_ids(q) != bpe(q.strip()).input_ids + [bot] for q in doubled)
    assert differ == len(doubled)


def test_coconut_question_is_the_raw_text_and_a_newline(bpe):
    """Coconut's dataset.py: tokenizer.encode(question + "\\n"), nothing stripped."""
    model = codi_model(bpe, style="coconut")
    for question in ["Tom has  3 coins. ", " Tom has 3 coins."]:
        expected = bpe.encode(question + "\n", add_special_tokens=True) + [model.module.bot_id]
        assert model.question_ids(question) == expected


def test_presets_and_codi_releases_use_codi_preparation(llama, tmp_path):
    """Every CODI path (presets, the release loader) prepares questions CODI's way; the
    Coconut loader uses Coconut's."""
    from release_builders import write_coconut_release, write_codi_release

    from nnpatch.models.kinds.coconut import load_coconut
    from nnpatch.models.kinds.codi import load_codi
    from nnpatch.models.presets import PRESETS
    from nnpatch.recipe import ModelSection

    assert llama.question_style == "codi" and PRESETS["toy-codi"]().question_style == "codi"
    _, base, checkpoint = write_codi_release(tmp_path / "codi", "llama", "safetensors")
    codi = load_codi(ModelSection(kind="codi", base=str(base), checkpoint=str(checkpoint)))
    _, _, base, path = write_coconut_release(tmp_path / "coconut")
    coconut = load_coconut(ModelSection(kind="coconut", base=str(base), checkpoint=str(path)))
    assert codi.question_style == "codi" and coconut.question_style == "coconut"


def test_pairs_files_keep_questions_verbatim(tmp_path):
    """The pairs loader strips ids and answers but leaves questions to the model."""
    from helpers import write_pairs

    from nnpatch.pairs import read_jsonl

    row = {
        "id": " a ",
        "clean_question": "Tom has  3 coins. ",
        "clean_answer": " 3",
        "corrupted_question": "Tom has  5 coins. ",
        "corrupted_answer": "5 ",
    }
    (pair,) = read_jsonl(write_pairs(tmp_path / "p.jsonl", [row]))
    assert (pair.id, pair.clean_answer, pair.corrupted_answer) == ("a", "3", "5")
    assert pair.clean_question == "Tom has  3 coins. "


def test_the_original_experiments_pairs_that_change_under_codi_preparation():
    """Of the 57 GSM8K pairs `recipes/gsm8k-llama1b` generates, 14 have a double space: the
    pairs whose every activation differed from CODI's before its preparation was matched."""
    if not GSM8K.exists():
        pytest.skip("GSM8K data not beside the repo")
    from nnpatch.pairs.gsm8k import make_pairs, read_gsm8k

    records, _ = make_pairs(read_gsm8k(GSM8K), n=57, seed=0)
    assert len(records) == 57
    assert sum("  " in r["clean_question"] for r in records) == 14
