"""Model kinds, one module per family (see `kinds.base.Kind`): `KINDS[name]` loads, shapes
and recognises its releases."""

from __future__ import annotations

from pathlib import Path

from nnpatch.models.kinds import causal_lm, coconut, codi, colar, pccot
from nnpatch.models.kinds.base import Kind

KINDS: dict[str, Kind] = {
    k.name: k for k in (codi.KIND, coconut.KIND, pccot.KIND, colar.KIND, causal_lm.KIND)
}


def recognise(folder: Path) -> list[str]:
    """The kinds whose release files `folder` holds (one: unambiguous)."""
    return [name for name, kind in KINDS.items() if kind.recognise(folder)]


__all__ = ["KINDS", "Kind", "recognise"]
