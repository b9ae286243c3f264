"""The cells a recipe names, checked against the model, and the rows they make.

Each `PatchSpec` is one patched row per pair: a layer (None for site `thought`) and the
positions patched together at that layer during one recurrent forward. Modes group the
selected positions into specs (`nnpatch.engine.modes`); the checks here are theirs to share.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nnpatch.errors import RecipeError
from nnpatch.models.base import ModelShape


@dataclass(frozen=True)
class PatchSpec:
    layer: int | None
    positions: tuple[str, ...]  # labels in sequence order: "bot", "0".."K-1", "eot"
    head: int | tuple[int, ...] | None = None  # site `head`: the head (or heads) patched


def check_site(patch, model: ModelShape, source: str | Path) -> None:
    if patch.site not in model.sites:
        raise RecipeError(
            source,
            "patch.site",
            f"{model.name} has no site {patch.site!r}",
            f"use one of {', '.join(model.sites)}",
        )


def selected_layers(patch, model: ModelShape, source: str | Path) -> list[int | None]:
    """The layers a [patch] section names; site `thought` has none (one `None` layer)."""
    layers = patch.layers
    if patch.site == "thought":
        if layers != "all":
            raise RecipeError(
                source,
                "patch.layers",
                "site 'thought' is the thought input embedding and has no layers",
                "remove patch.layers",
            )
        return [None]
    if layers == "all":
        return list(range(model.num_layers))
    top = model.num_layers - 1
    for layer in layers:
        if layer > top:
            raise RecipeError(
                source,
                "patch.layers",
                f"layer {layer} is out of range for {model.name} (layers 0..{top})",
                "use layers in range or 'all'",
            )
    return list(layers)  # each listed once: checked where Layers is declared


def selected_positions(
    positions: object, model: ModelShape, source: str | Path, field: str, site: str
) -> list[str]:
    """Position labels in sequence order; thought indices are checked against K, and site
    `thought` takes thought positions only."""
    order = model.position_labels()
    if positions == "all":
        return [p for p in order if p.isdigit()]
    top = model.num_thoughts - 1
    kind = "thought" if model.named_positions else "span token"
    labels = []
    for position in positions:  # type: ignore[attr-defined]
        if isinstance(position, str) and position not in order:
            raise RecipeError(
                source,
                field,
                f"{model.name} has no position {position!r}",
                f"use {model.describe_positions()}",
            )
        if isinstance(position, int) and top < 0:
            raise RecipeError(
                source,
                field,
                f"thought position {position} is out of range: {model.name} thinks no "
                "thoughts here (thinking = 'direct')",
                "use 'bot' or 'eot'",
            )
        if isinstance(position, int) and not 0 <= position <= top:
            named = model.named_positions and site != "thought"  # thought sites: thoughts only
            raise RecipeError(
                source,
                field,
                f"{kind} position {position} is out of range for {model.name} ({kind}s 0..{top})",
                f"use 0..{top}" + (", 'bot' or 'eot'" if named else ""),
            )
        labels.append(str(position))
    if not labels:
        raise RecipeError(source, field, "no positions listed", "list at least one, or 'all'")
    if len(set(labels)) != len(labels):
        raise RecipeError(source, field, "a position is listed twice", "list each once")
    if site == "thought" and not all(model.thought_input(label) for label in labels):
        named = next(label for label in labels if not model.thought_input(label))
        raise RecipeError(
            source,
            field,
            f"site 'thought' has only thought positions, not {named!r}",
            "drop bot/eot or use site 'resid'",
        )
    return sorted(labels, key=order.index)


def by_first_position(rows: list, labels: list[str]) -> list:
    """Rows (spec, ...) in the order of their earliest patched position, stable otherwise:
    a batch of rows patched from the same step on shares the forward up to that step."""
    rank = {label: i for i, label in enumerate(labels)}
    return sorted(rows, key=lambda row: min(rank[p] for p in row[0].positions))
