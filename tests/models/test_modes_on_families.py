"""Every analysis mode on every continuous-thought family: a run finishes with finite
baselines, or the family's loop refuses the mode in one line that says why (PCCoT's
parallel slots have no sequential loop for mediation, knockout or attention to follow).

CODI's and plain LMs' modes have their own reference tests; here each newer family runs
each mode once on its tiny release, including a source other than the donor pair (steer)
and a single head."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from helpers import write_recipe
from release_builders import write_coconut_release

from nnpatch.errors import RecipeError
from nnpatch.run.execute import execute
from nnpatch.run.prepare import prepare

GOLDEN = Path(__file__).parent.parent / "golden"
PATCHES = {
    "single": {"mode": "single", "layers": [0], "positions": [0, 1]},
    "layer": {"mode": "layer", "layers": [0]},
    "chained": {"mode": "chained", "layers": [0]},
    "sets": {"mode": "sets", "layers": [0], "sets": [[0, 1]]},
    "subsets": {"mode": "subsets", "layers": [0], "positions": [0, 1]},
    "mediation": {"mode": "mediation", "layers": [0], "positions": [0]},
    "knockout": {"mode": "knockout"},
    "attribution": {"mode": "attribution", "layers": [0]},
    "lens": {"mode": "lens", "layers": [0]},
    "attention": {"mode": "attention", "layers": [0]},
    "record": {"mode": "record", "layers": [0]},
    "steer": {"mode": "single", "layers": [0], "positions": [0], "source": "steer"},
    "head": {"mode": "single", "site": "head", "heads": [1], "layers": [0], "positions": [0]},
}
REFUSED = {"pccot": {"mediation", "knockout", "attention"}}


def _families(tmp_path: Path) -> dict[str, dict]:
    _, _, base, checkpoint = write_coconut_release(tmp_path)
    colar = GOLDEN / "colar"
    return {
        "coconut": {"kind": "coconut", "base": str(base), "checkpoint": str(checkpoint)},
        "pccot": {
            "kind": "pccot",
            "base": str(GOLDEN / "pccot" / "gpt2"),
            "checkpoint": str(GOLDEN / "pccot" / "whyNLP" / "pccot-gpt2"),
        },
        "colar": {
            "kind": "colar",
            "base": str(colar / "models" / "llms" / "Llama-3.2-1B-Instruct"),
            "checkpoint": str(colar),
        },
    }


@pytest.mark.parametrize("family", ["coconut", "pccot", "colar"])
def test_every_mode_runs_or_is_refused_in_one_line(tmp_path, family):
    model = _families(tmp_path)[family]
    finished, refused = [], []
    for name, patch in PATCHES.items():
        recipe = write_recipe(tmp_path, name=name, model=model, patch=patch, data={"limit": 2})
        try:
            run = execute(prepare(recipe))
        except RecipeError as err:
            assert "\n" not in str(err) and "patch.mode" in str(err), (name, str(err))
            refused.append(name)
            continue
        baselines = pl.read_parquet(run.path / "baselines.parquet")
        numbers = baselines.select(pl.col(pl.Float32, pl.Float64)).to_numpy()
        assert numbers.size and np.isfinite(numbers).all(), name
        finished.append(name)
    assert set(refused) == REFUSED.get(family, set()), refused
    assert len(finished) + len(refused) == len(PATCHES)
