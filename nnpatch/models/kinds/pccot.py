"""PCCoT (`kind = "pccot"`): whyNLP/PCCoT's PEFT releases (whyNLP/pccot-gpt2).

The release folder holds a PEFT adapter (adapter_config.json, adapter_model.safetensors),
the model's config.json (model_type pccot-gpt2: `num_iterations`, `use_projection`),
pccot_args.json (the bot/eot/latent ids, the number of latent slots, the answer prompt) and
the tokenizer with PCCoT's tokens; the base weights come from `model.base` (gpt2). In the
adapter file:
- `<module>.lora_A/B.weight`: LoRA on c_attn, c_fc, c_proj, merged with alpha / r;
- `<embedding>.token_adapter.trainable_tokens_delta`: PEFT's trainable tokens, the full
  trained rows of [bot, eot, latent, pad, eos] (adapter_config's trainable_token_indices);
- `<embedding>.token_adapter.base_layer.weight`: the resized embedding matrix, saved by PEFT
  when the vocabulary grew; it replaces the base's;
- `prj.*` when trained with a projection.
The question is read as the tokenizer reads it (no stripping); the answer prompt is part of
the input after eot, and the answer follows it with no space. The loop is
`nnpatch.models.pccot`; a position is a slot at an iteration.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from nnpatch.errors import ModelError
from nnpatch.models.checkpoint import KeyReport, load_exactly, merge_adapters, read_state_dict
from nnpatch.models.hub import (
    TOKENIZER_FILES,
    load_tokenizer,
    refuse_custom_code,
    resolve_folder,
)
from nnpatch.models.kinds.base import Kind
from nnpatch.models.kinds.files import base_language_model
from nnpatch.models.pccot import PARALLEL, PccotModel, PccotThoughts

PREFIX = "base_model.model."
FILES = ["adapter_config.json", "config.json", "pccot_args.json"]
ADAPTER_FILES = ["adapter_model.safetensors", "adapter_model.bin"]
TOKENS = ".token_adapter.trainable_tokens_delta"
EMBEDDING = ".token_adapter.base_layer.weight"


def load_pccot(section) -> PccotThoughts:
    folder = _release_folder(section)
    refuse_custom_code(folder, "model.checkpoint")
    adapter_config, config, args = (_json(folder / name) for name in FILES)
    tokenizer = _tokenizer(folder)
    lm = base_language_model(section, len(tokenizer))
    adapter = next((folder / n for n in ADAPTER_FILES if (folder / n).is_file()), None)
    if adapter is None:
        raise ModelError(f"model.checkpoint: {folder} holds none of {', '.join(ADAPTER_FILES)}")
    state = read_state_dict(adapter)
    report = KeyReport(str(adapter))
    unprefixed = [k for k in state if not k.startswith(PREFIX)]
    report.unexpected += unprefixed
    state = {k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX)}
    _embeddings(lm, state, adapter_config, report)
    prj_state = {k[len("prj.") :]: v for k, v in state.items() if k.startswith("prj.")}
    adapters = {k: v for k, v in state.items() if ".lora_" in k}
    known = ("prj.", ".lora_", ".token_adapter.")
    report.unexpected += [PREFIX + k for k in state if not any(part in k for part in known)]
    alpha, rank = float(adapter_config.get("lora_alpha", 8)), int(adapter_config.get("r", 8))
    merge_adapters(lm, adapters, alpha, rank, report)
    prj = _projection(config, lm.config.hidden_size, prj_state, report)
    slots, iterations = int(args.get("num_latent_tokens", 6)), int(config.get("num_iterations", 6))
    if iterations < 1:
        raise ModelError(f"{folder / 'config.json'}: num_iterations must be at least 1")
    ids = {name: args.get(f"{name}_token_id") for name in ("bot", "eot", "latent")}
    if None in ids.values() or tokenizer.pad_token_id is None:
        raise ModelError(f"{folder / 'pccot_args.json'}: bot, eot and latent ids and a pad needed")
    module = PccotModel(
        lm,
        prj,
        slots,
        iterations,
        bot_id=ids["bot"],
        eot_id=ids["eot"],
        pad_id=tokenizer.pad_token_id,
        latent_id=ids["latent"],
    )
    return PccotThoughts(
        module,
        tokenizer,
        section.checkpoint,
        answer_prefix=args.get("answer_prompt", "The answer is:"),
        question_style="raw",
        key_report=report,
        answer_space=False,
    )


def _tokenizer(folder: Path):
    """The release's tokenizer. Its folder's config.json names model type pccot-gpt2, which
    transformers does not know and warns about while only looking for a tokenizer class."""
    from transformers.utils import logging as transformers_logging

    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        return load_tokenizer(folder, "model.checkpoint")
    finally:
        transformers_logging.set_verbosity(verbosity)


def _embeddings(lm: nn.Module, state: dict, adapter_config: dict, report: KeyReport) -> None:
    """The saved embedding matrices, then the trainable tokens' rows over them, for the input
    embeddings and the output head alike (one matrix when tied)."""
    indices = adapter_config.get("trainable_token_indices") or []
    groups = indices.values() if isinstance(indices, dict) else [indices]
    order = torch.tensor([int(i) for group in groups for i in group], dtype=torch.long)
    inputs, outputs = lm.get_input_embeddings().weight, lm.get_output_embeddings().weight
    with torch.no_grad():
        for key in sorted(k for k in state if ".token_adapter." in k):  # base_layer first
            module, _, part = key.partition(".token_adapter.")
            target = outputs if module.endswith("lm_head") else inputs
            value = state[key].to(target.dtype)
            if part == "base_layer.weight" and value.shape == target.shape:
                target.copy_(value)
            elif part == "trainable_tokens_delta" and value.shape[0] == len(order):
                target[order] = value
            else:
                raise ModelError(
                    f"{report.file}: {PREFIX}{key} {tuple(value.shape)} does not fit the "
                    f"embeddings {tuple(target.shape)} and the {len(order)} trainable tokens of "
                    "adapter_config.json; the tokenizer or adapter is not this release's"
                )
            report.loaded += 1


def _projection(config: dict, hidden: int, prj_state: dict, report: KeyReport) -> nn.Module:
    if not config.get("use_projection", False):
        report.unexpected += [f"{PREFIX}prj.{k}" for k in prj_state]
        report.check()
        return nn.Identity()
    prj = nn.Sequential(
        nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.LayerNorm(hidden)
    )
    load_exactly(prj, prj_state, report)
    return prj


def _release_folder(section) -> Path:
    if not section.checkpoint:
        raise ModelError("model.checkpoint: required (the PCCoT release folder or hub id)")
    patterns = [*FILES, *ADAPTER_FILES, *TOKENIZER_FILES, "added_tokens.json"]
    return resolve_folder(section.checkpoint, "model.checkpoint", patterns, section.revision)


def _json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        reason = "missing" if isinstance(err, FileNotFoundError) else f"unreadable ({err})"
        raise ModelError(
            f"model.checkpoint: {path}: {reason}; a PCCoT release holds {', '.join(FILES)}"
        ) from None
    if not isinstance(value, dict):
        raise ModelError(f"model.checkpoint: {path}: not a JSON object")
    return value


def _recognise(folder: Path) -> bool:
    return all((folder / name).is_file() for name in ("adapter_config.json", "pccot_args.json"))


def _shape(section):
    """Layers, slots and iterations from the release's config.json and pccot_args.json."""
    from nnpatch.models.base import ModelShape

    folder = _release_folder(section)
    config, args = _json(folder / "config.json"), _json(folder / "pccot_args.json")
    layers = config.get("n_layer") or config.get("num_hidden_layers")
    heads = config.get("n_head") or config.get("num_attention_heads")
    if not isinstance(layers, int):
        raise ModelError(f"{folder / 'config.json'}: no layer count (n_layer)")
    slots = int(args.get("num_latent_tokens", 6))
    return ModelShape(
        section.checkpoint,
        layers,
        slots,
        num_heads=heads,
        iterations=int(config.get("num_iterations", 6)),
        refused_modes=PARALLEL,
    )


KIND = Kind(
    name="pccot",
    about="PCCoT: whyNLP/PCCoT PEFT releases (Jacobi iterations over parallel latent slots)",
    fields=("checkpoint", "base", "revision"),
    load=load_pccot,
    shape=_shape,
    recognise=_recognise,
)
