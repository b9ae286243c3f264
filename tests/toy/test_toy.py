"""The embedded toy model: its pairs, and its quality gates on held-out problems."""

from __future__ import annotations

import pytest

from nnpatch.models.presets import TOY_WEIGHTS
from nnpatch.pairs.toy import pair_problems, toy_arithmetic
from nnpatch.toy.evaluate import (
    accuracy,
    best_layer_recovery,
    held_out,
    mean_thought_accuracy,
)


def test_toy_pairs_change_one_number_and_recompute_the_answer():
    """Corrupted problems change the start; answers follow the ops mod 10, and differ."""
    for clean, corrupt in pair_problems(16):
        assert clean.ops == corrupt.ops and clean.start != corrupt.start
        for problem in (clean, corrupt):
            value = problem.start
            for op, k in problem.ops:
                value = {"+": value + k, "-": value - k, "*": value * k}[op] % 10
            assert value == problem.answer
        assert clean.answer != corrupt.answer
    assert [p.id for p in toy_arithmetic()] == [f"toy-{i:03d}" for i in range(64)]


needs_weights = pytest.mark.skipif(
    not (TOY_WEIGHTS / "model.safetensors").exists(), reason="embedded weights not built"
)


@pytest.fixture(scope="module")
def toy():
    from nnpatch.models.presets import toy_codi

    return toy_codi()


@needs_weights
def test_gate_accuracy_with_thoughts(toy):
    """Gate 1: at least 95% of 512 held-out problems answered right (greedy, real loop)."""
    assert accuracy(toy, held_out()) >= 0.95


@needs_weights
def test_gate_mean_thoughts_drop_accuracy(toy):
    """Gate 2: replacing every thought by its mean costs at least 30 points."""
    problems = held_out()
    assert accuracy(toy, problems) - mean_thought_accuracy(toy, problems) >= 0.30


@needs_weights
def test_gate_a_layer_recovers_the_answer(toy):
    """Gate 3: some layer's full-thought patch recovers at least half the logit difference."""
    _, recovery, _ = best_layer_recovery(toy, toy_arithmetic())
    assert recovery >= 0.5


def test_training_is_deterministic(tmp_path):
    """Two runs with the same seed write identical weights."""
    from safetensors.torch import load_file

    from nnpatch.toy.train import train

    for name in ("a", "b"):
        train(
            tmp_path / name,
            steps=3,
            batch=4,
            lr=1e-3,
            seed=0,
            num_ops=2,
            teacher_steps=1,
            evaluate_every=0,
        )
    a, b = (load_file(str(tmp_path / n / "model.safetensors")) for n in ("a", "b"))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
