"""The lens against an independent computation, its one trace per chunk of pairs, and what
the embedded model's thoughts hold."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from helpers import ROOT, write_pairs, write_recipe
from reference import codi_lens_reference, final_norm_and_head, recorder

from nnpatch.pairs.builtin import tiny_arithmetic
from nnpatch.run.execute import execute
from nnpatch.run.prepare import prepare


def lens_table(recipe, overrides=()):
    finished = execute(prepare(recipe, list(overrides)))
    return finished, pl.read_parquet(finished.path / "lens.parquet")


def check_row(row, probs: np.ndarray, tracked: dict) -> None:
    """One lens row against reference probabilities [V] and the tracked first tokens."""
    k = len(row["top_probs"])
    np.testing.assert_allclose(row["top_probs"], np.sort(probs)[::-1][:k], rtol=1e-5, atol=1e-5)
    for value in row["tracked"]:
        p = probs[tracked[(value["value"], value["step"])]]
        np.testing.assert_allclose(value["probability"], p, rtol=1e-5, atol=1e-5)
        assert value["rank"] == 1 + int((probs > p + 1e-9).sum())


def tracked_tokens(model, pair, run: str) -> dict:
    own, other = (pair.clean_answer, pair.corrupted_answer)[:: 1 if run == "clean" else -1]
    steps = pair.clean_steps if run == "clean" else pair.corrupted_steps
    first = lambda text: model.tokenizer(" " + text, add_special_tokens=False).input_ids[0]  # noqa: E731
    out = {("answer", None): first(own), ("other_answer", None): first(other)}
    out |= {("step", k): first(text) for k, text in enumerate(steps, start=1)}
    return out


@pytest.mark.parametrize(
    ("preset", "site"),
    [
        ("tiny-random-codi", "resid"),
        ("tiny-random-codi", "thought"),
        ("tiny-random-codi-gpt2", "resid"),
    ],
)
def test_codi_lens_equals_hooks_and_a_hand_written_head(tmp_path, request, preset, site):
    """Every (pair, run, layer, position) of a CODI model, left-padded and batched, equals one
    unpadded hooked forward per question with the final norm and head applied by hand in
    float64, within 1e-5: top-k probabilities, tracked probabilities and ranks."""
    model = request.getfixturevalue("llama" if preset == "tiny-random-codi" else "gpt2")
    patch = {"mode": "lens", "site": site, "top_k": 4}
    if site == "resid":
        patch["positions"] = ["bot", 0, 3, 5, "eot"]
    _, lens = lens_table(write_recipe(tmp_path, model={"preset": preset}, patch=patch))
    pairs = {p.id: p for p in tiny_arithmetic()[:3]}
    cells = lens.select("layer", "position").unique(maintain_order=True).rows()
    assert lens.height == len(cells) * 3 * 2
    for pair_id, pair in pairs.items():
        for run in ("clean", "corrupted"):
            question = pair.clean_question if run == "clean" else pair.corrupted_question
            reference = codi_lens_reference(model, question, site, cells)
            rows = lens.filter((pl.col("pair_id") == pair_id) & (pl.col("run") == run))
            for row in rows.iter_rows(named=True):
                probs = reference[(row["layer"], row["position"])]
                check_row(row, probs, tracked_tokens(model, pair, run))


PLAIN_PAIRS = [
    {
        "id": "a",
        "clean_question": "Tom has 3 pens and buys 4 more. [[3 + 4 = 7]] How many pens?",
        "clean_answer": "7",
        "corrupted_question": "Tom has 5 pens and buys 4 more. [[5 + 4 = 9]] How many pens?",
        "corrupted_answer": "9",
        "clean_steps": ["7"],
        "corrupted_steps": ["9"],
    },
    {
        "id": "b",
        "clean_question": "Ann has 6 books. [[6 * 2 = 12]] She has twice as many cards.",
        "clean_answer": "12",
        "corrupted_question": "Ann has 7 books. [[7 * 2 = 14]] She has twice as many cards.",
        "corrupted_answer": "14",
    },
]


def test_plain_lm_lens_equals_hooks_and_a_hand_written_head(tmp_path):
    """A plain causal LM's span positions through the lens equal a hooked unpadded forward
    with the final norm and head by hand, float64, within 1e-5; a pair without steps tracks
    its answers only."""
    import torch

    from nnpatch.models.tiny import tiny_random_lm
    from nnpatch.pairs.loaders import read_jsonl

    pairs_file = write_pairs(tmp_path / "pairs.jsonl", PLAIN_PAIRS)
    recipe = write_recipe(
        tmp_path,
        model={"preset": "tiny-random-gpt2"},
        data={"pairs": str(pairs_file)},
        patch={"mode": "lens", "layers": [0, 2]},
    )
    _, lens = lens_table(recipe)
    model = tiny_random_lm("gpt2")
    for pair in read_jsonl(pairs_file):
        for run in ("clean", "corrupted"):
            question = pair.clean_question if run == "clean" else pair.corrupted_question
            head, span, tail = model.pieces(question)
            stores = {layer: [] for layer in (0, 2)}
            handles = [
                model.module.transformer.h[layer].register_forward_hook(recorder(stores[layer]))
                for layer in stores
            ]
            with torch.no_grad():
                model.module(input_ids=torch.tensor([head + span + tail]))
            for handle in handles:
                handle.remove()
            rows = lens.filter((pl.col("pair_id") == pair.id) & (pl.col("run") == run))
            assert rows.height == 2 * len(span)
            for row in rows.iter_rows(named=True):
                token = len(head) + int(row["position"])
                assert row["token_index"] == token
                probs = final_norm_and_head(model.module, stores[row["layer"]][0][0, token])
                check_row(row, probs, tracked_tokens(model, pair, run))
                kinds = {v["value"] for v in row["tracked"]}
                assert kinds == (
                    {"answer", "other_answer", "step"}
                    if pair.id == "a"
                    else {"answer", "other_answer"}
                )


def test_one_trace_per_chunk_of_pairs_reads_every_cell(tmp_path, monkeypatch):
    """6 pairs at batch 4 (2 pairs, both runs, per trace): 3 traced forwards in the whole
    run, and every cell of both runs of every pair is in the table."""
    from nnpatch.engine.trace import Engine

    traces = []
    real = Engine._run

    def counting(self, *args, **kwargs):
        traces.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Engine, "_run", counting)
    recipe = write_recipe(
        tmp_path, data={"limit": 6}, patch={"mode": "lens"}, run={"batch_size": 4}
    )
    _, lens = lens_table(recipe)
    assert len(traces) == 3
    assert lens.height == 6 * 2 * 4 * 6  # pairs x runs x layers x thoughts


def test_the_embedded_models_thoughts_hold_their_steps(tmp_path):
    """recipes/lens.toml on toy-codi: at the last layer, thought k's lens names step k+1's
    result first on at least 95% of pairs, and the report's table says where each step is."""
    recipe = ROOT / "recipes" / "lens.toml"
    finished, lens = lens_table(recipe, [f"run.output={json.dumps(str(tmp_path))}"])
    results = pl.read_parquet(finished.path / "results.parquet")
    for k in range(3):
        at = results.filter(
            (pl.col("layer") == 2)
            & (pl.col("position") == str(k))
            & (pl.col("value") == "step")
            & (pl.col("step") == k + 1)
        )
        assert at.height == 64 * 2 and at["top1"].mean() >= 0.95
    table = (finished.path / "summary.md").read_text()
    for k in range(3):
        line = next(line for line in table.splitlines() if line.startswith(f"| step {k + 1} |"))
        cell, share = line.split(" | ")[1], line.split(" | ")[4]
        assert cell == f"L2 t{k}" and int(share.rstrip("%")) >= 95
