"""`run.batch_size = "auto"`: sized from measured memory, recorded, reused on resume, and
never a change to any row."""

from __future__ import annotations

import json
import tomllib
from contextlib import contextmanager

import polars as pl
import pytest
import torch
from helpers import ROOT, write_recipe
from polars.testing import assert_frame_equal

from nnpatch.run import batching
from nnpatch.run.execute import execute
from nnpatch.run.prepare import prepare
from nnpatch.sizes import parse_size


class FakeMeter(batching.Meter):
    """A device where each patched row costs `per_row` bytes on top of `fixed` per batch:
    `counting(prep)` lets it see each probe's rows."""

    def __init__(self, per_row: int, fixed: int = 10_000, in_use: int = 0):
        self.per_row, self.fixed, self.used, self.rows = per_row, fixed, in_use, 0

    def in_use(self) -> int:
        return self.used

    @contextmanager
    def peak(self):
        found = batching.Peak()
        yield found
        found.bytes = self.fixed + self.per_row * self.rows

    def counting(self, prep) -> None:
        patch = prep.engine.patch

        def counted(pairs, answers, baselines, rows, *rest, **kw):
            self.rows = len(rows)
            return patch(pairs, answers, baselines, rows, *rest, **kw)

        prep.engine.patch = counted


@pytest.fixture
def fake_device(monkeypatch):
    def install(meter: FakeMeter) -> FakeMeter:
        monkeypatch.setattr(batching.Meter, "for_device", staticmethod(lambda device: meter))
        return meter

    return install


def _recipe(tmp_path, **run):
    return write_recipe(
        tmp_path, data={"limit": 4}, run={"output": str(tmp_path / "out"), "report": "none", **run}
    )


def test_the_batch_fills_the_budget_from_the_measured_cost_per_row(tmp_path, fake_device):
    meter = fake_device(FakeMeter(per_row=1000, fixed=123_456, in_use=50_000))
    prep = prepare(_recipe(tmp_path, batch_size="auto", max_memory="200KB"))
    meter.counting(prep)
    base = prep.engine.baselines(prep.pairs, prep.answers, prep.mode.cells(prep.plan), 4)
    chosen = batching.choose(prep, base, rows_planned=10_000)
    budget = parse_size("200KB")
    assert chosen.size == int((budget * batching.HEADROOM - 50_000) // 1000)  # fixed cost cancels
    assert "1000 B per row" in chosen.how
    assert batching.choose(prep, base, rows_planned=7).size == 7  # never more than the run's rows


def test_a_budget_below_what_is_in_use_still_runs_one_row_at_a_time(tmp_path, fake_device):
    meter = fake_device(FakeMeter(per_row=1000, in_use=10**9))
    prep = prepare(_recipe(tmp_path, batch_size="auto", max_memory="1MiB"))
    meter.counting(prep)
    base = prep.engine.baselines(prep.pairs, prep.answers, prep.mode.cells(prep.plan), 4)
    assert batching.choose(prep, base, rows_planned=100).size == 1


def test_a_number_or_a_recorded_choice_is_kept(tmp_path):
    prep = prepare(_recipe(tmp_path, batch_size=5))
    assert batching.choose(prep, None, 100).size == 5
    prep = prepare(_recipe(tmp_path, batch_size="auto"))
    resumed = batching.choose(prep, None, 100, {"size": 3, "how": "auto: measured"})
    assert resumed.size == 3 and resumed.how.startswith("resumed")


def test_an_auto_run_records_its_choice_and_its_rows_equal_a_fixed_batch(tmp_path):
    auto = execute(prepare(_recipe(tmp_path, batch_size="auto")))
    fixed = execute(prepare(_recipe(tmp_path, batch_size=3)))
    manifest = json.loads((auto.path / "manifest.json").read_text())
    assert manifest["batch"]["size"] >= 1 and manifest["batch"]["how"].startswith("auto")
    assert json.loads((fixed.path / "manifest.json").read_text())["batch"]["size"] == 3
    read = lambda run: pl.read_parquet(run.path / "results.parquet")  # noqa: E731
    assert_frame_equal(read(auto), read(fixed), check_exact=False, rtol=0, atol=1e-4)


def test_modes_whose_rows_hold_more_than_a_patch_keep_the_default(tmp_path):
    recipe = write_recipe(
        tmp_path,
        data={"limit": 4},
        patch={"mode": "attribution", "verify_top": 2},
        run={"output": str(tmp_path / "out"), "report": "none", "batch_size": "auto"},
    )
    chosen = batching.choose(prepare(recipe), None, 100)
    assert chosen.size == batching.DEFAULT and "not sized by memory" in chosen.how


def test_the_resident_set_meter_sees_a_batch_sized_allocation():
    meter = batching.Meter.for_device(torch.device("cpu"))
    if meter is None:
        pytest.skip("no /proc here")
    with meter.peak() as peak:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        del block
    assert peak.bytes >= 48 * 2**20


def test_a_resumed_auto_run_cuts_its_rows_as_it_first_did(tmp_path, monkeypatch):
    """The size is chosen once and recorded before any shard; a resume reuses it even where
    it would now choose another, so its saved shards stay whole batches."""
    recipe = _recipe(tmp_path, batch_size="auto")
    expected = pl.read_parquet(execute(prepare(recipe)).path / "results.parquet")

    def stop_after_two_batches(total):
        seen = []

        def tick(n):
            seen.append(n)
            if len(seen) > 2:
                raise KeyboardInterrupt

        return tick

    monkeypatch.setattr(batching, "CPU_CAP", 8)
    with pytest.raises(KeyboardInterrupt) as stopped:
        execute(prepare(recipe), progress=stop_after_two_batches)
    run_dir = stopped.value.run_dir
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["batch"]["size"] == 8 and manifest["status"] == "interrupted"

    monkeypatch.setattr(batching, "CPU_CAP", 13)  # a fresh choice would cut rows elsewhere
    resumed = execute(prepare(recipe), resume=(run_dir, manifest))
    final = json.loads((resumed.path / "manifest.json").read_text())
    assert final["batch"]["size"] == 8 and final["timings"]["rows_computed"] < expected.height
    got = pl.read_parquet(resumed.path / "results.parquet")
    assert_frame_equal(got, expected, check_exact=False, rtol=0, atol=1e-4)


def _sweep_here(path) -> bool:
    """Eval recipes (a list of thought counts) are `nnpatch eval`'s; remote ones run against
    NDIF's server in tests/ndif."""
    recipe = tomllib.loads(path.read_text())
    counts = recipe["model"].get("num_thoughts")
    return not isinstance(counts, list) and not recipe.get("run", {}).get("remote")


SWEEPS = [p for p in sorted((ROOT / "recipes").glob("*.toml")) if _sweep_here(p)]


@pytest.mark.parametrize("recipe", SWEEPS, ids=lambda p: p.stem)
def test_every_recipe_runs_with_an_automatic_batch(tmp_path, recipe):
    """Each mode's rows go through the probe (a mode whose rows run through another engine
    gives that engine)."""
    overrides = ['run.batch_size="auto"', 'run.report="none"', f'run.output="{tmp_path}"']
    finished = execute(prepare(recipe, overrides, limit=3))
    manifest = json.loads((finished.path / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["batch"]["size"] >= 1


def test_a_run_started_before_batch_sizes_were_recorded_resumes_with_its_recipes(tmp_path):
    recipe = _recipe(tmp_path, batch_size=2)
    expected = pl.read_parquet(execute(prepare(recipe)).path / "results.parquet")
    with pytest.raises(KeyboardInterrupt) as stopped:
        execute(prepare(recipe), progress=lambda total: _raise_after(3))
    run_dir = stopped.value.run_dir
    manifest = json.loads((run_dir / "manifest.json").read_text())
    del manifest["batch"]  # as an older nnpatch wrote it
    resumed = execute(prepare(recipe), resume=(run_dir, manifest))
    assert json.loads((resumed.path / "manifest.json").read_text())["batch"]["size"] == 2
    assert pl.read_parquet(resumed.path / "results.parquet").equals(expected)


def _raise_after(batches: int):
    seen = []

    def tick(n):
        seen.append(n)
        if len(seen) > batches:
            raise KeyboardInterrupt

    return tick
