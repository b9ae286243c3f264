"""Named presets: models built from a config in memory, with no download.

`tiny-random-codi` (Llama family) and `tiny-random-codi-gpt2` are random-weight CODI
models for tests and smoke runs. Their weights are seeded, so every build is identical.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
)

from nnpatch.models.base import ThoughtModel
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


def tiny_random_codi(family: str = "llama", num_thoughts: int = 6) -> ThoughtModel:
    """A small random-weight CODI model: 4 layers (Llama) or 3 (GPT-2), d = 64."""
    tokenizer = build_tiny_tokenizer()
    vocab = len(tokenizer)  # CODI ids: pad = V, bot = V + 1, eot = V + 2
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        if family == "llama":
            lm = tiny_lm("llama", vocab + 3, 4, tie_word_embeddings=False)
        else:
            lm = tiny_lm("gpt2", vocab + 3, 3)
        prj = Projection(64, 64)
    module = CodiModel(lm, prj, num_thoughts, bot_id=vocab + 1, eot_id=vocab + 2, pad_id=vocab)
    name = "tiny-random-codi" if family == "llama" else "tiny-random-codi-gpt2"
    return ThoughtModel(module.float().eval(), tokenizer, name)


TOY_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "toy-codi"


def toy_codi(folder: str | Path | None = None, num_thoughts: int | None = None) -> ThoughtModel:
    """The embedded trained model (nnpatch/weights/toy-codi), through the CODI loader; it
    thinks as many steps as it was trained with (training.json) unless told otherwise."""
    from nnpatch.models.release import load_codi
    from nnpatch.recipe import ModelSection

    path = str(folder or TOY_WEIGHTS)
    card = Path(path) / "training.json"
    if num_thoughts is None:
        num_thoughts = json.loads(card.read_text())["num_thoughts"] if card.exists() else 3
    model = load_codi(
        ModelSection(kind="codi", base=path, checkpoint=path, num_thoughts=num_thoughts)
    )
    model.name = "toy-codi"
    return model


def _plain(family: str):
    def build(answer_prefix: str | None = None):
        from nnpatch.models.causal_lm import tiny_random_lm

        return tiny_random_lm(family, answer_prefix)

    return build


PLAIN_PRESETS = ("tiny-random-gpt2", "tiny-random-llama")
PRESETS: dict[str, Callable[..., ThoughtModel]] = {
    "tiny-random-codi": lambda **kw: tiny_random_codi("llama", **kw),
    "tiny-random-codi-gpt2": lambda **kw: tiny_random_codi("gpt2", **kw),
    "toy-codi": lambda **kw: toy_codi(**kw),  # trained: thoughts carry toy arithmetic
    "tiny-random-gpt2": _plain("gpt2"),  # plain causal LMs: patched over a marked text span
    "tiny-random-llama": _plain("llama"),
}
