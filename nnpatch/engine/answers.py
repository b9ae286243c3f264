"""Decoded answers: the metrics read from what a row's run writes when left to decode (the
measure the latent-reasoning papers report first), rather than from teacher-forced logits.

A traced forward returns each row's greedy answer ids after its logit metrics (the raw row,
as shards keep it, so a resumed run reads back the same tokens); `split` turns raw rows into
the metric values and the answer texts: `correct` is 1 where the text gives the clean answer
as the family's evaluation reads it (CODI: its last number, compared as a number; Coconut:
after the last "#"), `gives_corrupted` where it gives the corrupted answer.
"""

from __future__ import annotations

import torch

from nnpatch.engine.metrics import TEXT, numeric, scored
from nnpatch.models.text import answer_is
from nnpatch.pairs import Pair


def split(
    raw: torch.Tensor, names: list[str], model, pairs: list[Pair], receivers: list[int]
) -> tuple[torch.Tensor, list[str] | None]:
    """Raw rows [rows, logit metrics + answer tokens] → (values [rows, numeric(names)], one
    answer text per row, or None when the run decodes nothing). `receivers[i]` is the pair
    whose answers row i's text is compared with."""
    logit_names = scored(names)
    by_name = {name: raw[:, j] for j, name in enumerate(logit_names)}
    if len(logit_names) == raw.shape[1]:
        return _stacked([by_name[name] for name in numeric(names)], raw.shape[0]), None
    ids = raw[:, len(logit_names) :].long().tolist()
    texts = [model.answer_text(row) for row in ids]
    for name in JUDGED:
        by_name[name] = torch.tensor(judged(name, texts, model, pairs, receivers), dtype=raw.dtype)
    return _stacked([by_name[name] for name in numeric(names)], raw.shape[0]), texts


JUDGED = {"correct": "clean_answer", "gives_corrupted": "corrupted_answer"}


def judged(
    name: str, texts: list[str], model, pairs: list[Pair], receivers: list[int]
) -> list[bool]:
    """Whether each decoded text gives its pair's clean (`correct`) or corrupted
    (`gives_corrupted`) answer, read as the family's evaluation reads it."""
    expected = [getattr(pairs[r], JUDGED[name]) for r in receivers]
    return [
        answer_is(model.read_answer(text), answer)
        for text, answer in zip(texts, expected, strict=True)
    ]


def _stacked(columns: list[torch.Tensor], rows: int) -> torch.Tensor:
    return torch.stack(columns, dim=-1) if columns else torch.empty(rows, 0)


def has_text(names: list[str]) -> bool:
    return TEXT in names
