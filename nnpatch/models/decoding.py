"""A plain LM's traced forward when answers are decoded: the teacher-forced pass the metrics
read, then greedy decoding from the same (patched) prompt, in one module call, so one trace
sees both (nnsight's TransformersModel traces only the HF forward)."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel

from nnpatch.models.codi import Decode, greedy_tokens


class DecodingLM(nn.Module):
    """`lm`'s own submodules under their own names (so every cell's path is the same as in
    the LM), and a forward that scores, then decodes."""

    def __init__(self, lm: PreTrainedModel) -> None:
        super().__init__()
        for name, child in lm.named_children():
            self.add_module(name, child)
        object.__setattr__(self, "lm", lm)  # called, not registered: its children are ours

    def forward(self, inputs: dict, logits_to_keep: int, answer_width: int, decode: Decode):
        """Rows are [clean-answer copies; corrupted-answer copies], left-padded, each prompt
        ending `answer_width` columns before the end. Returns (kept logits, the clean copies'
        greedy answer ids [B, decode.tokens])."""
        out = self.lm(**inputs, logits_to_keep=logits_to_keep, use_cache=True)
        batch = out.logits.shape[0] // 2
        prompt_end = inputs["input_ids"].shape[1] - answer_width
        cache = out.cache
        for layer in cache.layers:  # both copies share the patched prompt: keep the first
            layer.keys = layer.keys[:batch, :, :prompt_end]
            layer.values = layer.values[:batch, :, :prompt_end]
        mask = inputs["attention_mask"][:batch, :prompt_end]
        position = inputs["position_ids"][:batch, prompt_end - 1 : prompt_end]

        def step(token: torch.Tensor, mask: torch.Tensor, position: torch.Tensor):
            logits = self.lm(
                input_ids=token,
                attention_mask=mask,
                position_ids=position,
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            ).logits
            return logits[:, -1]

        first = out.logits[:batch, 0]  # kept logit 0 follows the prompt's last token
        return out.logits, greedy_tokens(step, first, mask, position, decode)
