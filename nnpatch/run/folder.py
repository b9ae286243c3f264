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
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path: Path, data: bytes) -> None:
    write_atomic(path, lambda tmp: tmp.write_bytes(data))


def write_atomic(path: Path, write) -> None:
    """`write(tmp)`, then rename over `path`; a failed write leaves no temporary behind."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            err.filename = str(path)  # the file the user knows, not its temporary
        raise


def write_json(path: Path, data: dict) -> None:
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def write_manifest(path: Path, data: dict) -> None:
    """The manifest, atomically; when the disk is too full for a new file, over the old one in
    place (it fits in the blocks the old one holds), so a failing run can still say so."""
    text = json.dumps(data, indent=2, default=str) + "\n"
    try:
        write_text(path, text)
    except OSError:
        if not path.is_file():
            raise
        with open(path, "r+", encoding="utf-8") as handle:
            handle.write(text)
            handle.truncate()


def write_table(path: Path, frame: pl.DataFrame) -> None:
    if path.suffix == ".csv":
        flat = frame.with_columns(pl.col(pl.List(pl.String)).list.join(","))
        flat = flat.with_columns(pl.col(pl.List(pl.Int64)).cast(pl.List(pl.String)).list.join(","))
        write_atomic(path, flat.write_csv)
    else:
        write_atomic(path, frame.write_parquet)


def write_tensors(path: Path, tensors: dict) -> None:
    """Named tensors as one safetensors file (contiguous, on the CPU), written atomically."""
    from safetensors.torch import save_file

    flat = {name: tensor.detach().contiguous().cpu() for name, tensor in tensors.items()}
    write_atomic(path, lambda tmp: save_file(flat, str(tmp)))


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
