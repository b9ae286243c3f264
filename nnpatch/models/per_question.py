"""Models whose thoughts differ per question: how many (CoLaR decides its latent count) or
which tokens (a verbalized chain of thought, written by the model). The thoughts of each
question are found once, by running the model on it, when it reads the pairs
(`bind_pairs`, the engine's hook for per-pair positions). A pair's thoughts run to the
shorter of its two questions'; rows past them are counted, never patched; a batch masks each
row after its own count, so it gives every question its own values."""

from __future__ import annotations

import torch

from nnpatch.errors import ModelError
from nnpatch.models.base import Encoded, ModelShape, ThoughtModel, decode_input, pad_rows


class PerQuestionThoughts(ThoughtModel):
    thoughts_settable = False  # each question's own count (a policy, or the text written)
    shares_question = False  # rows carry their own thoughts
    sites = ("resid", "attn", "mlp", "head", "thought")
    writes = False  # thoughts are written tokens (fed as ids), not latents
    thought_name = "thought"

    def __init__(self, *args, max_thoughts: int = 64, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.max_thoughts = max_thoughts
        self.thoughts: dict[str, list[int]] = {}  # question text → its thoughts (ids or 0s)
        self.span_lengths: dict[str, int] = {}  # pair id → thoughts both questions have

    def decide(self, ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
        """Each question's thoughts, from the model itself (a batch of left-padded rows)."""
        raise NotImplementedError

    @property
    def shape(self) -> ModelShape:
        if not self.thoughts:
            raise ModelError(
                f"{self.name}: its thoughts differ per question; positions are known once it "
                "reads the pairs (nnpatch inspect or run checks them)"
            )
        return ModelShape(
            self.name,
            self.num_layers,
            self.num_thoughts,
            sites=self.sites,
            num_heads=self.num_heads,
        )

    def thoughts_of(self, questions: list[str], batch_size: int = 16) -> list[list[int]]:
        missing = [q for q in dict.fromkeys(questions) if q not in self.thoughts]
        for first in range(0, len(missing), batch_size):
            chunk = missing[first : first + batch_size]
            ids, mask = pad_rows([self.question_ids(q) for q in chunk], self.module.pad_id, True)
            found = self.decide(ids.to(self.device), mask.to(self.device))
            self.thoughts |= dict(zip(chunk, found, strict=True))
        return [self.thoughts[q] for q in questions]

    def count(self, questions: list[str]) -> list[int]:
        """How many thoughts each question has (found once per text)."""
        return [len(t) for t in self.thoughts_of(questions)]

    def bind_pairs(self, pairs, markers=None) -> None:
        clean = self.count([p.clean_question for p in pairs])
        corrupt = self.count([p.corrupted_question for p in pairs])
        self.span_lengths = {p.id: min(a, b) for p, a, b in zip(pairs, clean, corrupt, strict=True)}
        self.module.num_thoughts = max(clean + corrupt)

    def span_of(self, pair) -> int | None:
        return self.span_lengths[pair.id]

    def position_tokens(self, question: str) -> dict[str, tuple[int, str]]:
        """bot; this question's thoughts after it; eot after its last thought."""
        n = len(self.question_ids(question)) - 1
        written = self.thoughts.get(question, [0] * self.num_thoughts)
        out = {"bot": (n, self.tokenizer.decode([self.question_ids(question)[-1]]))}
        for t, token in enumerate(written):
            text = self.tokenizer.decode([token]) if self.writes else f"<{self.thought_name} {t}>"
            out[str(t)] = (n + 1 + t, text)
        out["eot"] = (n + 1 + len(written), "<eot>")
        return out

    def _thought_tensors(self, questions: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        found = self.thoughts_of(questions)
        counts = torch.tensor([len(t) for t in found], dtype=torch.long, device=self.device)
        if not self.writes:
            return counts, None
        width = max(self.module.num_thoughts, *counts.tolist(), 1)
        ids = torch.full((len(found), width), self.module.pad_id, dtype=torch.long)
        for row, tokens in enumerate(found):
            ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        return counts, ids.to(self.device)

    def encode(self, questions, clean_answers, corrupt_answers) -> Encoded:
        encoded = super().encode(questions, clean_answers, corrupt_answers)
        encoded.thought_counts, encoded.thought_ids = self._thought_tensors(questions)
        return encoded

    def trace_inputs(self, encoded: Encoded) -> tuple[tuple, dict]:
        kwargs = {"thought_counts": encoded.thought_counts, **decode_input(encoded)}
        if encoded.thought_ids is not None:
            kwargs["thought_ids"] = encoded.thought_ids
        return encoded.args(), kwargs

    def greedy_answers(self, questions: list[str], max_new: int = 24) -> list[str]:
        ids, mask = pad_rows([self.question_ids(q) for q in questions], self.module.pad_id, True)
        counts, written = self._thought_tensors(questions)
        saved, self.module.num_thoughts = self.module.num_thoughts, int(counts.max())
        try:
            rows = self.module.generate(
                ids.to(self.device),
                mask.to(self.device),
                self.eos_id,
                max_new,
                self.prefix_ids() if self.prompt_in_input else [],
                thought_counts=counts,
                thought_ids=written,
            )
        finally:
            self.module.num_thoughts = saved
        return [self.tokenizer.decode(row, skip_special_tokens=True) for row in rows]


class VerbalizedThoughts(PerQuestionThoughts):
    """A checkpoint trained to also think in words (Cywiński et al.'s and the multimode
    ones' verbalized mode), read in that mode: after bot it writes its chain of thought
    greedily until it writes eot; thought t is the t-th token it wrote, fed as that token."""

    writes = True
    sites = ("resid", "attn", "mlp", "head")  # no projection: a written token is its embedding
    thought_name = "token"

    @torch.no_grad()
    def decide(self, ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
        module = self.module
        state = module.ask(ids, mask)
        written: list[list[int]] = [[] for _ in range(ids.shape[0])]
        done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        steps = torch.zeros((ids.shape[0], self.max_thoughts), dtype=torch.long, device=ids.device)
        for step in range(self.max_thoughts):
            token = module._logits(state.hidden[:, -1]).argmax(-1)
            done |= token == module.eot_id
            if done.all():
                break
            for row in (~done).nonzero().flatten().tolist():
                written[row].append(int(token[row]))
            steps[:, step] = token
            state = module._thought(state, written=steps)
        return written
