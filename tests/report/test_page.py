"""Reports: charts as real images, report.html renders in Chromium, re-rendering reproduces."""

from __future__ import annotations

import hashlib
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner
from helpers import write_recipe

from nnpatch import load_run
from nnpatch.cli import main
from nnpatch.run.execute import execute
from nnpatch.run.prepare import prepare

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory):
    """A chained run and a layer run, both denoise, plus the chained run in noise."""
    folder = tmp_path_factory.mktemp("runs")
    out = {}
    for name, patch in [
        ("chained", {"mode": "chained"}),
        ("layer", {"mode": "layer"}),
        ("noise", {"mode": "chained", "direction": "noise"}),
    ]:
        recipe = write_recipe(
            folder, name=name, patch=patch, data={"limit": 6}, run={"report": "full"}
        )
        out[name] = execute(prepare(recipe)).path
    return out


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_run_writes_charts_report_and_summary(run_dirs):
    """Every run folder has report.html, summary.md and each chart as HTML and PNG."""
    folder = run_dirs["chained"]
    charts = folder / "charts"
    stems = {p.stem for p in charts.glob("*.png")}
    assert {"chained_recovery", "heatmap_recovery", "heatmap_logit_diff", "top_recovery"} <= stems
    assert {p.stem for p in charts.glob("*.html")} == stems
    for png in charts.glob("*.png"):
        width, height = png_size(png)
        assert width >= 300 and height >= 200, (png.name, width, height)
    assert "layer_recovery" in {p.stem for p in (run_dirs["layer"] / "charts").glob("*.png")}
    summary = (folder / "summary.md").read_text()
    assert "## Top cells by mean recovery" in summary and "| differs from control |" in summary


def test_report_command_reproduces_the_files(run_dirs):
    """nnpatch report re-renders byte-identical files from the stored tables alone."""
    folder = run_dirs["layer"]
    files = [folder / "report.html", folder / "summary.md", *sorted((folder / "charts").iterdir())]
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    shutil.rmtree(folder / "charts")
    (folder / "report.html").unlink()
    (folder / "summary.md").unlink()
    result = CliRunner().invoke(main, ["report", str(folder)])
    assert result.exit_code == 0, result.output
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in files} == before


def test_load_run_gives_the_tables(run_dirs):
    """nnpatch.load_run: polars tables and the records of a run."""
    run = load_run(run_dirs["chained"])
    assert isinstance(run.results, pl.DataFrame) and run.summary.height > 0
    assert run.lead_metric == "recovery" and run.manifest["status"] == "finished"


def test_compare_paired_runs(run_dirs, tmp_path):
    """compare: A - B per cell with a paired bootstrap CI, and its charts."""
    out = tmp_path / "cmp"
    result = CliRunner().invoke(
        main, ["compare", str(run_dirs["chained"]), str(run_dirs["noise"]), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    table = pl.read_parquet(out / "compare.parquet")
    assert table["paired"].all()
    a, b = load_run(run_dirs["chained"]).results, load_run(run_dirs["noise"]).results
    row = table.filter((pl.col("metric") == "logit_diff") & (pl.col("layer") == 1)).row(
        0, named=True
    )
    where = pl.col("positions").list.join(",") == ",".join(row["positions"])
    pick = lambda r: r.filter(~pl.col("control") & (pl.col("layer") == 1) & where)  # noqa: E731
    expected = pick(a)["logit_diff"].mean() - pick(b)["logit_diff"].mean()
    np.testing.assert_allclose(row["mean"], expected, rtol=1e-9)
    assert row["ci95_low"] <= row["mean"] <= row["ci95_high"]
    assert (out / "compare.html").exists() and png_size(out / "diff_recovery.png")[0] > 300


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_report_renders_in_headless_chromium(run_dirs, tmp_path):
    """report.html renders offline: every chart draws, no console errors, non-blank pixels."""
    page = (run_dirs["chained"] / "report.html").resolve()
    flags = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=10000",
        "--enable-logging=stderr",
        "--v=0",
    ]
    dom = subprocess.run(
        [*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120
    )
    charts = dom.stdout.count('id="chart-')
    assert charts >= 8
    drawn = [
        part
        for part in dom.stdout.split('id="chart-')[1:]
        if "<svg" in part.split("</div>")[0] or "<canvas" in part.split("</div>")[0]
    ]
    assert len(drawn) == charts, "a chart did not draw"
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line]
    assert not [line for line in console if "rror" in line or "Uncaught" in line], console
    shot = tmp_path / "shot.png"
    subprocess.run(
        [*flags, "--window-size=1200,2400", f"--screenshot={shot}", page.as_uri()],
        capture_output=True,
        timeout=120,
    )
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"))
    charts_area = pixels[1100:2300]  # below the tables: the first rows of charts
    assert (charts_area < 200).mean() > 0.05, "the chart area is blank"


def test_compare_resid_against_thought_site(tmp_path):
    """The thought site (no layers) is compared against every layer of a resid run."""
    runs = {}
    for site in ("resid", "thought"):
        recipe = write_recipe(
            tmp_path,
            name=site,
            data={"limit": 4},
            patch={"mode": "single", "site": site, "positions": [0, 3]},
            run={"report": "full"},
        )
        runs[site] = execute(prepare(recipe)).path
    out = tmp_path / "cmp"
    result = CliRunner().invoke(
        main, ["compare", str(runs["resid"]), str(runs["thought"]), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    table = pl.read_parquet(out / "compare.parquet")
    assert sorted(table["layer"].unique().to_list()) == [0, 1, 2, 3]
    row = table.filter(
        (pl.col("metric") == "logit_diff") & (pl.col("layer") == 2) & (pl.col("positions") == ["3"])
    ).row(0, named=True)
    a, b = load_run(runs["resid"]).results, load_run(runs["thought"]).results
    real = ~pl.col("control") & (pl.col("position") == "3")
    expected = (
        a.filter(real & (pl.col("layer") == 2))["logit_diff"].mean()
        - b.filter(real)["logit_diff"].mean()
    )
    np.testing.assert_allclose(row["mean"], expected, rtol=1e-9)


def test_the_vega_bundle_is_built_once_per_release_and_rebuilt_when_damaged(tmp_path, monkeypatch):
    import vl_convert

    from nnpatch.report import page

    built = []
    monkeypatch.setattr(vl_convert, "javascript_bundle", lambda: built.append(1) or "vega();")
    monkeypatch.setenv("NNPATCH_CACHE", str(tmp_path / "cache"))
    fresh = lambda: page.vega_bundle.__wrapped__()  # noqa: E731 - past the per-process cache
    assert fresh() == "vega();" and fresh() == "vega();" and len(built) == 1
    (cached,) = (tmp_path / "cache").glob("vega-bundle-*.js")
    cached.write_text("veg")  # truncated: its digest no longer matches
    assert fresh() == "vega();" and len(built) == 2
    (tmp_path / "a-file").write_text("")  # a cache that cannot be made: built each time
    monkeypatch.setenv("NNPATCH_CACHE", str(tmp_path / "a-file" / "cache"))
    assert fresh() == "vega();" and fresh() == "vega();" and len(built) == 4
