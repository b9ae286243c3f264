"""Rows saved as batches finish, so an interrupted sweep resumes where it stopped.

Each batch of patched rows becomes `shards/rows-<first row>.npy` (float32, [rows, metrics]),
written to a temporary name and renamed, so a shard is either whole or absent. Batches are
fixed slices of the row list, so a resumed run recomputes exactly the batches that were
missing, with the same rows in each: its values equal an uninterrupted run's bit for bit.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

FOLDER = "shards"


class ShardStore:
    def __init__(self, run_dir: Path) -> None:
        self.folder = run_dir / FOLDER

    def load(self) -> dict[int, np.ndarray]:
        """First row → values of every shard already written."""
        if not self.folder.is_dir():
            return {}
        found = {}
        for file in sorted(self.folder.glob("rows-*.npy")):
            found[int(file.stem.removeprefix("rows-"))] = np.load(file, allow_pickle=False)
        return found

    def write(self, first_row: int, values: np.ndarray) -> None:
        self.folder.mkdir(exist_ok=True)
        final = self.folder / f"rows-{first_row:09d}.npy"
        tmp = self.folder / f".{final.name}.tmp"
        with open(tmp, "wb") as handle:
            np.save(handle, values, allow_pickle=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
