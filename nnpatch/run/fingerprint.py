"""Content hashes of what a run's rows depend on: the recipe, the model and the pairs.

A resumed run must recompute missing rows under exactly the conditions of the rows it keeps,
so `--resume` compares these with the ones the manifest recorded.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

import torch

from nnpatch.models import ThoughtModel
from nnpatch.pairs import Pair
from nnpatch.recipe import Recipe

CHUNK = 1 << 22
# [model] fields added after runs were first fingerprinted
UNSET_ADDED_LATER = ("eos_before_thought", "prompt", "projection", "thought_tokens", "thinking")


def _sha(data: object) -> str:
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def recipe_hash(recipe: Recipe) -> str:
    """The resolved recipe, overrides applied, less what never changes a row: the output
    folder (moving runs is fine), W&B's settings, the memory budget (the batch a run
    started with is recorded and kept) and, when nothing is decoded, the answer tokens'
    bound. `batch_size = "auto"` hashes as 64, the default
    before it, so runs started then still resume."""
    dumped = recipe.model_dump(mode="json")
    for key in ("output", "wandb", "max_memory", "remote_timeout"):
        dumped["run"].pop(key, None)
    for key in UNSET_ADDED_LATER:  # unset, they hash as recipes did before they existed
        if dumped["model"].get(key) is None:
            dumped["model"].pop(key, None)
    if not recipe.metrics.decode_tokens:  # no decoded answer: its bound changes no row
        dumped["metrics"].pop("answer_tokens", None)
    if dumped["run"].get("batch_size") == "auto":
        dumped["run"]["batch_size"] = 64
    return _sha(dumped)


def pairs_hash(pairs: list[Pair]) -> str:
    """Pairs without steps hash as they did before pairs could carry steps."""
    return _sha([{k: v for k, v in asdict(p).items() if v != ()} for p in pairs])


@torch.no_grad()
def model_hash(model: ThoughtModel) -> str:
    """Name, dtype and per-tensor sums of every weight, computed where the weights live.

    Two float64 sums per tensor (plain and position-weighted) differ for any checkpoint or
    fine-tune a researcher would swap in, without copying gigabytes to the CPU.
    """
    parts = [model.name, str(model.dtype)]
    if next(model.module.parameters()).is_meta:
        return _sha(parts)  # weights on NDIF: the hosted repo id is the identity
    for name, tensor in model.module.state_dict().items():
        flat = tensor.detach().reshape(-1)
        plain = weighted = 0.0
        for start in range(0, flat.numel(), CHUNK):  # bounded float64 copies
            chunk = flat[start : start + CHUNK].double()
            index = torch.arange(start, start + chunk.numel(), device=chunk.device)
            plain += chunk.sum().item()
            weighted += (chunk * (index % 97 + 1)).sum().item()
        parts.append(f"{name}:{tuple(tensor.shape)}:{plain:.10e}:{weighted:.10e}")
    return _sha(parts)


def fingerprint(recipe: Recipe, model: ThoughtModel, pairs: list[Pair]) -> dict[str, str]:
    return {"recipe": recipe_hash(recipe), "model": model_hash(model), "pairs": pairs_hash(pairs)}
