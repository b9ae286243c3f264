"""Tiny checkpoints in the exact on-disk formats of the CODI and Coconut releases.

CODI: peft's get_peft_model on a tiny Llama or GPT-2 (embeddings resized to V + 3), a `prj`
Sequential with `ln`, the whole module's state dict saved with the `codi.` prefix, as
pytorch_model.bin and model.safetensors. Coconut: a GPT-2 with three added tokens wrapped as
`base_causallm` next to an `embedding` alias, saved with torch.save as `checkpoint_N`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from nnpatch.models.tiny import tiny_lm
from nnpatch.models.tiny_tokenizer import build_tiny_tokenizer

TARGETS = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
}
TARGETS["qwen3"] = TARGETS["llama"]


def base_model(family: str, vocab: int, seed: int = 1):
    torch.manual_seed(seed)
    lm = tiny_lm(family, vocab, 3, tie_word_embeddings=True)
    return lm.config, lm


class CodiRelease(nn.Module):
    """The attributes CODI's module saves: `codi` (peft-wrapped LM) and `prj`."""

    def __init__(self, lm: nn.Module, hidden: int, prj_dim: int):
        super().__init__()
        self.codi = lm
        self.prj = nn.Sequential(
            nn.Dropout(0.0), nn.Linear(hidden, prj_dim), nn.GELU(), nn.Linear(prj_dim, hidden)
        )
        self.prj.add_module("ln", nn.LayerNorm(hidden))


def write_codi_release(folder: Path, family: str, fmt: str, rank: int = 8, alpha: float = 32):
    """(module, base folder, checkpoint folder) for a tiny CODI release."""
    tokenizer = build_tiny_tokenizer()
    vocab = len(tokenizer)
    config, lm = base_model(family, vocab)
    base = folder / "base"
    config.save_pretrained(base)
    tokenizer.save_pretrained(base)
    lm.resize_token_embeddings(vocab + 3, mean_resizing=False)
    lora = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=TARGETS[family],
        lora_dropout=0.0,
        init_lora_weights=False,
    )
    peft_lm = get_peft_model(lm, lora)
    with torch.no_grad():  # nonzero but gentle LoRA, so the tiny model is not chaotic
        for name, param in peft_lm.named_parameters():
            if "lora_B" in name:
                param.mul_(0.05)
    module = CodiRelease(peft_lm, 64, 96).eval()
    state = module.state_dict()
    checkpoint = folder / "ckpt"
    checkpoint.mkdir()
    if fmt == "bin":
        torch.save(state, checkpoint / "pytorch_model.bin")
    else:
        from safetensors.torch import save_file

        # safetensors refuses shared tensors: a tied lm_head is left out, as HF does
        tied = "codi.base_model.model.lm_head.weight"
        state = {k: v.contiguous() for k, v in state.items() if k != tied}
        save_file(state, str(checkpoint / "model.safetensors"))
    return module, base, checkpoint


COCONUT_TOKENS = ["<|start-latent|>", "<|end-latent|>", "<|latent|>"]


class CoconutRelease(nn.Module):
    def __init__(self, lm: nn.Module):
        super().__init__()
        self.base_causallm = lm
        self.embedding = lm.get_input_embeddings()


def write_coconut_release(folder: Path, padded_vocab: int = 0):
    """(lm, tokenizer, base folder, checkpoint file) for a tiny GPT-2 Coconut.

    `padded_vocab` extra rows in the base config's vocabulary (as models padded to a round
    size have): the latent tokens then get ids below the config's vocab_size."""
    tokenizer = build_tiny_tokenizer()
    config, lm = base_model("gpt2", len(tokenizer) + padded_vocab, seed=2)
    base = folder / "base"
    config.save_pretrained(base)
    tokenizer.save_pretrained(base)
    tokenizer.add_tokens(COCONUT_TOKENS)
    lm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    module = CoconutRelease(lm).eval()
    path = folder / "checkpoint_15"
    torch.save(module.state_dict(), path)
    return lm, tokenizer, base, path


def write_simcot_codi_release(folder: Path, family: str):
    """(module, base folder, checkpoint folder, decoder key count) for a tiny SIM-CoT CODI
    release: CODI's module plus `decoder`, a second whole LM of the base (not resized, no
    LoRA), saved whole as SIM-CoT's trainer does; its GPT-2 release names its one shard
    model-00001-of-00001.safetensors, its Llama ones model.safetensors; config.json empty."""
    module, base, checkpoint = write_codi_release(folder, family, "bin")
    (checkpoint / "pytorch_model.bin").unlink()
    tokenizer = build_tiny_tokenizer()
    _, decoder = base_model(family, len(tokenizer), seed=3)
    module.add_module("decoder", decoder.eval())
    from safetensors.torch import save_file

    tied = {"codi.base_model.model.lm_head.weight", "decoder.lm_head.weight"}
    state = {k: v.contiguous() for k, v in module.state_dict().items() if k not in tied}
    name = "model-00001-of-00001.safetensors" if family == "gpt2" else "model.safetensors"
    save_file(state, str(checkpoint / name))
    (checkpoint / "config.json").write_text("")
    return module, base, checkpoint, sum(k.startswith("decoder.") for k in state)


def write_simcot_coconut_release(folder: Path):
    """(lm, tokenizer, base folder, checkpoint file, aux key count) for a tiny SIM-CoT GPT-2
    Coconut: facebook's module plus `expainable_llm`, a fresh GPT-2 of the base vocabulary
    (never resized), saved with torch.save as checkpoint_28; config.json empty."""
    lm, tokenizer, base, path = write_coconut_release(folder)
    module = CoconutRelease(lm)
    _, explainer = base_model("gpt2", len(build_tiny_tokenizer()), seed=4)
    module.add_module("expainable_llm", explainer)
    state = module.state_dict()
    path.unlink()
    path = folder / "checkpoint_28"
    torch.save(state, path)
    (folder / "config.json").write_text("")
    return lm, tokenizer, base, path, sum(k.startswith("expainable_llm.") for k in state)


CYWINSKI_TOKENS = ["<|bocot|>", "<|eocot|>"]


def tiny_qwen3(vocab: int, seed: int):
    """A d = 64 Qwen3 (GQA, q/k norms, untied head) with `vocab` ids."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        initializer_range=0.1,
        tie_word_embeddings=False,
    )
    return config, Qwen3ForCausalLM(config)


def write_cywinski_release(folder: Path, family: str = "llama"):
    """(module, tokenizer, base folder, checkpoint folder) for a tiny CODI release in
    Cywiński et al.'s layout: the tokenizer gets [PAD] (where it has no pad) and the two
    thought markers as special tokens, the base is resized to len(tokenizer), LoRA and prj
    as CODI's; the Trainer pushes pytorch_model.bin and the tokenizer files together."""
    tokenizer = build_tiny_tokenizer()
    if family == "qwen3":  # Qwen3's tokenizer has a pad of its own: no [PAD] is added
        tokenizer.pad_token = "<unk>"
        config, lm = tiny_qwen3(len(tokenizer), seed=5)
    else:
        config, lm = base_model(family, len(tokenizer), seed=5)
    base = folder / "base"
    config.save_pretrained(base)
    tokenizer.save_pretrained(base)
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": "[PAD]"})
    tokenizer.add_special_tokens({"additional_special_tokens": CYWINSKI_TOKENS})
    lm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    lora = LoraConfig(
        r=8,
        lora_alpha=32,
        target_modules=TARGETS[family],
        lora_dropout=0.0,
        init_lora_weights=False,
    )
    peft_lm = get_peft_model(lm, lora)
    with torch.no_grad():
        for name, param in peft_lm.named_parameters():
            if "lora_B" in name:
                param.mul_(0.05)
    module = CodiRelease(peft_lm, 64, 96).eval()
    checkpoint = folder / "ckpt"
    checkpoint.mkdir()
    torch.save(module.state_dict(), checkpoint / "pytorch_model.bin")
    tokenizer.save_pretrained(checkpoint)
    return module, tokenizer, base, checkpoint
