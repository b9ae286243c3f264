"""Answer metrics, computed on the device inside the trace (DESIGN.md, "Metrics").

All position-wise metrics are read at the answer position: the first answer token where
the clean and corrupted answers differ, teacher-forced after eot + "The answer is:".
Answers end with eos, so "1" and "12" differ at the eos.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class AnswerTargets:
    """Per-row answer tokens and where the two answers first differ."""

    clean: torch.Tensor  # [B, A] clean answer ids (right-padded)
    clean_mask: torch.Tensor  # [B, A] 1 on real tokens
    corrupt: torch.Tensor  # [B, A']
    corrupt_mask: torch.Tensor  # [B, A']
    diff_index: torch.Tensor  # [B] first index where the answers differ


@dataclass
class Scores:
    """What one forward says about the answers, per row."""

    logits: torch.Tensor  # [B, V] at the answer position
    logit_diff: torch.Tensor  # [B]
    logprob_clean: torch.Tensor  # [B] log P(clean answer), whole answer
    logprob_corrupt: torch.Tensor  # [B]


@dataclass
class References:
    """Each row's pair baselines: the unpatched clean and corrupted runs."""

    clean_logits: torch.Tensor  # [B, V] at the answer position
    corrupt_logits: torch.Tensor  # [B, V]
    receiver_top1: torch.Tensor  # [B] argmax of the run being patched
    clean_logit_diff: torch.Tensor  # [B]
    corrupt_logit_diff: torch.Tensor  # [B]


def score(logits_clean: torch.Tensor, logits_corrupt: torch.Tensor, t: AnswerTargets) -> Scores:
    """Reduce teacher-forced answer logits ([B, A, V], [B, A', V]) to per-row scores."""
    rows = torch.arange(logits_clean.shape[0], device=logits_clean.device)
    at_diff = logits_clean[rows, t.diff_index].float()  # [B, V]
    clean_tok = t.clean[rows, t.diff_index]
    corrupt_tok = t.corrupt[rows, t.diff_index]
    logit_diff = at_diff[rows, clean_tok] - at_diff[rows, corrupt_tok]
    return Scores(
        logits=at_diff,
        logit_diff=logit_diff,
        logprob_clean=_sequence_logprob(logits_clean, t.clean, t.clean_mask),
        logprob_corrupt=_sequence_logprob(logits_corrupt, t.corrupt, t.corrupt_mask),
    )


def _sequence_logprob(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    token_logprobs = logprobs.gather(-1, ids.unsqueeze(-1)).squeeze(-1)  # [B, A]
    return (token_logprobs * mask).sum(-1)


def _kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(P ‖ Q) per row, from logits."""
    log_p = torch.log_softmax(p_logits, dim=-1)
    log_q = torch.log_softmax(q_logits, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


GAP_EPS = 1e-6  # a clean-corrupted logit gap below this leaves recovery undefined


def _recovery(s: Scores, r: References) -> torch.Tensor:
    return recovery_of(s.logit_diff, r)


def recovery_of(logit_diff: torch.Tensor, r: References) -> torch.Tensor:
    """(ld - ld_corrupt) / (ld_clean - ld_corrupt); NaN where the gap is ~0 (not ±inf).
    Affine in ld, so an estimate of ld gives recovery's estimate exactly."""
    gap = r.clean_logit_diff - r.corrupt_logit_diff
    value = (logit_diff - r.corrupt_logit_diff) / gap
    return torch.where(gap.abs() > GAP_EPS, value, torch.full_like(value, float("nan")))


Metric = Callable[[Scores, References], torch.Tensor]

METRICS: dict[str, Metric] = {
    "logit_diff": lambda s, r: s.logit_diff,
    "recovery": lambda s, r: _recovery(s, r),
    "logprob_diff": lambda s, r: s.logprob_clean - s.logprob_corrupt,
    "kl_to_clean": lambda s, r: _kl(r.clean_logits, s.logits),
    "kl_from_corrupt": lambda s, r: _kl(s.logits, r.corrupt_logits),
    "l2": lambda s, r: (s.logits - r.corrupt_logits).norm(dim=-1),
    "top1_changed": lambda s, r: (s.logits.argmax(-1) != r.receiver_top1).float(),
}


# the references' vocabulary-wide logits a metric reads (the rest read per-row scalars)
READS_LOGITS = {
    "kl_to_clean": "clean_logits",
    "kl_from_corrupt": "corrupt_logits",
    "l2": "corrupt_logits",
}


def needed(refs: References, names: list[str]) -> References:
    """The references with only the [rows, vocab] logits the metrics read: a traced forward
    carries what its body references, and on NDIF each unread one would be 4 × vocab bytes
    per row sent for nothing."""
    kept = {READS_LOGITS[name] for name in names if name in READS_LOGITS}
    empty = refs.clean_logits[:, :0]

    def keep(field: str) -> torch.Tensor:
        return getattr(refs, field) if field in kept else empty

    return References(
        keep("clean_logits"),
        keep("corrupt_logits"),
        refs.receiver_top1,
        refs.clean_logit_diff,
        refs.corrupt_logit_diff,
    )


# read from each row's greedy decoded answer, not from teacher-forced logits: the text, and
# whether it gives the clean answer (as CODI's evaluation compares) or the corrupted one
DECODED = ("answer", "correct", "gives_corrupted")
TEXT = "answer"  # the one metric that is text, not a number


# what each metric column holds (the docs' columns page is written from these)
DEFINITIONS = {
    "logit_diff": "logit(clean token) - logit(corrupted token) at the answer position",
    "recovery": "(ld - ld_corrupt) / (ld_clean - ld_corrupt): 0 = corrupted run, 1 = clean run; "
    "NaN where the two runs' gap is below 1e-6",
    "logprob_diff": "log P(clean answer) - log P(corrupted answer), whole answer",
    "kl_to_clean": "KL(P_clean || P_patched) at the answer position",
    "kl_from_corrupt": "KL(P_patched || P_corrupt) at the answer position",
    "l2": "||logits_patched - logits_corrupt||_2 at the answer position",
    "top1_changed": "1 if the top token differs from the unpatched receiver run's",
    "answer": "the greedy decoded answer's text (a string)",
    "correct": "1 if the decoded answer gives the clean answer, read as the family reads it",
    "gives_corrupted": "1 if the decoded answer gives the corrupted answer",
}


def scored(names: list[str]) -> list[str]:
    """The metrics read from the answer logits."""
    return [name for name in names if name in METRICS]


def numeric(names: list[str]) -> list[str]:
    """The metrics with a number per row (every one but the decoded text)."""
    return [name for name in names if name != TEXT]


def decodes(names: list[str]) -> bool:
    return any(name in DECODED for name in names)


def compute(names: list[str], scores: Scores, refs: References) -> torch.Tensor:
    """The named logit metrics as one [B, len(names)] float tensor (one small transfer)."""
    names = scored(names)
    if not names:
        return torch.empty(scores.logits.shape[0], 0, device=scores.logits.device)
    return torch.stack([METRICS[name](scores, refs).float() for name in names], dim=-1)


def with_decoded(values: torch.Tensor, decoded: torch.Tensor | None) -> torch.Tensor:
    """The logit metrics [B, S], then the decoded answer ids [B, tokens] when there are any
    (float32 holds token ids exactly up to 2^24): the rows as a trace returns them."""
    if decoded is None:
        return values
    return torch.cat([values, decoded.to(values.dtype)], dim=-1)
