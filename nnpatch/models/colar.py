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

from nnpatch.errors import ModelError
from nnpatch.models.base import Encoded, ModelShape, ThoughtModel, pad_rows
from nnpatch.models.codi import CodiModel


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


class ColarThoughts(ThoughtModel):
    """CoLaR with its tokenizer. Its latent counts are known once it reads the pairs
    (`bind_pairs`, the engine's hook for per-pair positions): a pair's latents run to the
    shorter of its two questions' counts, and rows past them are counted, never patched."""

    shares_question = False  # rows carry their own latent counts

    def __init__(self, *args, max_latents: int = 64, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.max_latents = max_latents
        self.counts: dict[str, int] = {}  # question text → its latent count
        self.span_lengths: dict[str, int] = {}  # pair id → latents both questions have

    @property
    def shape(self) -> ModelShape:
        if not self.counts:
            raise ModelError(
                f"{self.name}: CoLaR decides its latent count per question; positions are "
                "known once it reads the pairs (nnpatch inspect or run checks them)"
            )
        return ModelShape(self.name, self.num_layers, self.num_thoughts, num_heads=self.num_heads)

    def count(self, questions: list[str], batch_size: int = 16) -> list[int]:
        """The model's own latent count for each question (computed once per text)."""
        missing = [q for q in dict.fromkeys(questions) if q not in self.counts]
        for first in range(0, len(missing), batch_size):
            chunk = missing[first : first + batch_size]
            ids, mask = pad_rows([self.question_ids(q) for q in chunk], self.module.pad_id, True)
            found = self.module.count_thoughts(
                ids.to(self.device), mask.to(self.device), self.max_latents
            )
            self.counts |= dict(zip(chunk, map(int, found), strict=True))
        return [self.counts[q] for q in questions]

    def bind_pairs(self, pairs, markers=None) -> None:
        clean = self.count([p.clean_question for p in pairs])
        corrupt = self.count([p.corrupted_question for p in pairs])
        self.span_lengths = {p.id: min(a, b) for p, a, b in zip(pairs, clean, corrupt, strict=True)}
        self.module.num_thoughts = max(clean + corrupt)

    def span_of(self, pair) -> int | None:
        return self.span_lengths[pair.id]

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

    def position_tokens(self, question: str) -> dict[str, tuple[int, str]]:
        """bot is the prompt's last token ("###"); latent t follows it; eot after the last
        latent of this question."""
        n = len(self.question_ids(question)) - 1
        count = self.counts.get(question, self.num_thoughts)
        out = {"bot": (n, "###")}
        out |= {str(t): (n + 1 + t, f"<latent {t}>") for t in range(count)}
        out["eot"] = (n + 1 + count, "###")
        return out

    def encode(self, questions, clean_answers, corrupt_answers) -> Encoded:
        encoded = super().encode(questions, clean_answers, corrupt_answers)
        counts = torch.tensor(self.count(questions), dtype=torch.long)
        encoded.thought_counts = counts.to(self.device)
        return encoded

    def trace_inputs(self, encoded: Encoded) -> tuple[tuple, dict]:
        return encoded.args(), {"thought_counts": encoded.thought_counts}

    def greedy_answers(self, questions: list[str], max_new: int = 24) -> list[str]:
        ids, mask = pad_rows([self.question_ids(q) for q in questions], self.module.pad_id, True)
        counts = torch.tensor(self.count(questions), device=self.device)
        saved, self.module.num_thoughts = self.module.num_thoughts, int(counts.max())
        try:
            rows = self.module.generate(
                ids.to(self.device),
                mask.to(self.device),
                self.eos_id,
                max_new,
                thought_counts=counts,
            )
        finally:
            self.module.num_thoughts = saved
        return [self.tokenizer.decode(row, skip_special_tokens=True) for row in rows]
