"""Record: every cell's activation of both runs, equal to hooked forwards, exported with an
index; an export over run.max_export is refused before anything runs."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from helpers import ROOT, write_recipe
from reference import call_and_token, recorder, run_one, site_module

import nnpatch
from nnpatch.cli import main
from nnpatch.pairs.builtin import tiny_arithmetic


@pytest.mark.parametrize("site", ["resid", "attn", "thought"])
def test_recorded_activations_equal_hooked_forwards(tmp_path, llama, site):
    """Each exported row is the activation a plain hook records at its cell in one
    unpadded recurrent forward of its pair's question (within 1e-5: batched, padded)."""
    patch = {"mode": "record", "site": site}
    if site != "thought":
        patch |= {"layers": [0, 3], "positions": ["bot", 1, "eot"]}
    result = CliRunner().invoke(main, ["run", str(write_recipe(tmp_path, patch=patch))])
    assert result.exit_code == 0, result.output
    (folder,) = (tmp_path / "outputs" / "test").iterdir()
    tensor, index = nnpatch.load_activations(folder)
    cells = index.select("layer", "position").unique().height
    assert tensor.shape == (cells * 3 * 2, llama.hidden_size) and index.height == tensor.shape[0]
    pairs = {p.id: p for p in tiny_arithmetic()[:3]}
    for row in index.iter_rows(named=True):
        pair = pairs[row["pair_id"]]
        question = pair.clean_question if row["run"] == "clean" else pair.corrupted_question
        store: list = []
        module = site_module(llama, site, row["layer"])
        answer = llama.answer_ids("1")
        run_one(llama, question, answer, answer, [(module, recorder(store))])
        call, token = call_and_token(site, row["position"], llama.num_thoughts)
        torch.testing.assert_close(tensor[row["row"]], store[call][0, token], rtol=1e-5, atol=1e-5)


def test_the_record_command_exports_a_recipes_cells_and_resumes(tmp_path, monkeypatch):
    """`nnpatch record RECIPE` keeps the recipe's site, layers and positions, whatever its
    mode, and --resume continues it from the manifest's overrides."""
    import nnpatch.cli as cli

    def stop(total):
        def tick(n):
            raise KeyboardInterrupt

        return tick

    monkeypatch.setattr(cli, "_progress", stop)
    recipe = ROOT / "recipes" / "chained.toml"
    args = [
        "record",
        str(recipe),
        "--limit",
        "4",
        "--out",
        str(tmp_path),
        "--set",
        "patch.layers=[1]",
    ]
    assert CliRunner().invoke(main, args).exit_code == 130
    (folder,) = (tmp_path / "chained").iterdir()
    monkeypatch.undo()
    result = CliRunner().invoke(main, ["run", "--resume", str(folder)])
    assert result.exit_code == 0, result.output
    resolved = json.loads((folder / "resolved.json").read_text())
    assert resolved["patch"] == {
        "mode": "record",
        "site": "resid",
        "layers": [1],
        "positions": "all",
    }
    tensor, index = nnpatch.load_activations(folder)
    assert tensor.shape[0] == 3 * 4 * 2 and set(index["layer"]) == {1}


def test_an_export_over_the_limit_is_refused_before_anything_runs(tmp_path):
    """The size is computed from the plan, the pairs and the model before any forward."""
    recipe = write_recipe(tmp_path, patch={"mode": "record"}, run={"max_export": "10KiB"})
    result = CliRunner().invoke(main, ["run", str(recipe)])
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"Error: {recipe}: run.max_export: the export would be 36.0 KiB (144 activations of 64 "
        "float32 values), more than 10.0 KiB; raise run.max_export, or narrow patch.layers, "
        "patch.positions or data.limit"
    )
    assert not (tmp_path / "outputs").exists()


def test_sizes_read_as_researchers_write_them():
    from nnpatch.sizes import parse_size, shown

    assert parse_size("2GiB") == 2 * 1024**3 and parse_size("1.5GB") == 1_500_000_000
    assert parse_size(4096) == 4096 and parse_size(" 512 MiB ") == 512 * 1024**2
    for bad in ("lots", "0GiB", "-1", "2 GiBs", True, 0):
        with pytest.raises(ValueError):
            parse_size(bad)
    assert shown(3 * 1024**3) == "3.0 GiB" and shown(12) == "12 B"


# run as `python -c KILLED_EXPORT recipe marker`: `nnpatch record` whose export stops half
# written (the marker says so) and waits there to be killed
KILLED_EXPORT = """
import sys, time
from pathlib import Path
import safetensors.torch
real, marker = safetensors.torch.save_file, Path(sys.argv[2])
def half_then_wait(tensors, path, *args, **kwargs):
    real(tensors, path, *args, **kwargs)
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])
    marker.touch()
    time.sleep(600)
safetensors.torch.save_file = half_then_wait
from nnpatch.cli import main
sys.argv = ["nnpatch", "record", sys.argv[1]]
main()
"""


def test_a_record_run_killed_mid_export_resumes_to_the_same_tensors(tmp_path):
    """SIGKILL while activations.safetensors is half written, then --resume: the export and
    its index equal an uninterrupted run's, and no temporary file is left behind."""
    import os
    import signal
    import subprocess
    import sys
    import time

    patch = {"mode": "record", "layers": [0, 2], "positions": ["bot", 0, 2]}
    killed_dir, whole_dir = tmp_path / "killed", tmp_path / "whole"
    killed_dir.mkdir()
    whole_dir.mkdir()
    recipe = write_recipe(killed_dir, patch=patch)
    marker, said = tmp_path / "half-written", tmp_path / "stderr.txt"
    with said.open("wb") as stderr:  # a file, not a pipe: the progress bar never blocks it
        process = subprocess.Popen(
            [sys.executable, "-c", KILLED_EXPORT, str(recipe), str(marker)],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    deadline = time.monotonic() + 120
    try:
        while not marker.exists():
            assert process.poll() is None, said.read_text()
            assert time.monotonic() < deadline, "the export never started"
            time.sleep(0.05)
    finally:  # killed mid-export, or (the test failing) never left behind
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait()
    (folder,) = (killed_dir / "outputs" / "test").iterdir()
    assert not (folder / "activations.safetensors").exists()  # only its temporary, half
    result = CliRunner().invoke(main, ["run", "--resume", str(folder)])
    assert result.exit_code == 0, result.output
    assert json.loads((folder / "manifest.json").read_text())["status"] == "finished"
    assert not [p.name for p in folder.rglob("*.tmp")]
    whole = CliRunner().invoke(main, ["run", str(write_recipe(whole_dir, patch=patch))])
    assert whole.exit_code == 0, whole.output
    (reference,) = (whole_dir / "outputs" / "test").iterdir()
    tensor, index = nnpatch.load_activations(folder)
    expected, expected_index = nnpatch.load_activations(reference)
    assert torch.equal(tensor, expected)
    assert index.equals(expected_index)
