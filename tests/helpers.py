"""Test helpers: write recipes and pair files, run them, read their results."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from nnpatch.run.execute import execute
from nnpatch.run.prepare import prepare

ROOT = Path(__file__).resolve().parent.parent  # the repository
PACKAGE = ROOT / "nnpatch"
GSM8K = ROOT.parent / "shared" / "data" / "gsm8k" / "test.jsonl"  # beside the repository


def toml_value(value) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def write_recipe(folder: Path, name: str = "test", **sections: dict) -> Path:
    """A recipe file; `sections` override the defaults table by table."""
    tables = {
        "model": {"preset": "tiny-random-codi"},
        "data": {"pairs": "tiny-arithmetic", "limit": 3},
        "patch": {"mode": "single"},
        # charts cost seconds a run: tests that read them ask for them (report = "full")
        "run": {"batch_size": 16, "output": str(folder / "outputs"), "report": "none"},
    }
    for table, values in sections.items():
        keep = {} if table == "model" else tables.get(table, {})  # a model replaces the preset
        tables[table] = {**keep, **values}
    lines = [f"name = {toml_value(name)}"]
    for table, values in tables.items():
        lines.append(f"[{table}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in values.items()]
    path = folder / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_pairs(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def run_recipe(path: Path, overrides: list[str] = ()) -> pl.DataFrame:
    """Run a recipe through the public path and return its results table, read from disk."""
    finished = execute(prepare(path, list(overrides)))
    return pl.read_parquet(finished.path / "results.parquet")


def byte_level_tokenizer(bos: bool = True):
    """A GPT-2-style byte-level BPE tokenizer trained in memory on GSM8K-like text: unlike
    the tiny word-level one, every run of spaces changes its ids (as real tokenizers' do)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|begin|>", "<|end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = [
        "Natalia sold clips to 48 of her friends in April, and then she sold half as many.",
        "How many clips did Natalia sell altogether in April and May?  The answer is: 72",
        "Tom has 3 coins. He finds 4 more.  How many coins does he have now?",
    ]
    tok.train_from_iterator(corpus * 20, trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<|begin|> $A", special_tokens=[("<|begin|>", tok.token_to_id("<|begin|>"))]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|begin|>", eos_token="<|end|>", pad_token="<|end|>"
    )


# marked-span pairs for plain causal LMs (the patched span between [[ and ]])
SPAN_PAIRS = [
    {
        "id": "a",
        "clean_question": "Tom has 3 pens and buys 4 more. [[3 + 4 = 7]] How many pens?",
        "clean_answer": "7",
        "corrupted_question": "Tom has 5 pens and buys 4 more. [[5 + 4 = 9]] How many pens?",
        "corrupted_answer": "9",
    },
    {
        "id": "b",
        "clean_question": "Sam has 12 eggs and eats 2. Then Sam buys 6 more. "
        "[[12 - 2 = 10 . 10 + 6 = 16]] How many eggs?",
        "clean_answer": "16",
        "corrupted_question": "Sam has 13 eggs and eats 2. Then Sam buys 6 more. "
        "[[13 - 2 = 11 . 11 + 6 = 17]] How many eggs?",
        "corrupted_answer": "17",
    },
    {
        "id": "c",
        "clean_question": "Ann has 6 books. [[6 * 2 = 12]] She has twice as many cards.",
        "clean_answer": "12",
        "corrupted_question": "Ann has 7 books. [[7 * 2 = 14]] She has twice as many cards.",
        "corrupted_answer": "14",
    },
]
