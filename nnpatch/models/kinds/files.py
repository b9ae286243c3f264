"""Release files every checkpoint kind reads: the base model's config and tokenizer, the
weights file, and an empty base model to load the weights into."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from nnpatch.errors import ModelError
from nnpatch.models.checkpoint import read_state_dict
from nnpatch.models.hub import (
    TOKENIZER_FILES,
    first_line,
    refuse_custom_code,
    resolve_folder,
    weights_file,
)

BASE_FILES = ["config.json", *TOKENIZER_FILES]
# a tokenizer saved beside the weights, and the files that list its tokens
SHIPPED_TOKENIZER = [*TOKENIZER_FILES, "added_tokens.json"]
# CODI's test.py reads the first two; SIM-CoT's GPT-2 CODI ships its one shard under the
# third name; Coconut saves `checkpoint_N`
WEIGHT_FILES = [
    "model.safetensors",
    "pytorch_model.bin",
    "model-00001-of-00001.safetensors",
    "model.safetensors.index.json",  # sharded: every shard the index names (larger releases)
    "pytorch_model.bin.index.json",
]
SHARDS = ["model-*-of-*.safetensors", "pytorch_model-*-of-*.bin"]  # downloaded with an index


@dataclass(frozen=True)
class ReleaseFiles:
    """Where a release's files are and what its loader needs; a recipe's [model] section
    has the same fields, so either can be given to the loaders."""

    base: str | None
    checkpoint: str | None
    revision: str | None = None
    num_thoughts: int | None = None
    prj_dim: int | None = None
    projection: bool | None = None
    thought_tokens: str | None = None
    thinking: str | None = None
    lora_r: int | None = None
    lora_alpha: float = 32
    eos_before_thought: bool | None = None
    prompt: str | None = None


def base_config_and_tokenizer(section):
    """Config and tokenizer from model.base (a folder or a hub id)."""
    from transformers import AutoConfig, AutoTokenizer

    if not section.base:
        raise ModelError(
            "model.base: required for checkpoints (the base model's config and "
            "tokenizer, e.g. meta-llama/Llama-3.2-1B-Instruct)"
        )
    folder = resolve_folder(section.base, "model.base", BASE_FILES, section.revision)
    refuse_custom_code(folder, "model.base")
    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    except Exception as err:  # noqa: BLE001 - a broken config or tokenizer file: one line
        raise ModelError(f"model.base: {folder}: cannot load it ({first_line(err)})") from None
    return config, tokenizer


def base_config(section):
    """The base model's config alone (validate: layers and heads without weights)."""
    from transformers import AutoConfig

    if not section.base:
        raise ModelError("model.base: required for checkpoints")
    folder = resolve_folder(section.base, "model.base", ["config.json"], section.revision)
    refuse_custom_code(folder, "model.base")
    try:
        return AutoConfig.from_pretrained(folder, trust_remote_code=False)
    except Exception as err:  # noqa: BLE001 - a broken config file: one line
        raise ModelError(f"model.base: {first_line(err)}") from None


def release_weights(
    section, names: list[str] = WEIGHT_FILES, patterns: list[str] | None = None
) -> tuple[str, dict[str, torch.Tensor]]:
    """The checkpoint's weights file (the first of `names` in its folder) and its tensors."""
    if not section.checkpoint:
        raise ModelError("model.checkpoint: required (a folder, a weights file or a hub id)")
    patterns = patterns or [*names, *SHARDS, *SHIPPED_TOKENIZER]
    folder = resolve_folder(section.checkpoint, "model.checkpoint", patterns, section.revision)
    path = weights_file(folder, section.checkpoint, "model.checkpoint", names)
    return str(path), read_state_dict(path)


def load_dtype(section) -> torch.dtype:
    """What weights are built and merged in before the recipe's dtype is applied: float32,
    or float64 for a float64 run (exact comparisons with authors' code)."""
    return torch.float64 if getattr(section, "dtype", None) == "float64" else torch.float32


def empty_language_model(config, vocab: int, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The base architecture with `vocab` embedding rows, for weights to fill."""
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=False)
    lm.resize_token_embeddings(vocab, mean_resizing=False)
    return lm


def tied_keys(config, prefix: str = "lm.") -> set[str]:
    """The output head's key when the config ties it to the input embeddings."""
    return {f"{prefix}lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()


def input_embedding_key(lm: nn.Module) -> str:
    embedding = lm.get_input_embeddings()
    for name, module in lm.named_modules():
        if module is embedding:
            return f"{name}.weight"
    raise ModelError("the base model has no input embedding")


def thought_shape(section, default_thoughts: int):
    """Layers, thoughts and heads of a continuous-thought checkpoint, from its base config."""
    from nnpatch.models.base import ModelShape

    config = base_config(section)
    name = section.checkpoint or section.base
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None)
    thoughts = section.num_thoughts or default_thoughts
    if getattr(section, "thinking", None) == "direct":
        thoughts = 0  # direct mode: no thoughts whatever the release thinks in latent mode
    return ModelShape(name, config.num_hidden_layers, thoughts, num_heads=heads)


def keys_of(folder: Path, names: list[str]) -> set[str]:
    """The key names of every weights file of `names` in `folder`, reading only safetensors
    headers or memory-mapping pickled state dicts (unreadable files add nothing)."""
    keys: set[str] = set()
    for name in names:
        path = folder / name
        if not path.is_file():
            continue
        try:
            if name.endswith(".index.json"):
                keys.update(json.loads(path.read_text(encoding="utf-8"))["weight_map"])
            elif path.suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(path), "pt") as handle:
                    keys.update(handle.keys())
            else:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                keys.update(state if isinstance(state, dict) else ())
        except Exception:  # noqa: BLE001 - unreadable: not recognisable from its keys
            continue
    return keys


def as_path(ref: str | None) -> Path | None:
    """A checkpoint reference that is a local folder (or a file in one), else None."""
    if not ref:
        return None
    path = Path(ref).expanduser()
    if path.is_file():
        return path.parent
    return path if path.is_dir() else None


BASE_WEIGHTS = ["config.json", "*.safetensors", "*.bin", "generation_config.json"]


def base_language_model(section, vocab: int) -> nn.Module:
    """The base model with its own weights (every one loaded), its embeddings resized to
    `vocab` rows: for releases that ship only adapters (PCCoT, CoLaR). New rows start at the
    mean of the old ones, the centre of the distribution transformers draws them from."""
    from transformers import AutoModelForCausalLM

    if not section.base:
        raise ModelError("model.base: required (the base model these adapters were trained on)")
    patterns = [*BASE_WEIGHTS, *TOKENIZER_FILES]
    folder = resolve_folder(section.base, "model.base", patterns, section.revision)
    refuse_custom_code(folder, "model.base")
    try:
        lm, info = AutoModelForCausalLM.from_pretrained(
            folder, dtype=load_dtype(section), output_loading_info=True, trust_remote_code=False
        )
    except Exception as err:  # noqa: BLE001 - broken weights or config: one line
        raise ModelError(f"model.base: {folder}: cannot load it ({first_line(err)})") from None
    tied = {"lm_head.weight"} if getattr(lm.config, "tie_word_embeddings", False) else set()
    missing = sorted(set(info.get("missing_keys", [])) - tied)
    if missing or info.get("unexpected_keys"):
        raise ModelError(
            f"model.base: {folder}: missing keys {missing[:4]}, unexpected keys "
            f"{sorted(info.get('unexpected_keys', []))[:4]}; the weights do not match the config"
        )
    rows = lm.get_input_embeddings().weight.shape[0]
    if vocab != rows:
        lm.resize_token_embeddings(vocab, mean_resizing=False)
        with torch.no_grad():
            for matrix in {lm.get_input_embeddings().weight, lm.get_output_embeddings().weight}:
                if vocab > rows:
                    matrix[rows:] = matrix[:rows].mean(0)
    return lm


def thought_model(section):
    """The adapter a continuous-thought release is read with: latent (and direct) thinking,
    or its verbalized mode, whose thoughts are the tokens it writes per question."""
    from nnpatch.models.base import ThoughtModel
    from nnpatch.models.per_question import VerbalizedThoughts

    return (
        VerbalizedThoughts if getattr(section, "thinking", None) == "verbalized" else ThoughtModel
    )
