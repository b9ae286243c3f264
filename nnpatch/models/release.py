"""Load released checkpoints exactly as their authors run them: CODI and Coconut.

CODI (zhenyi4/codi): one state dict of the whole CODI module, `codi.base_model.model.<HF
keys>` with unmerged LoRA, plus `prj.*`; embeddings resized to V + 3 with pad = V,
bot = V + 1, eot = V + 2 as bare ids. Coconut (facebookresearch/coconut): `base_causallm.<HF
keys>` plus `embedding.weight` (an alias of the input embeddings), the tokenizer extended with
<|start-latent|>, <|end-latent|>, <|latent|>; no projection; answers "### X".

SIM-CoT (InternLM/SIM-CoT) ships both formats with a training-only decoder beside the model
(`decoder.*` in CODI files, `expainable_llm.*` in Coconut ones); its test loops never build
it, so its keys are dropped, by name and count in the key report. Its Coconut thinks
10 latents (its final training stage) unless the recipe says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from nnpatch.errors import ModelError
from nnpatch.models.base import ANSWER_PREFIX, ThoughtModel
from nnpatch.models.causal_lm import load_causal_lm
from nnpatch.models.checkpoint import KeyReport, load_exactly, merge_lora, read_state_dict
from nnpatch.models.codi import CodiModel, Projection
from nnpatch.models.hub import (
    TOKENIZER_FILES,
    first_line,
    load_tokenizer,
    refuse_custom_code,
    resolve_folder,
    weights_file,
)

CODI_PREFIX = "codi.base_model.model."
COCONUT_PREFIX = "base_causallm."
COCONUT_TOKENS = ["<|start-latent|>", "<|end-latent|>", "<|latent|>"]  # the order run.py adds
BASE_FILES = ["config.json", *TOKENIZER_FILES]
NAMED_TOKENS = ("<|bocot|>", "<|eocot|>")  # Cywiński et al.'s thought markers
# a tokenizer saved beside the weights, and the files that list its tokens
SHIPPED_TOKENIZER = [*TOKENIZER_FILES, "added_tokens.json"]
TOKEN_LISTS = ("tokenizer.json", "tokenizer_config.json", "added_tokens.json")
# CODI's test.py reads the first two; SIM-CoT's GPT-2 CODI ships its one shard under the
# third name
WEIGHT_FILES = ["model.safetensors", "pytorch_model.bin", "model-00001-of-00001.safetensors"]
# modules a release trains beside the model and never runs at test time (SIM-CoT's step
# decoders; `pj_in`/`pj_out` hold weights only when trained with a decoder_path)
CODI_TRAINING_ONLY = {
    "decoder.": "SIM-CoT's training-only step decoder",
    "pj_in.": "SIM-CoT's decoder input projection",
    "pj_out.": "SIM-CoT's decoder output projection",
}
COCONUT_TRAINING_ONLY = {"expainable_llm.": "SIM-CoT's training-only explanation decoder"}
# SIM-CoT's Coconut: 2 latents per stage x 5 stages at its final stage
SIMCOT_COCONUT_THOUGHTS = 10


@dataclass(frozen=True)
class ReleaseFiles:
    """Where a release's files are and what its loader needs; a recipe's [model] section
    has the same fields, so either can be given to the loaders."""

    base: str | None
    checkpoint: str | None
    revision: str | None = None
    num_thoughts: int | None = None
    prj_dim: int | None = None
    lora_r: int | None = None
    lora_alpha: float = 32
    eos_before_thought: bool | None = None
    prompt: str | None = None


def load_codi_files(base: str, checkpoint: str, num_thoughts: int | None = None) -> ThoughtModel:
    """A CODI release from its base folder and checkpoint, with the release defaults."""
    return load_codi(ReleaseFiles(base, checkpoint, num_thoughts=num_thoughts))


def _base(section):
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


def _weights(section) -> tuple[str, dict[str, torch.Tensor]]:
    if not section.checkpoint:
        raise ModelError("model.checkpoint: required (a folder, a weights file or a hub id)")
    patterns = [*WEIGHT_FILES, "checkpoint_*", *SHIPPED_TOKENIZER]
    folder = resolve_folder(section.checkpoint, "model.checkpoint", patterns, section.revision)
    path = weights_file(folder, section.checkpoint, "model.checkpoint", WEIGHT_FILES)
    return str(path), read_state_dict(path)


def _language_model(config, vocab: int) -> nn.Module:
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_config(config, dtype=torch.float32, trust_remote_code=False)
    lm.resize_token_embeddings(vocab, mean_resizing=False)
    return lm


def _tied(config) -> set[str]:
    return {"lm.lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()


def load_codi(section) -> ThoughtModel:
    config, tokenizer = _base(section)
    path, state = _weights(section)
    report = KeyReport(path)
    state = report.drop(state, CODI_TRAINING_ONLY)
    vocab = config.vocab_size
    rows, (pad, bot, eot) = vocab + 3, (vocab, vocab + 1, vocab + 2)  # zhenyi4: bare ids
    shipped = _shipped_tokenizer(path)
    if shipped is not None:  # Cywiński et al.: named tokens in the checkpoint's tokenizer
        tokenizer, rows = shipped, len(shipped)
        pad, bot, eot = _named_ids(tokenizer, state, path)
    lm = _language_model(config, rows)
    lm_state = {k[len(CODI_PREFIX) :]: v for k, v in state.items() if k.startswith(CODI_PREFIX)}
    prj_state = {k[len("prj.") :]: v for k, v in state.items() if k.startswith("prj.")}
    report.unexpected += [k for k in state if not k.startswith((CODI_PREFIX, "prj."))]
    merged = merge_lora(lm_state, lm, float(section.lora_alpha), section.lora_r, report)
    report.missing = [CODI_PREFIX + k for k in report.missing]
    report.unexpected = [CODI_PREFIX + k if "lora_" in k else k for k in report.unexpected]
    prj_dim = section.prj_dim or _rows(prj_state.get("1.weight"), 2 * config.hidden_size)
    module = CodiModel(
        lm,
        Projection(config.hidden_size, prj_dim),
        section.num_thoughts or 6,
        bot_id=bot,
        eot_id=eot,
        pad_id=pad,
    )
    combined = {f"lm.{k}": v for k, v in merged.items()} | {
        f"prj.{k}": v for k, v in prj_state.items()
    }
    load_exactly(module, combined, report, _tied(config))
    lm.tie_weights()
    answer_only = getattr(section, "prompt", None) == "answer-only"
    return ThoughtModel(
        module,
        tokenizer,
        section.checkpoint,
        answer_prefix="" if answer_only else ANSWER_PREFIX,
        question_style="answer-only" if answer_only else "codi",
        key_report=report,
        eos_before_bot=bool(getattr(section, "eos_before_thought", None)),
        answer_space=not answer_only,
    )


def _shipped_tokenizer(weights: str):
    """The checkpoint folder's own tokenizer when it names the thought markers (Cywiński
    et al. push it with the weights), else None (zhenyi4: the base's, bare ids)."""
    folder = Path(weights).parent
    texts = []
    for name in TOKEN_LISTS:  # read as text first: a folder without the markers (zhenyi4's
        try:  # releases) never has its tokenizer loaded, whatever state it is in
            texts.append((folder / name).read_text(encoding="utf-8", errors="replace"))
        except OSError:
            continue
    if not all(any(token in text for text in texts) for token in NAMED_TOKENS):
        return None
    tokenizer = load_tokenizer(folder, "model.checkpoint")
    vocab = tokenizer.get_vocab()
    return tokenizer if all(token in vocab for token in NAMED_TOKENS) else None


def _named_ids(tokenizer, state: dict, path: str) -> tuple[int, int, int]:
    """(pad, bot, eot) from the shipped tokenizer, checked against the checkpoint's
    embedding rows: every id must be a row, and the rows must be the tokenizer's length."""
    bot, eot = tokenizer.convert_tokens_to_ids(list(NAMED_TOKENS))
    pad = tokenizer.pad_token_id
    if pad is None:
        raise ModelError(f"{path}: its tokenizer has no pad token; CODI's training adds [PAD]")
    rows = next(
        (
            int(v.shape[0])
            for k, v in state.items()
            if k.endswith("embed_tokens.base_layer.weight")
            or k.endswith("embed_tokens.weight")
            or k.endswith("wte.weight")
        ),
        None,
    )
    if rows is not None and rows != len(tokenizer):
        raise ModelError(
            f"{path}: the embeddings have {rows} rows but the shipped tokenizer has "
            f"{len(tokenizer)} tokens; the tokenizer is not the one trained with these weights"
        )
    return pad, bot, eot


def load_coconut(section) -> ThoughtModel:
    config, tokenizer = _base(section)
    path, state = _weights(section)
    report = KeyReport(path)
    simcot = any(k.startswith(tuple(COCONUT_TRAINING_ONLY)) for k in state)
    state = report.drop(state, COCONUT_TRAINING_ONLY)
    tokenizer.add_tokens(COCONUT_TOKENS)
    start, end, latent = tokenizer.convert_tokens_to_ids(COCONUT_TOKENS)
    lm = _language_model(config, len(tokenizer))
    lm_state = {
        k[len(COCONUT_PREFIX) :]: v for k, v in state.items() if k.startswith(COCONUT_PREFIX)
    }
    alias = state.get("embedding.weight")
    if alias is not None:
        embed_key = _input_embedding_key(lm)
        if embed_key not in lm_state or not torch.equal(alias, lm_state[embed_key]):
            raise ModelError(
                f"{path}: embedding.weight differs from {COCONUT_PREFIX}{embed_key}; "
                "Coconut saves the input embeddings twice, and they must agree"
            )
        report.ignored.append("embedding.weight")
    report.unexpected += [
        k for k in state if not k.startswith(COCONUT_PREFIX) and k != "embedding.weight"
    ]
    eos = tokenizer.eos_token_id
    module = CodiModel(
        lm,
        nn.Identity(),
        section.num_thoughts or (SIMCOT_COCONUT_THOUGHTS if simcot else 6),
        bot_id=start,
        eot_id=end,
        pad_id=eos,
        marker_ids=(start, end, latent),
    )
    load_exactly(module, {f"lm.{k}": v for k, v in lm_state.items()}, report, _tied(config))
    lm.tie_weights()
    return ThoughtModel(
        module,
        tokenizer,
        section.checkpoint,
        answer_prefix="###",
        question_style="coconut",
        key_report=report,
    )


def _input_embedding_key(lm: nn.Module) -> str:
    embedding = lm.get_input_embeddings()
    for name, module in lm.named_modules():
        if module is embedding:
            return f"{name}.weight"
    raise ModelError("the base model has no input embedding")


def _rows(weight: torch.Tensor | None, default: int) -> int:
    return default if weight is None else int(weight.shape[0])


LOADERS = {"codi": load_codi, "coconut": load_coconut, "causal_lm": load_causal_lm}
