"""Continuous-thought models: build one from a recipe's [model] section."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from nnpatch.errors import ModelError, RecipeError
from nnpatch.models.base import ModelShape, ThoughtModel
from nnpatch.models.causal_lm import load_remote_causal_lm
from nnpatch.models.kinds import KINDS
from nnpatch.models.presets import PLAIN_PRESETS, PRESETS

if TYPE_CHECKING:
    from nnpatch.recipe import ModelSection

DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,  # slow; for exact comparisons with other code
}


def build_model(
    section: ModelSection, source: str | Path = "<recipe>", on_ndif: bool = False
) -> ThoughtModel:
    """The recipe's model on its device and dtype; a bad section is a one-line error.

    `on_ndif`: a hosted causal LM whose weights stay on NDIF (meta here; see nnpatch.run.remote).
    """
    if on_ndif:
        try:
            return load_remote_causal_lm(section)
        except ModelError as err:
            raise ModelError(f"{source}: {err}") from None
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # nnpatch says what it loads, in one line
    device = _device(section.device, source)
    if section.preset is not None:
        model = _preset(section, source)
    else:  # a validated section names a preset or a kind
        if section.kind not in KINDS:
            raise RecipeError(
                source,
                "model.kind",
                f"{section.kind!r} is not supported yet",
                f"use one of {', '.join(KINDS)}",
            )
        try:
            model = KINDS[section.kind].load(section)
        except ModelError as err:
            raise ModelError(f"{source}: {err}") from None
    model.module.to(device=device, dtype=DTYPES[section.dtype])
    return model


def model_shape(section: ModelSection, source: str | Path = "<recipe>") -> ModelShape:
    """Layers and positions from a preset or a checkpoint's base config, without weights."""
    if section.kind is None:
        return _preset(section, source).shape
    kind = KINDS[section.kind]
    if kind.shape is None:
        raise ModelError(
            f"{source}: a {kind.name}'s positions are known once it reads the pairs; "
            "nnpatch inspect or run checks them"
        )
    try:
        return kind.shape(section)
    except ModelError as err:
        raise ModelError(f"{source}: {err}") from None


def _preset(section: ModelSection, source: str | Path) -> ThoughtModel:
    if section.preset not in PRESETS:
        close = difflib.get_close_matches(section.preset, list(PRESETS), n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(PRESETS)}"
        raise RecipeError(source, "model.preset", f"unknown preset {section.preset!r}", hint)
    plain = section.preset in PLAIN_PRESETS
    wrong = "num_thoughts" if plain else "answer_prefix"
    if getattr(section, wrong) is not None:
        what = "a plain causal LM (no thoughts)" if plain else "a CODI model"
        raise RecipeError(
            source, f"model.{wrong}", f"{section.preset} is {what}; it has no {wrong}", "remove it"
        )
    if plain:
        prefix = section.answer_prefix
        return PRESETS[section.preset](**({} if prefix is None else {"answer_prefix": prefix}))
    kwargs = {} if section.num_thoughts is None else {"num_thoughts": section.num_thoughts}
    return PRESETS[section.preset](**kwargs)


def _device(name: str, source: str | Path) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise RecipeError(
            source, "model.device", f"unknown device {name!r}", "use 'cpu', 'cuda' or 'cuda:N'"
        ) from None
    if device.type not in ("cpu", "cuda"):
        raise RecipeError(
            source,
            "model.device",
            f"{name!r} is not a device nnpatch runs on",
            "use 'cpu', 'cuda' or 'cuda:N'",
        )
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RecipeError(
            source,
            "model.device",
            "CUDA is not available on this machine",
            "use --set model.device=cpu",
        )
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise RecipeError(
            source,
            "model.device",
            f"there is no {name}",
            f"this machine has {torch.cuda.device_count()} CUDA device(s)",
        )
    return device


__all__ = ["ModelShape", "ThoughtModel", "build_model", "model_shape"]
