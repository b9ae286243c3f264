"""Named presets: models built in memory or from the package, with no download.

`tiny-random-codi` (Llama family) and `tiny-random-codi-gpt2` are random-weight CODI models
for tests and smoke runs, `tiny-random-gpt2` and `tiny-random-llama` plain causal LMs; their
weights are seeded, so every build is identical. `toy-codi` is the embedded trained model.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from nnpatch.models.base import ThoughtModel
from nnpatch.models.kinds.codi import load_codi_files
from nnpatch.models.tiny import tiny_random_codi, tiny_random_lm

TOY_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "toy-codi"


def toy_codi(folder: str | Path | None = None, num_thoughts: int | None = None) -> ThoughtModel:
    """The embedded trained model (nnpatch/weights/toy-codi), through the CODI loader; it
    thinks as many steps as it was trained with (training.json) unless told otherwise."""
    path = str(folder or TOY_WEIGHTS)
    card = Path(path) / "training.json"
    if num_thoughts is None:
        num_thoughts = json.loads(card.read_text())["num_thoughts"] if card.exists() else 3
    model = load_codi_files(path, path, num_thoughts=num_thoughts)
    model.name = "toy-codi"
    return model


def _plain(family: str):
    def build(answer_prefix: str | None = None):
        return tiny_random_lm(family, answer_prefix)

    return build


PLAIN_PRESETS = ("tiny-random-gpt2", "tiny-random-llama")
PRESETS: dict[str, Callable[..., ThoughtModel]] = {
    "tiny-random-codi": lambda **kw: tiny_random_codi("llama", **kw),
    "tiny-random-codi-gpt2": lambda **kw: tiny_random_codi("gpt2", **kw),
    "toy-codi": lambda **kw: toy_codi(**kw),  # trained: thoughts carry toy arithmetic
    "tiny-random-gpt2": _plain("gpt2"),  # plain causal LMs: patched over a marked text span
    "tiny-random-llama": _plain("llama"),
}
