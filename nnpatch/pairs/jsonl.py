"""JSON Lines, read and written the way the format means: one object per "\n"-ended line."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from nnpatch.errors import PairsError


def jsonl_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of the non-blank lines of JSONL text. Lines end at "\\n" only:
    JSON strings may hold U+2028, U+2029 and other characters `str.splitlines` splits on."""
    return [(n, line) for n, line in enumerate(text.split("\n"), start=1) if line.strip()]


def write_pairs_jsonl(records: list[dict], path: str | Path) -> None:
    """One JSON object per line; written to a temp file beside `path` then renamed, so a
    reader never sees a half-written file."""
    path = Path(path)
    above = next((p for p in path.parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise PairsError(f"--out {path}: {above} is a file, not a folder; choose another --out")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
