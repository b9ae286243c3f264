"""Plain causal LMs (`kind = "causal_lm"`): any Hugging Face CausalLM folder or hub id that
writes its reasoning as text. A position is a token of the marked span of the prompt
(`nnpatch.models.causal_lm`); the only kind NDIF can host, having no custom loop."""

from __future__ import annotations

import json
from pathlib import Path

from nnpatch.models.causal_lm import load_causal_lm
from nnpatch.models.kinds.base import Kind


def _recognise(folder: Path) -> bool:
    """An HF model folder: a config naming a CausalLM architecture, beside its weights."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names = config.get("architectures") if isinstance(config, dict) else None
    causal = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    weights = any(folder.glob("*.safetensors")) or any(folder.glob("pytorch_model*.bin"))
    return weights and any(name in causal for name in names or ())


KIND = Kind(
    name="causal_lm",
    about="a plain Hugging Face causal LM, patched over a marked span of its prompt",
    fields=("checkpoint", "base", "revision", "answer_prefix"),
    load=load_causal_lm,
    shape=None,
    recognise=_recognise,
    hosted=True,
)
