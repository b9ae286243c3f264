"""The runner: non-finite values are flagged or stop the run, and nothing secret or outside
the output folder is ever written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import polars as pl
import pytest
import torch
from helpers import write_recipe

from nnpatch.errors import BaselineError
from nnpatch.run.execute import execute
from nnpatch.run.prepare import prepare

PACKAGE = Path(__file__).parent.parent / "nnpatch"


def test_rows_with_nonfinite_metrics_are_flagged_and_counted(tmp_path):
    """A patch that writes inf into one cell gives rows flagged `nonfinite`, counted in the
    manifest; every other row stays finite and unflagged."""
    prep = prepare(write_recipe(tmp_path, patch={"mode": "single", "layers": [0, 1]}))
    donor = prep.engine.baselines

    def poisoned(*args, **kwargs):
        base = donor(*args, **kwargs)
        cell = (1, "0")
        base.donor[cell] = torch.full_like(base.donor[cell], float("inf"))
        return base

    prep.engine.baselines = poisoned
    finished = execute(prep)
    results = pl.read_parquet(finished.path / "results.parquet")
    metrics = results.select(prep.recipe.metrics.names).to_numpy()
    finite = torch.isfinite(torch.from_numpy(metrics)).all(dim=1).numpy()
    assert results["nonfinite"].to_list() == (~finite).tolist()
    flagged = results.filter(pl.col("nonfinite"))
    assert flagged.height > 0 and set(flagged["layer"]) == {1}
    manifest = json.loads((finished.path / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["nonfinite_rows"] == flagged.height


def test_nonfinite_baselines_fail_the_run_naming_the_pair(tmp_path):
    prep = prepare(write_recipe(tmp_path))
    with torch.no_grad():
        prep.model.module.lm.model.norm.weight.fill_(float("nan"))
    with pytest.raises(BaselineError, match=r"^pair tiny-\d+: the unpatched run's clean logits"):
        execute(prep)
    (manifest,) = (tmp_path / "outputs").glob("*/*/manifest.json")
    assert json.loads(manifest.read_text())["status"] == "failed"
    assert not (manifest.parent / "results.parquet").exists()


def test_an_api_key_in_the_environment_never_reaches_the_run_folder(tmp_path, monkeypatch):
    secret = "ndif-secret-0123456789abcdef"
    monkeypatch.setenv("NDIF_API_KEY", secret)
    finished = execute(prepare(write_recipe(tmp_path)))
    for file in finished.path.rglob("*"):
        if file.is_file():
            assert secret.encode() not in file.read_bytes(), file


def test_recipes_are_data_the_package_never_evaluates_or_imports_by_name():
    """No eval/exec/pickle anywhere in nnpatch, and the only dynamic imports read the
    package's own lazy-attribute tables: a recipe value cannot become code."""
    forbidden = re.compile(r"(?<![.\w])(eval|exec|__import__)\s*\(|pickle\.loads?\(")
    dynamic = re.compile(r"import_module\((?!_LAZY\[name\]|_MODULES\[name\])")
    offenders = [
        f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}"
        for path in PACKAGE.rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if forbidden.search(line) or dynamic.search(line)
    ]
    assert not offenders


@pytest.mark.parametrize(
    ("decoded", "expected", "right"),
    [
        ("The answer is: 72.0", "72", True),  # numbers compare as numbers
        ("72", "72.0", True),
        ("1,000", "1000", True),
        ("The answer is: 7 2", "72", False),  # CODI reads the last number: 2
        ("-3", "-3", True),
        ("18 apples, so 19", "18", False),
        ("no number", "18", False),
        ("Yes", "Yes", True),  # non-numeric answers compare as text
        ("Yes.", "Yes", False),
    ],
)
def test_answers_compare_as_codi_evaluation_does(decoded, expected, right):
    from nnpatch.models.base import answer_is

    assert answer_is(decoded, expected) is right


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


def test_every_transformers_load_refuses_remote_code():
    """Each from_pretrained / from_config / TransformersModel call in nnpatch passes
    trust_remote_code=False (the folder check refuses auto_map before any of them)."""
    calls = re.compile(r"(from_pretrained|from_config|TransformersModel)\(")
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        for match in calls.finditer(text):
            if match.group(1) == "TransformersModel" and "self.module" in text[match.end() :][:20]:
                continue  # wraps a module already built here: nothing is loaded
            call = text[match.end() : text.index(")\n", match.end())]
            if "trust_remote_code=False" not in call:
                line = text[: match.start()].count("\n") + 1
                offenders.append(f"{path.relative_to(PACKAGE)}:{line}")
    assert not offenders
