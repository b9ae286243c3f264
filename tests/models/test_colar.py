"""CoLaR (kind "colar") on a tiny release written by the authors' own code
(tests/golden/colar): each question thinks its own number of latents, a pair's positions run
to the shorter of its two counts and rows past it are counted, never patched; patched rows
are what one hooked forward per patch gives; the Lightning checkpoint is read without
running any code it pickles."""

from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl
import pytest
import torch
from helpers import run_recipe, write_pairs, write_recipe
from reference import assert_matches_reference

from nnpatch.errors import ModelError
from nnpatch.models import build_model
from nnpatch.models.checkpoint import read_lightning_state
from nnpatch.pairs.builtin import tiny_arithmetic
from nnpatch.recipe import ModelSection
from nnpatch.run.execute import execute
from nnpatch.run.prepare import prepare

GOLDEN = Path(__file__).parent.parent / "golden" / "colar"
RUN = "logs/colar/qsa-gsm/colar-final"
FIELDS = {
    "kind": "colar",
    "base": str(GOLDEN / "models" / "llms" / "Llama-3.2-1B-Instruct"),
    "checkpoint": str(GOLDEN),  # the workspace: its one CoLaR run is found
    # the tiny model is chaotic over its 12 latents: float32's batch-shape rounding (1e-7)
    # grows to 1e-4 by the answer, so engine and reference are compared in float64
    "dtype": "float64",
}


@pytest.fixture(scope="module")
def model():
    return build_model(ModelSection(**FIELDS))


def test_the_run_folder_and_its_hyper_parameters_are_found(model):
    """The .ckpt under <run>/checkpoints/ beside <run>/hparams.yaml: LoRA and policy land,
    every key accounted for; the thinking speed of hparams.yaml is in the prompt."""
    report = model.key_report
    assert report.file.endswith(f"{RUN}/checkpoints/colar_best.ckpt")
    assert not report.missing and not report.unexpected and report.merged_lora
    assert (
        model.question_text("Q?") == "Question: Q? Let's think step by step:(Thinking speed: 5)###"
    )


def test_positions_are_known_once_it_reads_the_pairs(model):
    pairs = tiny_arithmetic()[:3]
    model.bind_pairs(pairs)
    counts = [model.count([p.clean_question, p.corrupted_question]) for p in pairs]
    assert model.num_thoughts == max(max(c) for c in counts)
    assert [model.span_of(p) for p in pairs] == [min(c) for c in counts]
    assert model.shape.position_labels()[0] == "bot"


def test_patched_rows_equal_the_hook_reference(tmp_path, model):
    """Latents a pair's questions both think: each row is one unpadded forward (the question
    thinking its own count) with a plain hook at that call."""
    patch = {"mode": "single", "layers": [0, 1], "positions": ["bot", 0, 1, "eot"]}
    results = run_recipe(write_recipe(tmp_path, model=FIELDS, patch=patch, data={"limit": 3}))
    assert_matches_reference(results, model, "resid", "denoise", tiny_arithmetic()[:3])


def test_latents_past_a_pair_count_are_counted_never_patched(tmp_path, model):
    """A position beyond one pair's shorter count: that pair's row is left out, and the run
    says so; the other pair's row is patched."""
    golden = json.loads((GOLDEN / "golden.json").read_text(encoding="utf-8"))
    q = [single["questions"][0] for single in golden["singles"]]  # they think 4, 11, 12+
    rows = [
        {"id": "short", "clean_question": q[0], "corrupted_question": q[1]},
        {"id": "long", "clean_question": q[1], "corrupted_question": q[2]},
    ]
    rows = [r | {"clean_answer": "8", "corrupted_answer": "9"} for r in rows]
    pairs = write_pairs(tmp_path / "pairs.jsonl", rows)
    counts = model.count(q)
    beyond = counts[0]  # the first latent the short pair's clean question lacks
    assert counts[0] < beyond + 1 <= min(counts[1:])
    patch = {"mode": "single", "layers": [0], "positions": [beyond]}
    recipe = write_recipe(tmp_path, model=FIELDS, patch=patch, data={"pairs": str(pairs)})
    finished = execute(prepare(recipe))
    results = pl.read_parquet(finished.path / "results.parquet")
    assert set(results.filter(~results["control"])["pair_id"]) == {"long"}
    notes = " ".join(json.loads((finished.path / "manifest.json").read_text())["notes"])
    assert "spans differ in length" in notes and "1 of 2 patched rows" in notes


def test_the_checkpoint_runs_no_code_it_pickles(tmp_path):
    """Objects beside the tensors (hyper-parameters, here one that would run a command when
    unpickled) become inert stand-ins."""

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    path = tmp_path / "x.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "hyper_parameters": Evil()}, path)
    assert set(read_lightning_state(path)) == {"w"}
    assert not (tmp_path / "ran").exists()


def test_a_file_without_a_state_dict_is_one_line(tmp_path):
    path = tmp_path / "x.ckpt"
    torch.save({"weights": [1, 2]}, path)
    with pytest.raises(ModelError, match=r"x.ckpt: not a Lightning checkpoint"):
        read_lightning_state(path)


def test_inspect_says_how_many_latents_the_recipe_questions_think(tmp_path):
    from click.testing import CliRunner

    from nnpatch.cli import main

    recipe = write_recipe(tmp_path, model=FIELDS, data={"limit": 2})
    result = CliRunner().invoke(main, ["inspect", str(recipe)])
    assert result.exit_code == 0, result.output
    assert (
        "latents per question: " in result.output and "over the recipe's 2 pairs" in result.output
    )


@pytest.mark.parametrize("damage", ["checkpoint", "hparams", "empty"])
def test_a_broken_run_folder_is_one_line(tmp_path, damage):
    """A corrupt .ckpt names the file; an unreadable hparams.yaml or a folder without a CoLaR
    run says what a CoLaR checkpoint folder holds."""
    import shutil

    workspace = tmp_path / "workspace"
    shutil.copytree(GOLDEN / "logs", workspace / "logs")
    run = workspace / RUN
    if damage == "checkpoint":
        (run / "checkpoints" / "colar_best.ckpt").write_text("junk")
    elif damage == "hparams":
        (run / "hparams.yaml").write_text("model_kwargs: [")
    else:
        shutil.rmtree(workspace / "logs")
    recipe = write_recipe(tmp_path, model=FIELDS | {"checkpoint": str(workspace)})
    with pytest.raises(ModelError) as err:
        run_recipe(recipe)
    message = str(err.value)
    assert "\n" not in message
    assert ("colar_best.ckpt: cannot read" in message) == (damage == "checkpoint")
    assert ("holds no CoLaR checkpoint" in message) == (damage != "checkpoint")


@pytest.mark.parametrize(
    ("decoded", "read"),
    [("Answer:18", "18"), ("###Answer: 7 Answer: 9", " 7 "), ("no marker 5", "no marker 5")],
)
def test_answers_are_read_as_their_evaluation_reads_them(model, decoded, read):
    assert model.read_answer(decoded) == read
