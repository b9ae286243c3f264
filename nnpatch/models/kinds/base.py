"""What a model family is to the rest of nnpatch: a `Kind`, one module per family.

A kind knows its release files (and how to recognise them), its key accounting, its tokens,
its question preparation, its loop and what a position means; it hands the engine a
`PlacedModule` whose cells name module calls. The engine, run and report ask the model for
cells and never name a kind. Adding a family is one module under `nnpatch/models/kinds/`,
its tests and one registry entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nnpatch.models.base import ModelShape, PlacedModule


@dataclass(frozen=True)
class Kind:
    name: str  # `model.kind` in a recipe
    about: str  # one line: which releases, whose loop
    fields: tuple[str, ...]  # the [model] fields that mean something for this kind
    load: Callable[..., PlacedModule]  # a validated [model] section → the model, weights in
    # layers and positions from the base config alone (validate runs without weights);
    # None: positions are known only once the model reads the pairs
    shape: Callable[..., ModelShape] | None
    # whether a folder holds this kind's release (its file names and key prefixes); a
    # folder two kinds claim asks for model.kind
    recognise: Callable[[Path], bool] = lambda folder: False
    hosted: bool = False  # NDIF can run it (a plain HF model, no custom loop)
