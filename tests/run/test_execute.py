"""The run's stages: non-finite values are flagged or stop the run, and nothing secret is
ever written to a run folder."""

from __future__ import annotations

import json

import polars as pl
import pytest
import torch
from helpers import write_recipe

from nnpatch.errors import BaselineError
from nnpatch.run.execute import execute
from nnpatch.run.prepare import prepare


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


def test_the_manifest_and_screen_say_where_the_time_went(tmp_path):
    from nnpatch.report.screen import STAGES, render_summary

    prep = prepare(write_recipe(tmp_path, run={"report": "html"}))
    prep.seconds["imports_s"] = 0.5  # the CLI measures its imports
    finished = execute(prep)
    manifest = json.loads((finished.path / "manifest.json").read_text())
    timings = {**manifest["timings"], "report_s": manifest["report_s"]}  # after the report
    assert set(STAGES) <= set(timings) and all(timings[key] >= 0 for key in STAGES)
    line = next(x for x in render_summary(prep, finished).splitlines() if x.startswith("time:"))
    assert "imports 0.5 s" in line and "report" in line and "outside the sweep" in line
