"""CoLaR's loop, made deterministic: latents from the policy's mean, as many as the model
itself decides per question.

xiaomi-research/colar (src/models/model_base.py `latent_generate`) reads the question as
"Question: {q} Let's think step by step:(Thinking speed: {k})###" without BOS; then, up to 64
times, samples a latent from a Gaussian policy on the last final hidden state, scales it by
the base model's embedding std, feeds it, and samples a token from that step's logits: "###"
ends the row's thinking (the latent that triggered it stays). "###" is then fed and the
answer ("Answer:X") decoded. nnpatch takes the policy's mean and the argmax at each step, so a
question always thinks the same latents: the count is the model's own, per question, and a
batch masks each row's latents after its count exactly as the authors' batched loop does.

A position is bot (the question's last token, "###"), latent 0..n-1 of the question, or eot
(the "###" after the latents). Latent k lives at decoder call k + 1, as in CODI.
"""

from __future__ import annotations

import torch
from torch import nn

from nnpatch.models.codi import CodiModel
from nnpatch.models.per_question import PerQuestionThoughts


class PolicyMean(nn.Module):
    """CoLaR's latent policy read at its mean (`prj` to the loop): fc → mean, times the
    embedding std the policy was trained to predict in units of. `log_std` is loaded (the
    release has it) but a mean never reads it."""

    def __init__(self, hidden: int, intermediate: int, embeds_std: float, log_std: bool) -> None:
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(hidden, intermediate),
            nn.GELU(),
            nn.Linear(intermediate, intermediate),
            nn.LayerNorm(intermediate),
        )
        self.mean = nn.Linear(intermediate, hidden)
        self.log_std = nn.Linear(intermediate, hidden) if log_std else None
        self.embeds_std = embeds_std

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.mean(self.fc(hidden)) * self.embeds_std


class ColarModel(CodiModel):
    """CODI's recurrent forward with CoLaR's policy as `prj`; eot is the "###" separator."""

    @torch.no_grad()
    def count_thoughts(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, limit: int
    ) -> torch.Tensor:
        """Latents each question thinks: up to and including the first step whose argmax
        token is the separator, at most `limit` ([B], long)."""
        batch = input_ids.shape[0]
        counts = torch.full((batch,), limit, dtype=torch.long, device=input_ids.device)
        done = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
        state = self.ask(input_ids, attention_mask)
        for step in range(limit):
            state = self._thought(state, torch.where(done, step, limit))
            ends = self._logits(state.hidden[:, -1]).argmax(-1) == self.eot_id
            counts = torch.where(ends & ~done, step + 1, counts)
            done |= ends
            if done.all():
                break
        return counts


class ColarThoughts(PerQuestionThoughts):
    """CoLaR with its tokenizer: each question thinks the latents the model itself decides
    (`PerQuestionThoughts` holds them per question and masks batches by them)."""

    thought_name = "latent"

    def decide(self, ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
        counts = self.module.count_thoughts(ids, mask, self.max_thoughts)
        return [[0] * int(count) for count in counts]  # latents: only their count is known

    prompt = "{question}"  # the loader sets CoLaR's template with its thinking speed

    def question_text(self, question: str) -> str:
        """The question in CoLaR's template, as its prepare_inputs builds it (not stripped)."""
        return self.prompt.replace("{question}", question)

    def read_answer(self, decoded: str) -> str:
        """As extract_answer_from_output reads it: the text after the first "Answer:" (up
        to a second one), or all of it."""
        parts = decoded.split(self.answer_prefix)
        return parts[1] if len(parts) > 1 else decoded

    def question_ids(self, question: str) -> list[int]:
        """The prompt as CoLaR's prepare_inputs builds it: no BOS, nothing after "###"."""
        return self.tokenizer(self.question_text(question), add_special_tokens=False).input_ids
