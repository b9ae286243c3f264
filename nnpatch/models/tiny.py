"""Tiny models built from configs in memory, with seeded weights and the tiny tokenizer: the
random-weight presets and the models tests build. Nothing is downloaded."""

from __future__ import annotations

import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
)

from nnpatch.models.base import ANSWER_PREFIX, ThoughtModel
from nnpatch.models.causal_lm import CausalLM
from nnpatch.models.codi import CodiModel, Projection
from nnpatch.models.tiny_tokenizer import build_tiny_tokenizer

SEED = 0
# Large enough init that clean and corrupted questions give clearly different answers.
INIT_STD = 0.1


def tiny_lm(family: str, vocab: int, num_layers: int, **extra) -> PreTrainedModel:
    """A d = 64 Llama or GPT-2 with `vocab` ids, its weights drawn from the current RNG."""
    if family == "llama":
        config = LlamaConfig(
            vocab_size=vocab,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=num_layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            initializer_range=INIT_STD,
            **extra,
        )
        return LlamaForCausalLM(config)
    config = GPT2Config(
        vocab_size=vocab,
        n_embd=64,
        n_layer=num_layers,
        n_head=4,
        n_positions=512,
        initializer_range=INIT_STD,
        **extra,
    )
    return GPT2LMHeadModel(config)


def special_ids(tokenizer) -> dict[str, int]:
    """The config's bos and eos ids from the tokenizer (the configs' defaults, 50256 for
    GPT-2, lie outside a tiny vocabulary)."""
    return {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}


def tiny_random_codi(family: str = "llama", num_thoughts: int = 6) -> ThoughtModel:
    """A small random-weight CODI model: 4 layers (Llama) or 3 (GPT-2), d = 64."""
    tokenizer = build_tiny_tokenizer()
    vocab = len(tokenizer)  # CODI ids: pad = V, bot = V + 1, eot = V + 2
    ids = special_ids(tokenizer)
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        if family == "llama":
            lm = tiny_lm("llama", vocab + 3, 4, tie_word_embeddings=False, **ids)
        else:
            lm = tiny_lm("gpt2", vocab + 3, 3, **ids)
        prj = Projection(64, 64)
    module = CodiModel(lm, prj, num_thoughts, bot_id=vocab + 1, eot_id=vocab + 2, pad_id=vocab)
    name = "tiny-random-codi" if family == "llama" else "tiny-random-codi-gpt2"
    return ThoughtModel(module.float().eval(), tokenizer, name)


def tiny_random_lm(family: str = "gpt2", answer_prefix: str | None = None) -> CausalLM:
    """A small random-weight plain causal LM with the tiny tokenizer (tests, smoke runs)."""
    tokenizer = build_tiny_tokenizer()
    ids = special_ids(tokenizer)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        lm = tiny_lm(family, len(tokenizer), 3, **ids)
    prefix = ANSWER_PREFIX if answer_prefix is None else answer_prefix
    return CausalLM(lm.float(), tokenizer, f"tiny-random-{family}", answer_prefix=prefix)
