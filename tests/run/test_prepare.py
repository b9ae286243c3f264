"""The prepare stage: what it keeps and refuses before anything runs."""

from __future__ import annotations


def test_both_correct_filter_compares_numerically(tmp_path):
    """The both-correct filter keeps a pair whose decoded answers are '72.0' and '80' for
    answers '72' and '80.00', and drops one whose answer is only a prefix."""
    from nnpatch.pairs import Pair
    from nnpatch.recipe import validate_recipe
    from nnpatch.run.prepare import _keep_both_correct

    decoded = {"q1": "The answer is: 72.0", "k1": "80", "q2": "The answer is: 7", "k2": "9"}

    class Decoder:
        def greedy_answers(self, questions):
            return [decoded[q] for q in questions]

    pairs = [Pair("a", "q1", "72", "k1", "80.00"), Pair("b", "q2", "72", "k2", "9")]
    recipe = validate_recipe(
        {
            "name": "f",
            "model": {"preset": "toy-codi"},
            "data": {"pairs": "toy-arithmetic", "filter": "both-correct"},
            "patch": {"mode": "single"},
        }
    )
    kept, counts = _keep_both_correct(Decoder(), pairs, {}, recipe, tmp_path / "r.toml")
    assert [p.id for p in kept] == ["a"] and counts["filter_dropped"] == 1
