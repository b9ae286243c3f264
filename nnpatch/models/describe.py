"""`nnpatch inspect`: what a recipe's model is, as nnpatch will run it."""

from __future__ import annotations

from pathlib import Path

import torch

from nnpatch.errors import ModelError
from nnpatch.models import build_model
from nnpatch.models.base import SITES
from nnpatch.recipe import Recipe


def describe(recipe: Recipe, source: str | Path) -> str:
    """A few lines on the model; a model that cannot be loaded here says what is missing."""
    section = recipe.model
    what = section.preset or f"{section.kind} checkpoint {section.checkpoint} (base {section.base})"
    notes = []
    if section.device.startswith("cuda") and not torch.cuda.is_available():
        notes.append(
            f"note: model.device is {section.device!r} but CUDA is not available here; "
            "inspecting on the CPU"
        )
        section = section.model_copy(update={"device": "cpu"})
    missing = _unavailable(section)
    if missing:
        raise ModelError(f"{source}: cannot load the model ({what}): " + " | ".join(missing))
    model = build_model(section, source)  # its errors name the recipe and the field
    module = model.module
    config = getattr(module, "lm", module).config
    params = sum(p.numel() for p in module.parameters())
    lines = [
        *notes,
        f"model {model.name}: {config.model_type}, {model.num_layers} layers, "
        f"hidden {config.hidden_size}, {params / 1e6:.2f}M parameters, {model.dtype}, "
        f"{model.device}",
    ]
    if hasattr(model, "count"):  # latents decided per question (CoLaR): from the pairs
        lines.append(_latent_counts(model, recipe, source))
    if hasattr(module, "bot_id"):
        lines += [
            f"thoughts: {model.num_thoughts}; positions: {', '.join(model.position_labels())}",
            f"sites: {', '.join(SITES)} (thought = the projection's output, no layers)",
            f"ids: bot {module.bot_id}, eot {module.eot_id}, pad {module.pad_id}, "
            f"eos {model.eos_id}; never decoded: {', '.join(map(str, module.marker_ids))}",
        ]
    else:
        lines += [
            f"sites: {', '.join(model.sites)}; positions: token indices of the span marked "
            f"{recipe.data.span_markers[0]} ... {recipe.data.span_markers[1]} in each prompt",
            f"ids: pad {model.pad_id}, eos {model.eos_id}",
        ]
    lines.append(f"answers read after {model.answer_prefix!r}")
    if model.key_report is not None:
        lines.append("checkpoint keys:")
        lines += [f"  {line}" for line in model.key_report.lines()]
    return "\n".join(lines)


def _latent_counts(model, recipe: Recipe, source: str | Path) -> str:
    """How many latents the recipe's questions think, once the model has read them."""
    from nnpatch.pairs.loaders import load_pair_set

    data = recipe.data
    pairs, _ = load_pair_set(data.pairs, Path(source).parent, data.limit, data.source, data.seed)
    model.bind_pairs(pairs)
    counts = model.count([q for p in pairs for q in (p.clean_question, p.corrupted_question)])
    spans = [model.span_of(p) for p in pairs]
    return (
        f"latents per question: {min(counts)} to {max(counts)} over the recipe's "
        f"{len(pairs)} pairs; both questions of a pair share {min(spans)} to {max(spans)}"
    )


def _unavailable(section) -> list[str]:
    """Every checkpoint folder of the recipe that cannot be found here, each with its fix."""
    if section.kind is None:
        return []
    from nnpatch.models.hub import resolve_folder

    missing = []
    needed = [("model.checkpoint", section.checkpoint, ["*.safetensors", "*.bin", "checkpoint_*"])]
    if section.kind != "causal_lm" or section.base:  # a causal_lm's base is optional
        needed.insert(0, ("model.base", section.base, ["config.json", "tokenizer*"]))
    for field, ref, patterns in needed:
        if not ref:
            missing.append(f"{field}: not set")
            continue
        try:
            resolve_folder(ref, field, patterns, section.revision)
        except ModelError as err:
            missing.append(str(err))
    return missing
