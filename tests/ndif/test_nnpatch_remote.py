"""nnpatch as users install it (a wheel, non-editable, in its own venv) running recipes with
`run.remote = true` against NDIF's own server, which has no nnpatch: every mode that runs
remotely gives the local run's rows within 1e-5; a SIGKILLed remote run resumes to the
uninterrupted rows; the API key never reaches a run folder."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hub_cache import hub_id

ROOT = Path(__file__).resolve().parent.parent
PAIRS = [
    {
        "id": "a",
        "clean_question": "Tom has 3 pens and buys 4 more. [[3 + 4 = 7]] How many pens?",
        "clean_answer": "7",
        "corrupted_question": "Tom has 5 pens and buys 4 more. [[5 + 4 = 9]] How many pens?",
        "corrupted_answer": "9",
    },
    {
        "id": "c",
        "clean_question": "Ann has 6 books. [[6 * 2 = 12]] She has twice as many cards.",
        "clean_answer": "12",
        "corrupted_question": "Ann has 7 books. [[7 * 2 = 14]] She has twice as many cards.",
        "corrupted_answer": "14",
    },
    {
        "id": "d",
        "clean_question": "Sam has 8 eggs. [[8 - 2 = 6]] He eats 2.",
        "clean_answer": "6",
        "corrupted_question": "Sam has 9 eggs. [[9 - 2 = 7]] He eats 2.",
        "corrupted_answer": "7",
    },
]
MODES = {
    "single": {"mode": "single", "layers": [0, 1]},
    "layer": {"mode": "layer"},
    "chained": {"mode": "chained", "layers": [1]},
    "sets": {"mode": "sets", "layers": [0], "sets": [[0, 1], [2]]},
    "subsets": {"mode": "subsets", "layers": [1], "positions": [0, 1, 2]},
    "sources": {"mode": "single", "layers": [1], "source": ["mean", "zero", "random", "steer"]},
    "grid": {
        "mode": "single",
        "layers": [0],
        "site": ["resid", "mlp"],
        "direction": ["denoise", "noise"],
    },
    "head": {"mode": "single", "site": "head", "heads": [0, 1], "layers": [0]},
    "record": {"mode": "record", "layers": [0, 1]},
}
KEY = "nnpatch-test-key-never-written"


def recipe(folder: Path, checkpoint: str, patch: dict, **run) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    run = {"output": str(folder / "out"), "report": "none", "batch_size": 4, **run}
    lines = [
        'name = "remote"',
        "[model]",
        'kind = "causal_lm"',
        f'checkpoint = "{checkpoint}"',
        "[data]",
        'pairs = "pairs.jsonl"',
        "[patch]",
        *[f"{k} = {json.dumps(v)}" for k, v in patch.items()],
        "[run]",
        *[f"{k} = {json.dumps(v)}" for k, v in run.items()],
    ]
    path = folder / "recipe.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_dirs(folder: Path) -> list[Path]:
    return sorted(p.parent for p in (folder / "out").glob("*/*/manifest.json"))


def local_rows(ndif, family: str, folder: Path, patch: dict) -> pl.DataFrame:
    """The same recipe run here, from the same weights (the snapshot NDIF serves)."""
    from nnpatch.run.execute import execute
    from nnpatch.run.prepare import prepare

    (snapshot,) = [m.snapshot for m in ndif.models if m.hub_id == hub_id(family)]
    finished = execute(prepare(recipe(folder, str(snapshot), patch)))
    return finished.results


def remote_nnpatch(ndif, user, *args, **env) -> subprocess.CompletedProcess:
    return ndif.run([user, "-m", "nnpatch", *args], timeout=900, NDIF_API_KEY=KEY, **env)


def assert_rows_equal(remote: pl.DataFrame, local: pl.DataFrame) -> None:
    assert remote.columns == local.columns and remote.height == local.height > 0
    for column in remote.columns:
        if remote[column].dtype in (pl.Float64, pl.Float32):
            np.testing.assert_allclose(
                remote[column].to_numpy(),
                local[column].to_numpy(),
                rtol=1e-5,
                atol=1e-5,
                err_msg=column,
            )
        else:
            assert remote[column].equals(local[column]), column


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("mode", list(MODES))
def test_remote_recipe_equals_the_local_run(ndif, user, tmp_path, family, mode):
    """`nnpatch run` from the wheel venv with run.remote = true: rows equal the local run's
    within 1e-5; the key is in no file of the run folder."""
    patch = MODES[mode]
    folder = tmp_path / "remote"
    done = remote_nnpatch(
        ndif, user, "run", str(recipe(folder, hub_id(family), patch, remote=True))
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = run_dirs(folder)
    remote = pl.read_parquet(run_dir / "results.parquet")
    assert_rows_equal(remote, local_rows(ndif, family, tmp_path / "local", patch))
    for file in run_dir.rglob("*"):
        if file.is_file():
            assert KEY.encode() not in file.read_bytes(), file


def test_sigkill_then_resume_gives_the_uninterrupted_rows(ndif, user, tmp_path):
    """A remote run killed after some shards, then --resume: the rows of one whole run."""
    patch = {"mode": "single", "layers": [0, 1]}
    folder = tmp_path / "remote"
    path = recipe(folder, hub_id("gpt2"), patch, remote=True, batch_size=2)
    argv = [str(user), "-m", "nnpatch", "run", str(path)]
    env = ndif.client_env(NDIF_API_KEY=KEY)
    process = subprocess.Popen(
        ndif.ns.argv(argv),
        env=env,
        cwd=ndif.work,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        dirs = run_dirs(folder)
        if dirs and len(list((dirs[0] / "shards").glob("rows-*.npy"))) >= 2:
            break
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    (run_dir,) = run_dirs(folder)
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "running"
    done = remote_nnpatch(ndif, user, "run", "--resume", str(run_dir))
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["resumed"] == 1
    resumed = pl.read_parquet(run_dir / "results.parquet")
    assert_rows_equal(resumed, local_rows(ndif, "gpt2", tmp_path / "local", patch))


def test_a_model_that_is_not_deployed_is_refused_before_any_row(ndif, user, tmp_path):
    """The deployment's state is read first: a repo NDIF does not run is one Error line."""
    folder = tmp_path / "remote"
    done = remote_nnpatch(
        ndif,
        user,
        "run",
        str(recipe(folder, "nnpatch-test/absent", {"mode": "single"}, remote=True)),
    )
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("Error: ") and "is not running on NDIF" in line
    assert not run_dirs(folder)
