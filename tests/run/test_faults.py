"""Real faults, not simulated ones: a disk that fills up mid-sweep, a read-only output folder,
SIGTERM from another process, a report that cannot be written. Each ends in a true status,
one line, and a run that resumes to the rows an unfaulted run gives."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner
from helpers import write_recipe

from nnpatch.cli import main
from nnpatch.run.execute import execute
from nnpatch.run.prepare import prepare

SWEEP = {
    "patch": {"mode": "single", "layers": [0, 1], "positions": [0, 1, 2]},
    "data": {"limit": 4},
    "run": {"batch_size": 1},
}


@contextmanager
def tmpfs(folder: Path, options: str):
    """A tmpfs mounted at `folder` (skips the test where mounting is not allowed)."""
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _run_dir(output: Path) -> Path:
    (manifest,) = output.glob("*/*/manifest.json")
    return manifest.parent


def _status(run_dir: Path) -> str:
    return json.loads((run_dir / "manifest.json").read_text())["status"]


def test_a_disk_that_fills_mid_sweep_fails_truly_and_resumes(tmp_path):
    """A 64 KiB disk fills while shards are written: the run says `failed` (the manifest is
    rewritten in place), prints one line naming the file and how to continue; with space
    freed, --resume finishes with the rows of a run that never faulted."""
    recipe = write_recipe(tmp_path, name="full", **SWEEP)
    expected = pl.read_parquet(execute(prepare(recipe)).path / "results.parquet")
    with tmpfs(tmp_path / "disk", "size=64k") as disk:
        result = CliRunner().invoke(main, ["run", str(recipe), "--out", str(disk)])
        run_dir = _run_dir(disk)
        line = result.output.strip().splitlines()[-1]
        assert result.exit_code == 2, result.output
        assert line.startswith(f"Error: {run_dir}/") and "No space left on device" in line
        assert line.endswith(f"continue with: nnpatch run --resume {run_dir}")
        manifest = json.loads((run_dir / "manifest.json").read_text())
        assert manifest["status"] == "failed" and "No space left" in manifest["error"]
        assert not (run_dir / "results.parquet").exists()
        subprocess.run(["mount", "-o", "remount,size=16m", str(disk)], check=True)
        result = CliRunner().invoke(main, ["run", "--resume", str(run_dir)])
        assert result.exit_code == 0, result.output
        assert _status(run_dir) == "finished"
        assert pl.read_parquet(run_dir / "results.parquet").equals(expected)


def test_a_read_only_output_is_refused_before_anything_runs(tmp_path):
    """--out on a read-only file system: one line naming run.output, exit 2, nothing made."""
    recipe = write_recipe(tmp_path, name="ro")
    with tmpfs(tmp_path / "ro", "size=1m,ro") as disk:
        result = CliRunner().invoke(main, ["run", str(recipe), "--out", str(disk / "out")])
        assert result.exit_code == 2
        assert result.output.strip() == (
            f"Error: {recipe}: run.output: cannot write to {disk}/out (Read-only file system); "
            "point run.output (or --out) at a folder you can write"
        )
        assert not any(disk.iterdir())


def test_sigterm_from_another_process_marks_the_run_interrupted(tmp_path):
    """`kill` (SIGTERM) mid-sweep: exit 143, one line with the resume command, status
    interrupted; the resumed run equals an uninterrupted one."""
    recipe = write_recipe(tmp_path, name="term", **SWEEP)
    process = subprocess.Popen(
        [sys.executable, "-m", "nnpatch", "run", str(recipe)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 300
    while not list((tmp_path / "outputs").glob("*/*/shards/rows-*.npy")):
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 143
    run_dir = _run_dir(tmp_path / "outputs")
    last = process.stderr.read().decode().strip().splitlines()[-1]
    assert last == f"Error: interrupted by SIGTERM; continue with: nnpatch run --resume {run_dir}"
    assert _status(run_dir) == "interrupted"
    result = CliRunner().invoke(main, ["run", "--resume", str(run_dir)])
    assert result.exit_code == 0 and _status(run_dir) == "finished", result.output
    whole = execute(prepare(recipe)).path
    got, want = (pl.read_parquet(p / "results.parquet") for p in (run_dir, whole))
    assert got.equals(want)


def test_a_report_that_cannot_be_written_leaves_the_finished_tables(tmp_path, monkeypatch):
    """The disk fills while report.html is written: the tables stand, the status is
    `finished` with the report's error recorded, and one warning says how to draw it."""
    import errno

    from nnpatch.report import page as report

    real = report.write_text

    def full(path, text):
        if Path(path).name == "report.html":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, text)

    monkeypatch.setattr(report, "write_text", full)
    recipe = write_recipe(tmp_path, name="rep", run={"report": "full"})
    result = CliRunner().invoke(main, ["run", str(recipe)])
    assert result.exit_code == 0, result.output
    run_dir = _run_dir(tmp_path / "outputs")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "finished" and (run_dir / "results.parquet").is_file()
    assert "No space left on device" in manifest["report"]["error"]
    assert result.output.strip().splitlines()[-1].startswith("warning: the report was not written")
    monkeypatch.undo()
    redo = CliRunner().invoke(main, ["report", str(run_dir)])
    assert redo.exit_code == 0 and (run_dir / "report.html").is_file()
