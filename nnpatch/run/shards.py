"""Rows saved as batches finish, so an interrupted sweep resumes where it stopped.

Each batch of patched rows becomes `shards/rows-<first row>.npy` (float32, [rows, metrics]),
written to a temporary name and renamed, so a shard is either whole or absent. Batches are
fixed slices of the row list, so a resumed run recomputes exactly the batches that were
missing, with the same rows in each: its values equal an uninterrupted run's bit for bit.
A shard that is unreadable, misshapen or not at a batch boundary did not come from this run
as written: the resume stops and names it, rather than mix it in or quietly replace it.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np

from nnpatch.errors import RunFolderError
from nnpatch.run.folder import write_atomic

FOLDER = "shards"
NAME = re.compile(r"rows-(\d{9})\.npy")


class ShardStore:
    """The shards of one list of rows: `shards/`, or `shards/<group>/` when a run computes
    several lists (one per site, direction and source of a grid)."""

    def __init__(self, run_dir: Path, group: str | None = None) -> None:
        self.run_dir = run_dir
        self.folder = run_dir / FOLDER if group is None else run_dir / FOLDER / group

    def group(self, name: str | None) -> ShardStore:
        return ShardStore(self.run_dir, name)

    def load_all(self, width: int) -> None:
        """Read every shard of every group: a damaged one stops here, before anything runs."""
        self.load(width)
        if self.folder.is_dir():
            for sub in sorted(p for p in self.folder.iterdir() if p.is_dir()):
                self.group(sub.name).load(width)

    def load(self, width: int) -> dict[int, np.ndarray]:
        """First row → values of every shard already written, each [rows, width] float32."""
        if not self.folder.is_dir():
            return {}
        found = {}
        for file in sorted(self.folder.iterdir()):
            if file.name.startswith(".") or file.is_dir():  # a temporary, or a group's folder
                continue
            match = NAME.fullmatch(file.name)
            if match is None:
                raise self._error(file, "is not a shard nnpatch writes")
            try:
                values = np.load(file, allow_pickle=False)
            except (ValueError, OSError, EOFError) as err:
                raise self._error(file, f"is truncated or corrupt ({type(err).__name__})") from None
            if values.ndim != 2 or values.shape[1] != width or values.dtype != np.float32:
                raise self._error(file, f"holds {values.dtype} {values.shape}, not [rows, {width}]")
            found[int(match.group(1))] = values
        return found

    def check_batches(self, saved: dict[int, np.ndarray], batches: dict[int, int]) -> None:
        """Every saved shard starts at one of this run's batches and has its row count."""
        for first, values in saved.items():
            file = self.folder / f"rows-{first:09d}.npy"
            if first not in batches:
                raise self._error(file, f"starts at row {first}, where no batch of this run does")
            if values.shape[0] != batches[first]:
                raise self._error(
                    file, f"holds {values.shape[0]} rows; its batch has {batches[first]}"
                )

    @staticmethod
    def _error(file: Path, problem: str) -> RunFolderError:
        return RunFolderError(
            f"{file}: {problem}; it is not a whole shard of this run: delete it and resume "
            "again (its rows are recomputed)"
        )

    def write(self, first_row: int, values: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)

        def save(tmp: Path) -> None:  # on disk before the rename makes it a shard
            with open(tmp, "wb") as handle:
                np.save(handle, values, allow_pickle=False)
                handle.flush()
                os.fsync(handle.fileno())

        write_atomic(self.folder / f"rows-{first_row:09d}.npy", save)

    def remove(self) -> None:
        shutil.rmtree(self.run_dir / FOLDER, ignore_errors=True)
