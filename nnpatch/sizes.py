"""Sizes in bytes, written as a researcher writes them: 2GiB, 512MiB, 1.5GB, or a plain number."""

from __future__ import annotations

import re

UNITS = {
    "": 1,
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "KIB": 1024,
    "MIB": 1024**2,
    "GIB": 1024**3,
    "TIB": 1024**4,
}
SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")


def parse_size(value: object) -> int:
    """Bytes from an int or a text like "2GiB"; ValueError with what is accepted otherwise."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = SIZE.fullmatch(value) if isinstance(value, str) else None
    if match is None or match.group(2).upper() not in UNITS:
        raise ValueError("write a size such as 2GiB, 512MiB, 1.5GB or a number of bytes")
    size = int(float(match.group(1)) * UNITS[match.group(2).upper()])
    if size < 1:  # "0", "0.4B": less than one byte
        raise ValueError("write a size such as 2GiB, 512MiB, 1.5GB or a number of bytes")
    return size


def shown(size: int) -> str:
    """A byte count for a message: 3.2 GiB, 512.0 MiB, 12 B."""
    for unit, scale in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"
