"""Run folders: `<output>/<recipe name>/<UTC timestamp>_<short id>/`, written atomically.

The manifest is written first with status `running`, and last with `finished` (or
`failed`, with the error), so a folder never claims to be finished unless it is.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

SCHEMA_VERSION = 1


def new_run_dir(output: Path, name: str) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = output / name / f"{stamp}_{secrets.token_hex(3)}"
    path.mkdir(parents=True)
    return path


def write_text(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json(path: Path, data: dict) -> None:
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def write_table(path: Path, frame: pl.DataFrame) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    if path.suffix == ".csv":
        frame.with_columns(pl.col(pl.List(pl.String)).list.join(",")).write_csv(tmp)
    else:
        frame.write_parquet(tmp)
    os.replace(tmp, path)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def git_hash() -> str | None:
    """The nnpatch source tree's commit, when it runs from a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
