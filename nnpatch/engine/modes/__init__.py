"""The analysis modes, by the recipe's `patch.mode`: each family is one module (see
`base.Mode` for what a mode is), and this registry is the only place that lists them."""

from __future__ import annotations

from typing import get_args

from nnpatch.engine.metrics import DECODED
from nnpatch.engine.modes.attention import Attention
from nnpatch.engine.modes.attribution import Attribution
from nnpatch.engine.modes.base import Computed, Mode, Sweep
from nnpatch.engine.modes.knockout import Knockout
from nnpatch.engine.modes.lens import Lens
from nnpatch.engine.modes.mediation import Mediation
from nnpatch.engine.modes.patching import Patching
from nnpatch.engine.modes.record import Record
from nnpatch.engine.modes.subsets import Subsets
from nnpatch.errors import RecipeError

FAMILIES: tuple[Mode, ...] = (
    Patching(),
    Subsets(),
    Mediation(),
    Knockout(),
    Attribution(),
    Lens(),
    Attention(),
    Record(),
)

MODES: dict[str, Mode] = {
    get_args(section.model_fields["mode"].annotation)[0]: family
    for family in FAMILIES
    for section in family.sections
}
SECTIONS = tuple(section for family in FAMILIES for section in family.sections)


def mode_for(name: str) -> Mode:
    return MODES[name]


def build_plan(recipe, shape, source="<recipe>"):
    """The recipe's rows per pair, as its mode plans them; a mode the model's loop cannot
    carry is refused in one line, with the model's reason."""
    name = recipe.patch.mode
    refused = {mode_for(mode): why for mode, why in shape.refused_modes}
    if mode_for(name) in refused:
        usable = [m for m, family in MODES.items() if family not in refused]
        raise RecipeError(
            source,
            "patch.mode",
            f"{name} does not apply to {shape.name}: {refused[mode_for(name)]}",
            f"use one of {', '.join(usable)}",
        )
    why = mode_for(name).decode_refusal
    decoded = [metric for metric in recipe.metrics.names if metric in DECODED]
    if why is not None and decoded:
        raise RecipeError(
            source,
            "metrics.names",
            f"{name} cannot measure {', '.join(decoded)}: {why}",
            "drop them, or run a patching mode (single, layer, sets, ...) for decoded answers",
        )
    return mode_for(name).plan(recipe.patch, shape, source)


__all__ = ["FAMILIES", "MODES", "SECTIONS", "Computed", "Mode", "Sweep", "build_plan", "mode_for"]
