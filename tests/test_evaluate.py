"""`nnpatch eval`: accuracy against the number of thoughts, each K's decoded answers equal
to a cache-free hooked reference, the intervals Wilson's, the folder whole or absent."""

from __future__ import annotations

import polars as pl
import pytest
from click.testing import CliRunner
from helpers import write_recipe
from reference import decoded_reference

from nnpatch.cli import main
from nnpatch.evaluate import evaluate
from nnpatch.models.presets import toy_codi
from nnpatch.models.text import answer_is
from nnpatch.pairs.builtin import BUILTIN
from nnpatch.report.stats import wilson_ci

TOY = {"preset": "toy-codi", "num_thoughts": [0, 2, 3]}
DATA = {"pairs": "toy-arithmetic", "limit": 6}


def test_accuracy_per_thought_count_equals_the_reference(tmp_path):
    """Each K's decoded answers equal the reference's (the loop run with K thoughts, then
    greedy decoding with no cache); accuracy and its Wilson interval follow from them."""
    recipe = write_recipe(tmp_path, model=TOY, data=DATA, metrics={"answer_tokens": 8})
    done = evaluate(recipe)
    model = toy_codi()
    pairs = BUILTIN["toy-arithmetic"]()[:6]
    for k in (0, 2, 3):
        model.module.num_thoughts = k
        rows = done.answers.filter(pl.col("thoughts") == k)
        assert rows["pair_id"].to_list() == [p.id for p in pairs]
        for pair, row in zip(pairs, rows.iter_rows(named=True), strict=True):
            text = decoded_reference(model, pair.clean_question, lambda: ([], []), 8)
            assert row["decoded"] == text
            assert row["correct"] == answer_is(text, pair.clean_answer)
        acc = done.accuracy.filter(pl.col("thoughts") == k).row(0, named=True)
        right = int(rows["correct"].sum())
        assert acc["n"] == 6 and acc["correct"] == right
        assert (acc["ci95_low"], acc["ci95_high"]) == pytest.approx(wilson_ci(right, 6))
    by_k = dict(done.accuracy.select("thoughts", "accuracy").iter_rows())
    assert by_k[3] == 1.0 and by_k[0] < 0.5  # the toy model needs its thoughts
    for name in ("accuracy.parquet", "answers.parquet", "eval.json"):
        assert (done.path / name).is_file()
    assert (done.path / "accuracy_by_thoughts.html").is_file()


def test_an_interrupted_eval_leaves_no_folder(tmp_path):
    """Stopped midway, nothing named eval_* exists: a folder by that name is always whole."""

    def stop(total):
        def tick(n):
            raise KeyboardInterrupt

        return tick

    recipe = write_recipe(tmp_path, model=TOY, data=DATA)
    with pytest.raises(KeyboardInterrupt):
        evaluate(recipe, progress=stop)
    assert not list((tmp_path / "outputs").rglob("eval_*"))


def test_a_list_of_thought_counts_is_refused_by_run_and_accepted_by_validate(tmp_path):
    """`run` patches one K: a list gets one Error line naming the field; `validate` checks
    an eval recipe's cells at its largest K."""
    recipe = write_recipe(tmp_path, model=TOY, data=DATA)
    result = CliRunner().invoke(main, ["run", str(recipe)])
    assert result.exit_code != 0
    assert "model.num_thoughts" in result.output and "nnpatch eval" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert CliRunner().invoke(main, ["validate", str(recipe)]).exit_code == 0


@pytest.mark.parametrize(
    ("model", "field"),
    [
        ({"preset": "tiny-random-gpt2"}, "num_thoughts"),
        ({"preset": "toy-codi", "num_thoughts": [1, 1]}, "num_thoughts"),
    ],
)
def test_counts_a_model_cannot_take_are_refused(tmp_path, model, field):
    """A plain LM has no thoughts; a count listed twice is a typo: one line, non-zero."""
    recipe = write_recipe(
        tmp_path, model={**model, "num_thoughts": model.get("num_thoughts", [0, 1])}, data=DATA
    )
    result = CliRunner().invoke(main, ["eval", str(recipe)])
    assert result.exit_code != 0 and field in result.output
    assert len(result.output.strip().splitlines()) == 1
