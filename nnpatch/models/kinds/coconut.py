"""Coconut (`kind = "coconut"`): facebookresearch/coconut's release format, and SIM-CoT's.

A raw `torch.save` of the wrapper's state dict (`checkpoint_N`): `base_causallm.<HF keys>`
plus `embedding.weight` (an alias of the input embeddings that must agree with them); the
base tokenizer extended with <|start-latent|>, <|end-latent|>, <|latent|> in that order; no
projection: each latent is the previous position's final hidden state. The question is the
raw text and a newline; answers follow "###". SIM-CoT's Coconut also holds a training-only
explanation decoder (`expainable_llm.*`, dropped and reported) and thinks 10 latents (its
final training stage) unless the recipe says otherwise; facebook's GSM8K model thinks 6.

A position is bot (<|start-latent|>), latent 0..K-1, or eot (<|end-latent|>).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from nnpatch.errors import ModelError
from nnpatch.models.base import ThoughtModel
from nnpatch.models.checkpoint import KeyReport, load_exactly
from nnpatch.models.codi import CodiModel
from nnpatch.models.kinds.base import Kind
from nnpatch.models.kinds.files import (
    SHIPPED_TOKENIZER,
    WEIGHT_FILES,
    base_config_and_tokenizer,
    empty_language_model,
    input_embedding_key,
    keys_of,
    load_dtype,
    release_weights,
    thought_model,
    thought_shape,
    tied_keys,
)

PREFIX = "base_causallm."
TOKENS = ["<|start-latent|>", "<|end-latent|>", "<|latent|>"]  # the order run.py adds them
# Dilgren & Wiegreffe's multimode Coconut: its latent mode reads q, [eot], <|bocot|>, the
# latents, <|eocot|> (no embedding alias in its files)
MULTIMODE_TOKENS = ["<|bocot|>", "<|eocot|>", "<|latent|>"]
TRAINING_ONLY = {"expainable_llm.": "SIM-CoT's training-only explanation decoder"}
THOUGHTS = 6  # facebook's GSM8K: c_thought 2 x max_latent_stage 3
SIMCOT_THOUGHTS = 10  # SIM-CoT's: 2 latents per stage x 5 stages at its final stage


def _checkpoint_files(folder: Path) -> list[str]:
    """`checkpoint_N` files, newest epoch first, then the usual weight files."""
    numbered = sorted(
        (p.name for p in folder.glob("checkpoint_*") if p.name.split("_")[-1].isdigit()),
        key=lambda name: -int(name.split("_")[-1]),
    )
    return [*numbered, *WEIGHT_FILES]


def load_coconut(section) -> ThoughtModel:
    config, tokenizer = base_config_and_tokenizer(section)
    path, state = _weights(section)
    report = KeyReport(path)
    simcot = any(k.startswith(tuple(TRAINING_ONLY)) for k in state)
    state = report.drop(state, TRAINING_ONLY)
    multimode = getattr(section, "thought_tokens", None) == "multimode"
    tokens = MULTIMODE_TOKENS if multimode else TOKENS
    tokenizer.add_tokens(tokens)
    start, end, latent = tokenizer.convert_tokens_to_ids(tokens)
    lm = empty_language_model(config, len(tokenizer), load_dtype(section))
    lm_state = {k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX)}
    alias = state.get("embedding.weight")
    if alias is not None:
        embed_key = input_embedding_key(lm)
        if embed_key not in lm_state or not torch.equal(alias, lm_state[embed_key]):
            raise ModelError(
                f"{path}: embedding.weight differs from {PREFIX}{embed_key}; "
                "Coconut saves the input embeddings twice, and they must agree"
            )
        report.ignored.append("embedding.weight")
    report.unexpected += [k for k in state if not k.startswith(PREFIX) and k != "embedding.weight"]
    module = CodiModel(
        lm,
        nn.Identity(),
        section.num_thoughts or (SIMCOT_THOUGHTS if simcot else THOUGHTS),
        bot_id=start,
        eot_id=end,
        pad_id=tokenizer.eos_token_id,
        marker_ids=(start, end, latent),
    )
    load_exactly(module, {f"lm.{k}": v for k, v in lm_state.items()}, report, tied_keys(config))
    lm.tie_weights()
    model = thought_model(section)(
        module,
        tokenizer,
        section.checkpoint,
        answer_prefix="###",
        question_style="strip-newline" if multimode else "coconut",
        key_report=report,
        eos_before_bot=bool(getattr(section, "eos_before_thought", None)),
        direct=getattr(section, "thinking", None) == "direct",
    )
    model.answer_marker = "#"  # run.py: the text after the last "#"
    return model


def _weights(section):
    from nnpatch.models.hub import resolve_folder

    patterns = ["checkpoint_*", *WEIGHT_FILES, *SHIPPED_TOKENIZER]
    if not section.checkpoint:
        raise ModelError("model.checkpoint: required (a folder, a weights file or a hub id)")
    folder = resolve_folder(section.checkpoint, "model.checkpoint", patterns, section.revision)
    return release_weights(section, _checkpoint_files(folder), patterns)


def _recognise(folder: Path) -> bool:
    keys = keys_of(folder, _checkpoint_files(folder))
    return any(k.startswith(PREFIX) for k in keys)


KIND = Kind(
    name="coconut",
    about="Coconut: facebookresearch/coconut and SIM-CoT (base_causallm.* in checkpoint_N)",
    fields=(
        "checkpoint",
        "base",
        "revision",
        "num_thoughts",
        "eos_before_thought",
        "thought_tokens",
        "thinking",
    ),
    load=load_coconut,
    shape=lambda section: thought_shape(section, THOUGHTS),
    recognise=_recognise,
)
