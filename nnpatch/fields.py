"""The recipe's building blocks: strict scalars, positions, and the [patch] fields every
analysis mode shares. Each mode declares its own [patch] section from these
(`nnpatch.engine.modes`); `nnpatch.recipe` puts the sections together."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Strict

# strict scalars: `num_thoughts = true` or `batch_size = 2.0` is an error, not 1 or 2
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]  # finite: every Section refuses nan and inf
# numpy and torch take non-negative seeds only
Seed = Annotated[Int, Field(ge=0)]
# text that names something (a file, a folder, a hub id, a W&B project): never empty;
# `format` tells tools that read the schema (the tests' fuzzer) what the text is
Text = Annotated[str, Field(min_length=1)]
PathText = Annotated[str, Field(min_length=1, json_schema_extra={"format": "path"})]
# a latent slot at an earlier iteration of a parallel loop (PCCoT): "slot@iteration"
SlotAtIteration = Annotated[str, Field(pattern=r"^\d+@\d+$")]
Position = Int | Literal["bot", "eot"] | SlotAtIteration


def distinct(what: str) -> AfterValidator:
    """A list whose items are each listed once (a repeat would count its rows twice)."""

    def check(values: list) -> list:
        if len({str(v) for v in values}) != len(values):
            raise ValueError(f"{what} is listed twice; list each once")
        return values

    return AfterValidator(check)


PositionList = Annotated[
    list[Annotated[Position, Field(union_mode="left_to_right")]], distinct("a position")
]
Positions = Literal["all"] | PositionList


class Section(BaseModel):
    """A recipe table: unknown keys are errors, and nothing changes once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


Layer = Annotated[Int, Field(ge=0)]
Layers = Literal["all"] | Annotated[list[Layer], Field(min_length=1), distinct("a layer")]


def _ascending(values: list[int]) -> list[int]:
    if any(later == earlier for earlier, later in zip(values, values[1:], strict=False)):
        raise ValueError("a layer is listed twice; list each once")
    if any(later < earlier for earlier, later in zip(values, values[1:], strict=False)):
        raise ValueError(
            "the layers are not in ascending order; write a window from its first layer to "
            f"its last, e.g. {sorted(set(values))}"
        )
    return values


# a window of layers, e.g. [0, 1, 2]: ascending, so what it covers is what it says
Window = Annotated[list[Layer], Field(min_length=1), AfterValidator(_ascending)]


class PatchCommon(Section):
    """The [patch] fields of the modes that copy activations: where, and which way."""

    # resid: a decoder layer's output; attn / mlp: a sub-block's; thought: the latent fed back
    site: Literal["resid", "attn", "mlp", "thought"] = "resid"
    # the layers read or patched: all, or a list such as [0, 3]
    layers: Layers = "all"
    # thoughts 0..K-1 (plain LMs: span token indices); a list may name bot and eot
    positions: Positions = "all"
    # denoise: clean activations into the corrupted run; noise: corrupted into the clean run
    direction: Literal["denoise", "noise"] = "denoise"
    # noise floor: the same cells patched from a mismatched pair (seeded derangement)
    control: Literal["random-donor", "none"] = "random-donor"
