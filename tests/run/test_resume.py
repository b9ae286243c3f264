"""Interrupted sweeps resume to the same rows as an uninterrupted run, and refuse to mix
rows computed under a different recipe, model or pairs."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner
from helpers import write_pairs, write_recipe

from nnpatch.cli import main
from nnpatch.run.execute import execute
from nnpatch.run.prepare import prepare

SWEEP = {"patch": {"mode": "single"}, "data": {"limit": 4}, "run": {"batch_size": 2}}


def _run_dirs(output: Path) -> list[Path]:
    return sorted(p.parent for p in output.glob("*/*/manifest.json"))


def _interrupt_after(batches: int):
    """A progress callback that presses Ctrl-C once `batches` batches are done."""

    def start(total: int):
        seen = {"n": 0}

        def tick(n: int) -> None:
            seen["n"] += 1
            if seen["n"] > batches:
                raise KeyboardInterrupt

        return tick

    return start


def _interrupted_run(tmp_path: Path, recipe: Path) -> Path:
    with pytest.raises(KeyboardInterrupt):
        execute(prepare(recipe), progress=_interrupt_after(3))
    (run_dir,) = _run_dirs(tmp_path / "outputs")
    return run_dir


def _nnpatch(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "nnpatch", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )


# logit metrics and decoded answers (their token ids live in the shards too)
NAMES = ["logit_diff", "recovery", "kl_to_clean", "top1_changed", "answer", "correct"]


def test_sigkill_at_random_points_then_resume_equals_an_uninterrupted_run(tmp_path):
    """SIGKILL mid-sweep (before the first shard and after random numbers of them), resume
    each time: the final rows equal an uninterrupted run's exactly, none lost or doubled
    (decoded answers: the same texts, token for token)."""
    sweep = {**SWEEP, "metrics": {"names": NAMES}}
    reference = tmp_path / "reference"
    reference.mkdir()
    whole = _nnpatch("run", str(write_recipe(reference, name="sweep", **sweep)))
    assert whole.wait(timeout=300) == 0, whole.stderr.read().decode()
    (done,) = _run_dirs(reference / "outputs")
    expected = pl.read_parquet(done / "results.parquet")

    recipe = write_recipe(tmp_path, name="sweep", **sweep)
    total_batches = expected.height // 2
    rng = random.Random(7)
    kill_points = [0, *sorted(rng.sample(range(1, total_batches - 1), 2))]
    command = ["run", str(recipe)]
    for kill_at in kill_points:
        process = _nnpatch(*command)
        run_dir = _wait_for_shards(tmp_path / "outputs", kill_at, process)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        assert json.loads((run_dir / "manifest.json").read_text())["status"] == "running"
        assert not (run_dir / "results.parquet").exists()
        command = ["run", "--resume", str(run_dir)]
    final = _nnpatch(*command)
    assert final.wait(timeout=300) == 0, final.stderr.read().decode()

    (run_dir,) = _run_dirs(tmp_path / "outputs")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["resumed"] == len(kill_points)
    assert manifest["timings"]["rows_computed"] < expected.height  # saved shards were reused
    got = pl.read_parquet(run_dir / "results.parquet")
    assert got.equals(expected)
    assert not got.select("pair_id", "layer", "position", "control").is_duplicated().any()
    assert not (run_dir / "shards").exists()
    assert got["answer"].n_unique() > 1  # texts that a wrong resume would change


def _wait_for_shards(output: Path, count: int, process: subprocess.Popen) -> Path:
    """The run folder, once its manifest exists and `count` shards have been written."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read().decode()
        dirs = _run_dirs(output)
        if dirs and len(list((dirs[0] / "shards").glob("rows-*.npy"))) >= count:
            return dirs[0]
        time.sleep(0.005)
    raise AssertionError("the sweep never reached the kill point")


def test_ctrl_c_marks_the_folder_interrupted_and_resume_finishes_it(tmp_path):
    recipe = write_recipe(tmp_path, **SWEEP)
    run_dir = _interrupted_run(tmp_path, recipe)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "interrupted"
    assert len(list((run_dir / "shards").glob("rows-*.npy"))) == 3
    result = CliRunner().invoke(main, ["run", "--resume", str(run_dir)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "finished" and "error" not in manifest


def test_cli_ctrl_c_exits_130_and_says_how_to_resume(tmp_path, monkeypatch):
    import nnpatch.cli as cli

    monkeypatch.setattr(cli, "_progress", _interrupt_after(1))
    result = CliRunner().invoke(main, ["run", str(write_recipe(tmp_path, **SWEEP))])
    assert result.exit_code == 130
    (run_dir,) = _run_dirs(tmp_path / "outputs")
    assert f"nnpatch run --resume {run_dir}" in result.output


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (
            lambda recipe, _: recipe.write_text(recipe.read_text().replace("[0, 1]", "[0]")),
            "recipe",
        ),
        (lambda recipe, pairs: pairs.write_text(pairs.read_text().replace("q0", "z0")), "pairs"),
    ],
)
def test_resume_refuses_a_changed_recipe_or_pairs(tmp_path, change, field):
    pairs = write_pairs(
        tmp_path / "pairs.jsonl",
        [
            {
                "id": f"p{i}",
                "clean_question": f"q{i} Tom has 3 coins",
                "clean_answer": "3",
                "corrupted_question": f"q{i} Tom has 5 coins",
                "corrupted_answer": "5",
            }
            for i in range(3)
        ],
    )
    recipe = write_recipe(
        tmp_path,
        data={"pairs": str(pairs)},
        patch={"mode": "single", "layers": [0, 1]},
        run={"batch_size": 2},
    )
    run_dir = _interrupted_run(tmp_path, recipe)
    change(recipe, pairs)
    result = CliRunner().invoke(main, ["run", "--resume", str(run_dir)])
    assert result.exit_code == 2, result.output
    assert f"fingerprint.{field}:" in result.output and "start a new run" in result.output


def test_resume_refuses_finished_and_foreign_folders(tmp_path):
    recipe = write_recipe(tmp_path)
    finished = execute(prepare(recipe)).path
    for folder, match in [(finished, "already finished"), (tmp_path, "not a run folder")]:
        result = CliRunner().invoke(main, ["run", "--resume", str(folder)])
        assert result.exit_code == 2 and match in result.output, result.output


def test_resume_takes_no_recipe_or_overrides(tmp_path):
    result = CliRunner().invoke(main, ["run", "x.toml", "--resume", str(tmp_path)])
    assert result.exit_code == 2 and "--resume" in result.output


def test_same_recipe_twice_gives_identical_results(tmp_path):
    """Determinism: two runs of one recipe write equal results.parquet contents."""
    recipe = write_recipe(tmp_path, **SWEEP)
    first, second = (execute(prepare(recipe)).path for _ in range(2))
    assert first != second
    a, b = (pl.read_parquet(p / "results.parquet") for p in (first, second))
    assert a.equals(b)


@pytest.mark.parametrize(
    "patch",
    [
        {"mode": "mediation", "layers": [0, 2], "positions": [0, 3]},
        {"mode": "knockout", "to": ["bot", 1], "layers": [0, 2]},
        {"mode": "subsets", "layers": [1], "positions": [0, 2, 4]},
    ],
    ids=["mediation", "knockout", "subsets"],
)
def test_the_new_modes_resume_to_an_uninterrupted_run(tmp_path, patch):
    """Stopped after three batches, resumed: the same rows and mode tables as one run."""
    sweep = {**SWEEP, "patch": patch}
    run_dir = _interrupted_run(tmp_path, write_recipe(tmp_path, **sweep))
    result = CliRunner().invoke(main, ["run", "--resume", str(run_dir)])
    assert result.exit_code == 0, result.output
    (tmp_path / "whole").mkdir()
    whole = execute(prepare(write_recipe(tmp_path / "whole", **sweep)))
    for table in ("results", "summary", "mediation", "synergy"):
        if (whole.path / f"{table}.parquet").exists():
            resumed = pl.read_parquet(run_dir / f"{table}.parquet")
            assert resumed.equals(pl.read_parquet(whole.path / f"{table}.parquet")), table
