"""The recipe's building blocks: strict scalars, positions, and the [patch] fields every
analysis mode shares. Each mode declares its own [patch] section from these
(`nnpatch.engine.modes`); `nnpatch.recipe` puts the sections together."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict

# strict scalars: `num_thoughts = true` or `batch_size = 2.0` is an error, not 1 or 2
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]
Position = Int | Literal["bot", "eot"]
PositionList = list[Annotated[Position, Field(union_mode="left_to_right")]]
Positions = Literal["all"] | PositionList


class Section(BaseModel):
    """A recipe table: unknown keys are errors, and nothing changes once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


Layers = Literal["all"] | Annotated[list[Annotated[Int, Field(ge=0)]], Field(min_length=1)]


class PatchCommon(Section):
    """The [patch] fields of the modes that copy activations: where, and which way."""

    site: Literal["resid", "attn", "mlp", "thought"] = "resid"
    layers: Layers = "all"
    positions: Positions = "all"
    direction: Literal["denoise", "noise"] = "denoise"
    # noise floor: the same cells patched from a mismatched pair (seeded derangement)
    control: Literal["random-donor", "none"] = "random-donor"
