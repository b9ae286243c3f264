"""Do two versions of nnpatch write the same tables? Runs the four starter recipes with the
code of a git revision and with the working tree, and compares every table cell for cell.

    python benchmarks/same_tables.py REV            # REV against the working tree
    python benchmarks/same_tables.py REV_A REV_B

Prints one line per recipe and table; exits 1 if any differ. A refactor that changes no
behaviour prints no differences (same machine, same torch: bit-identical floats).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ["position", "layer", "chained", "attribution"]  # --recipes narrows them
TABLES = ["results", "baselines", "summary"]


def checkout(rev: str, into: Path) -> Path:
    """The tree of `rev` in a folder of its own ("" is the working tree)."""
    if not rev:
        return ROOT
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-f", str(into), rev], check=True)
    return into


def run(tree: Path, recipe: str, out: Path) -> Path:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    subprocess.run(
        [sys.executable, "-m", "nnpatch", "run", f"recipes/{recipe}.toml", "--out", str(out)],
        cwd=tree,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    (manifest,) = out.glob(f"{recipe}/*/manifest.json")
    return manifest.parent


def differences(a: Path, b: Path) -> list[str]:
    """Cell-for-cell differences of the tables; columns only the newer run has (a new
    statistic) are named, not counted as differences, and the shared ones compared."""
    found = []
    for table in TABLES:
        left, right = (pl.read_parquet(p / f"{table}.parquet") for p in (a, b))
        added = [c for c in right.columns if c not in left.columns]
        if added:
            print(f"  {table}: columns added: {', '.join(added)}")
            right = right.select(left.columns) if set(left.columns) <= set(right.columns) else right
        if left.columns != right.columns:
            found.append(f"{table}: columns {left.columns} vs {right.columns}")
        elif left.height != right.height:
            found.append(f"{table}: {left.height} vs {right.height} rows")
        elif not left.equals(right):
            cols = [c for c in left.columns if not left[c].equals(right[c])]
            found.append(
                f"{table}: columns differ: {', '.join(_gap(left, right, c) for c in cols)}"
            )
    return found


def _gap(left: pl.DataFrame, right: pl.DataFrame, column: str) -> str:
    """The column's name, with its largest absolute difference where it is numeric."""
    if not left[column].dtype.is_float():
        return column
    gap = (left[column] - right[column]).abs().fill_nan(0.0).max()
    return f"{column} (max |difference| {gap:.2g})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after", nargs="?", default="")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        trees = [
            checkout(rev, scratch / f"tree{i}") for i, rev in enumerate((args.before, args.after))
        ]
        failed = False
        for recipe in args.recipes.split(","):
            a, b = (run(tree, recipe, scratch / f"out{i}") for i, tree in enumerate(trees))
            found = differences(a, b)
            failed |= bool(found)
            print(
                f"{recipe:<12} "
                + ("identical: " + ", ".join(TABLES) if not found else "; ".join(found))
            )
        for tree in trees:
            if tree != ROOT:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "-f", str(tree)])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
