"""One table per base architecture (Llama, GPT-2, Qwen3): where the abstract sites live inside
the HF module.

Recipes and result files only ever name `resid`, `attn`, `mlp`, `thought`; the module paths
below are resolved here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from nnpatch.errors import ModelError


@dataclass(frozen=True)
class Architecture:
    name: str
    decoder_path: str  # the decoder stack inside the CausalLM, e.g. "model"
    layers_attr: str  # the ModuleList of decoder layers inside the decoder
    attn_attr: str  # attention sub-block inside one decoder layer (returns a tuple)
    mlp_attr: str  # MLP sub-block inside one decoder layer (returns a tensor)
    norm_path: str  # the final norm before the LM head, relative to the CausalLM
    out_proj_attr: str  # the attention's output projection inside `attn_attr`: its input
    # is the heads' outputs side by side, [.., heads * head_dim], before they are mixed

    def decoder(self, lm: nn.Module) -> nn.Module:
        return getattr(lm, self.decoder_path)

    def layer_path(self, layer: int) -> str:
        """Dotted path of decoder layer `layer`, relative to the CausalLM."""
        return f"{self.decoder_path}.{self.layers_attr}.{layer}"

    def site_path(self, site: str, layer: int) -> str:
        """Dotted path of the module whose output is `site` at `layer`, relative to the CausalLM."""
        base = self.layer_path(layer)
        if site == "resid":
            return base
        if site == "attn":
            return f"{base}.{self.attn_attr}"
        if site == "mlp":
            return f"{base}.{self.mlp_attr}"
        if site == "head":
            return f"{base}.{self.attn_attr}.{self.out_proj_attr}"
        raise ModelError(f"site {site!r} has no per-layer module")


ARCHITECTURES = {
    "llama": Architecture("llama", "model", "layers", "self_attn", "mlp", "model.norm", "o_proj"),
    "gpt2": Architecture("gpt2", "transformer", "h", "attn", "mlp", "transformer.ln_f", "c_proj"),
    # Qwen3 lays its decoder out as Llama does (its q/k norms sit inside self_attn)
    "qwen3": Architecture("qwen3", "model", "layers", "self_attn", "mlp", "model.norm", "o_proj"),
}


def architecture_of(lm: nn.Module) -> Architecture:
    """The architecture table for a Hugging Face CausalLM, from its config's model_type."""
    model_type = getattr(lm.config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise ModelError(
            f"model_type {model_type!r} is not supported; nnpatch knows {sorted(ARCHITECTURES)}"
        )
    return ARCHITECTURES[model_type]
