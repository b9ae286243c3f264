"""Metrics on hand-built logits, checked against values worked out by hand."""

from __future__ import annotations

import math

import torch

from nnpatch.engine import metrics as M


def targets() -> M.AnswerTargets:
    # clean answer tokens [1, 2], corrupted [1, 3]: they first differ at index 1
    return M.AnswerTargets(
        torch.tensor([[1, 2]]),
        torch.tensor([[1, 1]]),
        torch.tensor([[1, 3]]),
        torch.tensor([[1, 1]]),
        torch.tensor([1]),
    )


def logits(at_diff: list[float]) -> torch.Tensor:
    first = torch.tensor([0.0, 5.0, 0.0, 0.0])
    return torch.stack([first, torch.tensor(at_diff)]).unsqueeze(0)  # [1, 2, 4]


def test_scores_read_the_first_differing_position():
    """logit_diff uses index 1, where clean says 2 and corrupted says 3."""
    s = M.score(logits([0, 0, 4.0, 1.0]), logits([0, 0, 4.0, 1.0]), targets())
    assert s.logit_diff.item() == 3.0
    expected = math.log(math.exp(5) / (math.exp(5) + 3)) + math.log(
        math.exp(4) / (math.exp(4) + math.exp(1) + 2)
    )
    assert math.isclose(s.logprob_clean.item(), expected, rel_tol=1e-6)


def test_recovery_is_zero_at_corrupt_and_one_at_clean():
    """recovery = (ld - ld_corrupt) / (ld_clean - ld_corrupt)."""
    clean = M.score(logits([0, 0, 4.0, 1.0]), logits([0, 0, 4.0, 1.0]), targets())
    corrupt = M.score(logits([0, 0, 1.0, 2.0]), logits([0, 0, 1.0, 2.0]), targets())
    half = M.score(logits([0, 0, 2.0, 1.0]), logits([0, 0, 2.0, 1.0]), targets())
    refs = M.References(
        clean.logits,
        corrupt.logits,
        corrupt.logits.argmax(-1),
        clean.logit_diff,
        corrupt.logit_diff,
    )
    names = ["recovery", "kl_to_clean", "kl_from_corrupt", "l2", "top1_changed"]
    values = {
        n: M.compute(names, s, refs)[0].tolist()
        for n, s in [("clean", clean), ("corrupt", corrupt), ("half", half)]
    }
    assert values["clean"][0] == 1.0 and values["corrupt"][0] == 0.0
    assert values["half"][0] == 0.5  # ld 1 between -1 and 3
    assert values["clean"][1] == 0.0 and values["corrupt"][2] == 0.0
    assert math.isclose(values["clean"][3], math.sqrt(9 + 1), rel_tol=1e-6)
    assert values["clean"][4] == 1.0 and values["corrupt"][4] == 0.0


def test_recovery_is_nan_not_inf_when_the_gap_vanishes():
    """A pair whose clean and corrupted logit differences coincide has no recovery."""
    s = M.score(logits([0, 0, 2.0, 1.0]), logits([0, 0, 2.0, 1.0]), targets())
    refs = M.References(s.logits, s.logits, s.logits.argmax(-1), s.logit_diff, s.logit_diff)
    assert torch.isnan(M.compute(["recovery"], s, refs)).all()
