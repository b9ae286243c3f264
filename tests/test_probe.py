"""Linear probes on a record run: a value encoded at one cell is decoded there and not at a
noise cell, folds never split a pair, the control task carries nothing of the activations,
and `nnpatch probe` writes its table into a record run folder and refuses any other."""

from __future__ import annotations

import json

import polars as pl
import pytest
import torch
from click.testing import CliRunner
from helpers import write_pairs, write_recipe

from nnpatch.cli import main
from nnpatch.probe import probe_table
from nnpatch.probe.fit import control_labels, cross_validate, fit_predict, pair_folds

PAIRS, D, CLASSES = 40, 16, 5


def synthetic(seed: int = 0):
    """PAIRS pairs x 2 runs, a value of CLASSES classes: cell (0, "0") holds it along one
    direction per class, plus noise; cell (1, "0") is noise only. Rows: the tensor, its index
    and the labels, as a record run's would be."""
    g = torch.Generator().manual_seed(seed)
    n = 2 * PAIRS
    value = torch.randint(0, CLASSES, (n,), generator=g)
    encoded = 3 * torch.randn(CLASSES, D, generator=g)[value] + torch.randn(n, D, generator=g)
    tensor = torch.cat([encoded, torch.randn(n, D, generator=g)])  # [2 cells * n, d]
    ids = [f"p{i:02d}" for i in range(PAIRS) for _ in ("clean", "corrupted")]
    runs = ["clean", "corrupted"] * PAIRS
    index = pl.DataFrame(
        {
            "row": list(range(2 * n)),
            "pair_id": ids * 2,
            "run": runs * 2,
            "site": ["resid"] * (2 * n),
            "layer": [0] * n + [1] * n,
            "position": ["0"] * (2 * n),
        }
    )
    labels = pl.DataFrame(
        {
            "pair_id": ids,
            "run": runs,
            "value": ["answer"] * n,
            "label": [str(int(v)) for v in value],
        }
    )
    return tensor, index, labels


def test_a_linearly_encoded_value_is_decoded_where_it_is_and_not_elsewhere():
    """Held out, the probe decodes the value at the encoding cell far above its control and
    the majority class; at the noise cell it stays near the majority class, with no
    selectivity."""
    tensor, index, labels = synthetic()
    table, notes = probe_table(tensor, index, labels, folds=5, seed=0)
    assert notes == [] and table.height == 2
    at, noise = (table.filter(pl.col("layer") == layer).row(0, named=True) for layer in (0, 1))
    assert at["accuracy"] >= 0.9 and at["selectivity"] >= 0.6
    assert at["ci95_low"] > max(at["majority"], at["control_accuracy"])
    assert abs(noise["accuracy"] - noise["majority"]) <= 0.15 and noise["selectivity"] <= 0.15
    assert at["n"] == noise["n"] == 2 * PAIRS and at["folds"] == 5 and at["classes"] == CLASSES


def test_folds_split_by_pair():
    """Both runs of a pair share one fold, so no pair is on both sides of a split; the
    folds differ by one pair at most and depend on the seed alone."""
    ids = [f"p{i}" for i in range(7) for _ in range(2)]
    fold = pair_folds(ids, 3, seed=4)
    by_pair: dict[str, set[int]] = {}
    for pair, f in zip(ids, fold.tolist(), strict=True):
        by_pair.setdefault(pair, set()).add(f)
    assert all(len(folds) == 1 for folds in by_pair.values())
    for held in range(3):
        test = {p for p, f in zip(ids, fold.tolist(), strict=True) if f == held}
        train = {p for p, f in zip(ids, fold.tolist(), strict=True) if f != held}
        assert test and not test & train
    sizes = sorted(torch.bincount(fold).tolist())
    assert sizes == [4, 4, 6]  # 7 pairs into 3 folds: 2, 2 and 3 pairs of 2 runs
    assert pair_folds(ids, 3, seed=4).tolist() == fold.tolist()
    assert any(pair_folds(ids, 3, seed=s).tolist() != fold.tolist() for s in range(5))
    with pytest.raises(ValueError, match="3 folds"):
        pair_folds(["a", "a", "b", "b"], 3, seed=0)


def test_the_control_labels_are_the_labels_permuted_by_the_seed():
    """Same values, same frequencies, a fixed order per seed, unrelated to the examples."""
    labels = [str(i % 4) for i in range(40)]
    control = control_labels(labels, seed=3)
    assert sorted(control) == sorted(labels) and control != labels
    assert control_labels(labels, seed=3) == control != control_labels(labels, seed=4)


def test_a_control_that_is_a_function_of_the_value_is_decoded_wherever_the_value_is():
    """Why the control permutes the labels: mapping each value to a random class (as
    Hewitt & Liang map word types) only merges classes here, and the probe decodes the
    merged task as well as the real one, leaving no selectivity to measure."""
    tensor, index, labels = synthetic()
    x, value = tensor[: 2 * PAIRS], labels["label"].to_list()
    g = torch.Generator().manual_seed(0)
    merged = {v: str(int(torch.randint(0, CLASSES, (1,), generator=g))) for v in sorted(set(value))}
    ids = labels["pair_id"].to_list()
    real = cross_validate(x, value, ids, 5, 0)
    mapped = cross_validate(x, [merged[v] for v in value], ids, 5, 0)
    assert mapped["accuracy"] >= real["accuracy"] - 0.05 and real["selectivity"] >= 0.6


def test_problems_fitted_together_equal_problems_fitted_alone():
    """The folds of a cell are one batched fit; each problem's predictions are those of its
    own fit."""
    tensor, _, labels = synthetic()
    x = tensor[: 2 * PAIRS]
    y = torch.tensor([int(v) for v in labels["label"]])
    fold = pair_folds(labels["pair_id"].to_list(), 4, seed=0)
    train = fold.unsqueeze(0) != torch.arange(4).unsqueeze(1)  # [4, n]
    together = fit_predict(x, y.expand(4, -1), train, CLASSES)
    for p in range(4):
        alone = fit_predict(x, y.unsqueeze(0), train[p : p + 1], CLASSES)
        assert (alone[0][~train[p]] == together[p][~train[p]]).all()


COLUMNS = [
    "site",
    "layer",
    "position",
    "value",
    "accuracy",
    "ci95_low",
    "ci95_high",
    "n",
    "classes",
    "majority",
    "control_accuracy",
    "selectivity",
    "folds",
]


def test_probe_on_a_record_run_of_the_embedded_model(tmp_path):
    """`nnpatch probe` on a toy-codi record run: probe.parquet (every cell x answer and
    each step), probe.md and a heatmap per value, and a summary naming each value's cell."""
    recipe = write_recipe(
        tmp_path,
        model={"preset": "toy-codi"},
        data={"pairs": "toy-arithmetic", "limit": 12},
        patch={"mode": "record", "layers": [2]},
    )
    assert CliRunner().invoke(main, ["run", str(recipe)]).exit_code == 0
    (folder,) = (tmp_path / "outputs" / "test").iterdir()
    result = CliRunner().invoke(main, ["probe", str(folder), "--folds", "3"])
    assert result.exit_code == 0, result.output
    table = pl.read_parquet(folder / "probe.parquet")
    assert table.columns == COLUMNS
    assert set(table["value"]) == {"answer", "step_1", "step_2", "step_3"}
    assert table.height == 3 * 4 and set(table["folds"]) == {3} and set(table["n"]) == {24}
    for value in ("answer", "step_1", "step_2", "step_3"):
        assert (folder / "charts" / f"probe_{value}.html").is_file()
    assert "| step 1 | L2 t0 |" in (folder / "probe.md").read_text()
    assert "which cell decodes which value" in result.output


def test_the_steps_are_left_out_when_the_pairs_cannot_be_read_again(tmp_path):
    """A run whose pairs file is gone is probed on its answers (from baselines.parquet),
    with a note saying why the steps are not."""
    rows = [
        {
            "id": f"q{i}",
            "clean_question": f"Tom has {i + 2} coins and finds 3 more. How many?",
            "clean_answer": str(i + 5),
            "corrupted_question": f"Tom has {i + 12} coins and finds 3 more. How many?",
            "corrupted_answer": str(i + 15),
            "clean_steps": [str(i + 5)],
            "corrupted_steps": [str(i + 15)],
        }
        for i in range(4)
    ]
    pairs = write_pairs(tmp_path / "pairs.jsonl", rows)
    recipe = write_recipe(
        tmp_path,
        data={"pairs": "pairs.jsonl"},
        patch={"mode": "record", "layers": [1], "positions": [0]},
    )
    assert CliRunner().invoke(main, ["run", str(recipe)]).exit_code == 0
    (folder,) = (tmp_path / "outputs" / "test").iterdir()
    pairs.unlink()
    result = CliRunner().invoke(main, ["probe", str(folder), "--folds", "2"])
    assert result.exit_code == 0, result.output
    assert set(pl.read_parquet(folder / "probe.parquet")["value"]) == {"answer"}
    assert "note: steps not probed: the pairs 'pairs.jsonl' cannot be loaded again" in (
        result.output
    )


def test_a_folder_that_is_not_a_record_run_is_refused_in_one_line(tmp_path):
    """A finished run of another mode: one Error line naming the folder and its mode, exit 2,
    nothing written."""
    recipe = write_recipe(tmp_path, patch={"mode": "single", "layers": [0]})
    assert CliRunner().invoke(main, ["run", str(recipe)]).exit_code == 0
    (folder,) = (tmp_path / "outputs" / "test").iterdir()
    result = CliRunner().invoke(main, ["probe", str(folder)])
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"Error: {folder}: a single run, not a record run; probe a folder that "
        '`nnpatch record` (or mode = "record") wrote'
    )
    assert not (folder / "probe.parquet").exists()
    resolved = json.loads((folder / "resolved.json").read_text())
    assert resolved["patch"]["mode"] == "single"


def test_probe_has_help():
    """`nnpatch probe --help` says what it does."""
    result = CliRunner().invoke(main, ["probe", "--help"])
    assert result.exit_code == 0 and "RUN_DIR" in result.output and "--folds" in result.output
