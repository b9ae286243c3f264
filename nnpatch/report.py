"""A run's report, rendered from its stored tables alone: charts, report.html, summary.md.

`render(run_dir)` is what `nnpatch run` calls at the end and `nnpatch report RUN_DIR` calls
again later; the same tables give the same files. `load_run` is the notebook entry point.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from nnpatch import charts
from nnpatch.errors import NnpatchError
from nnpatch.results import cell_label, lead_metric, top_cells
from nnpatch.rundir import write_text

TOP = 10
BUNDLE = "vega-bundle.js"  # Vega, Vega-Lite and vega-embed, so charts render offline


@dataclass
class Run:
    """A run folder's tables and records, as polars frames and dicts."""

    path: Path
    results: pl.DataFrame
    baselines: pl.DataFrame
    summary: pl.DataFrame
    manifest: dict
    resolved: dict
    recipe_text: str

    @property
    def metrics(self) -> list[str]:
        return self.resolved["metrics"]["names"]

    @property
    def lead_metric(self) -> str:
        return lead_metric(self.metrics)

    @property
    def positions(self) -> list[str]:
        return self.resolved["resolved"]["model"]["positions"]


def load_run(path: str | Path, manifest: dict | None = None) -> Run:
    """Open a finished run folder (`manifest`: use this one instead of the stored one)."""
    path = Path(path)
    try:
        manifest = manifest or json.loads((path / "manifest.json").read_text())
        return Run(
            path,
            pl.read_parquet(path / "results.parquet"),
            pl.read_parquet(path / "baselines.parquet"),
            pl.read_parquet(path / "summary.parquet"),
            manifest,
            json.loads((path / "resolved.json").read_text()),
            (path / "recipe.toml").read_text(encoding="utf-8"),
        )
    except FileNotFoundError as err:
        raise NnpatchError(
            f"{path}: not a finished run folder ({Path(err.filename).name} is missing)"
        ) from None


def run_charts(run: Run) -> dict[str, object]:
    """Every chart of the run, by file stem."""
    out: dict[str, object] = {}
    mode = run.resolved["patch"]["mode"]
    lead = run.lead_metric
    if mode == "chained":
        out[f"chained_{lead}"] = charts.chained_lines(run.summary, lead)
    if mode == "layer":
        out[f"layer_{lead}"] = charts.layer_bars(run.summary, lead)
    if mode == "attribution":
        return out | _attribution_charts(run)
    for metric in run.metrics:
        out[f"heatmap_{metric}"] = charts.heatmap(run.summary, metric, run.positions)
    out[f"top_{lead}"] = charts.top_distributions(run.results, run.summary, lead)
    return out


def _attribution_charts(run: Run) -> dict[str, object]:
    """Heatmaps of the estimates; estimate against exact, and the exact cells' per-pair values."""
    out: dict[str, object] = {}
    estimated = run.summary.filter(pl.col("mode") == "attribution")
    exact = run.summary.filter(pl.col("mode") == "single")
    for metric in run.metrics:
        if estimated.filter(pl.col("metric") == metric)["mean"].is_nan().all():
            continue  # no first-order estimate for this metric
        title = f"{metric}: attribution estimate, mean over pairs"
        out[f"heatmap_{metric}"] = charts.heatmap(estimated, metric, run.positions, title)
        if exact.height:
            out[f"estimate_vs_exact_{metric}"] = charts.estimate_vs_exact(run.summary, metric)
    if exact.height:
        results = run.results.filter(pl.col("mode") == "single")
        lead = run.lead_metric
        out[f"top_{lead}"] = charts.top_distributions(results, exact, lead)
    return out


def render(path: str | Path, manifest: dict | None = None) -> list[Path]:
    """Write charts/*.html and *.png, report.html and summary.md into the run folder."""
    import vl_convert as vlc

    run = load_run(path, manifest)
    folder = run.path / "charts"
    folder.mkdir(exist_ok=True)
    bundle = vlc.javascript_bundle()
    write_text(folder / BUNDLE, bundle)  # one copy, shared by the chart pages beside it
    written, specs = [folder / BUNDLE], {}
    for stem, chart in run_charts(run).items():
        spec = chart.to_dict()
        specs[stem] = spec
        write_text(folder / f"{stem}.html", _chart_page(stem, spec))
        png = folder / f"{stem}.png"
        tmp = png.with_name(f".{png.name}.tmp")
        tmp.write_bytes(vlc.vegalite_to_png(spec, scale=2))
        tmp.replace(png)
        written += [folder / f"{stem}.html", png]
    write_text(run.path / "report.html", _page(run, specs, bundle))
    write_text(run.path / "summary.md", _markdown(run))
    return [*written, run.path / "report.html", run.path / "summary.md"]


def _top(run: Run) -> pl.DataFrame:
    return top_cells(run.summary, run.lead_metric, TOP)


def _fmt(value, spec: str = "+.3f") -> str:
    return "" if value is None else format(value, spec)


def _top_rows(run: Run) -> list[list[str]]:
    rows = []
    for row in _top(run).iter_rows(named=True):
        control = "" if row["control_mean"] is None else _fmt(row["control_mean"])
        beats = {True: "yes", False: "no", None: ""}[row["differs_from_control"]]
        rows.append(
            [
                cell_label(row),
                _fmt(row["mean"]),
                f"[{_fmt(row['ci95_low'])}, {_fmt(row['ci95_high'])}]",
                str(row["n"]),
                control,
                beats,
            ]
        )
    return rows


TOP_HEADER = ["cell", "mean", "95% CI", "n", "control", "differs from control"]


def _baseline_rows(run: Run) -> list[list[str]]:
    base = run.baselines
    return [
        [name, _fmt(base[f"clean_{name}"].mean()), _fmt(base[f"corrupted_{name}"].mean())]
        for name in run.metrics
    ]


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _facts(run: Run) -> list[tuple[str, str]]:
    m, patch = run.manifest, run.resolved["patch"]
    pairs = ", ".join(f"{k} {v}" for k, v in m["pairs"].items())
    timings = ", ".join(f"{k} {v:.2f}" for k, v in m.get("timings", {}).items())
    model = m["model"]
    return [
        (
            "model",
            f"{model['name']} ({model['num_layers']} layers, {model['dtype']}, {model['device']})",
        ),
        (
            "patch",
            f"mode {patch['mode']}, site {patch['site']}, direction "
            f"{patch['direction']}, control {patch.get('control', 'none')}",
        ),
        ("pairs", pairs),
        ("rows", str(m.get("rows", run.results.height))),
        ("status", m["status"]),
        ("timings (s, rows/s)", timings),
        ("versions", ", ".join(f"{k} {v}" for k, v in m["versions"].items())),
    ]


STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right}th{background:#f3f3f3}pre{background:#f7f7f7;padding:1em;overflow:auto}
.chart{margin:1.5em 0}dt{font-weight:bold;float:left;width:12em}dd{margin-left:13em}"""


def _page(run: Run, specs: dict[str, dict], bundle: str) -> str:
    """One self-contained page: the Vega bundle inline, no network needed to render."""
    title = html.escape(f"nnpatch: {run.resolved['name']} ({run.path.name})")
    facts = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in _facts(run))
    divs = "".join(f'<div class="chart" id="chart-{i}"></div>' for i in range(len(specs)))
    embeds = "".join(
        f"vegaEmbed('#chart-{i}', {json.dumps(spec)}, {{actions: false}});"
        for i, spec in enumerate(specs.values())
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title><style>{STYLE}</style>
<script>{bundle}</script></head><body>
<h1>{title}</h1><dl>{facts}</dl>
<h2>Baselines (mean over pairs)</h2>
{_table(["metric", "clean", "corrupted"], _baseline_rows(run))}
<h2>Top cells by mean {html.escape(run.lead_metric)}</h2>
<p>95% CIs are percentile bootstraps over pairs. A cell differs from the control when the CI of its
paired difference to the random-donor control excludes zero.</p>
{_table(TOP_HEADER, _top_rows(run))}
<h2>Charts</h2>{divs}
<h2>Recipe</h2><pre>{html.escape(run.recipe_text)}</pre>
<script>{embeds}</script>
</body></html>
"""


def _chart_page(stem: str, spec: dict) -> str:
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(stem)}'
        f'</title><script src="{BUNDLE}"></script></head><body><div id="chart"></div>'
        f"<script>vegaEmbed('#chart', {json.dumps(spec)});</script></body></html>\n"
    )


def _markdown(run: Run) -> str:
    lines = [f"# {run.resolved['name']} ({run.path.name})", ""]
    lines += [f"- **{k}**: {v}" for k, v in _facts(run)]
    lines += [
        "",
        "## Baselines (mean over pairs)",
        "",
        "| metric | clean | corrupted |",
        "|---|---|---|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in _baseline_rows(run)]
    lines += [
        "",
        f"## Top cells by mean {run.lead_metric}",
        "",
        "| " + " | ".join(TOP_HEADER) + " |",
        "|" + "---|" * len(TOP_HEADER),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in _top_rows(run)]
    if run.resolved["patch"]["mode"] == "attribution":
        lines += _estimate_lines(run)
    return "\n".join(lines) + "\n"


def _estimate_lines(run: Run) -> list[str]:
    table = charts.estimate_exact_table(run.summary, run.lead_metric)
    lines = [
        "",
        f"## Attribution: estimate against exact patching ({run.lead_metric}, verified cells)",
        "",
        "| cell | estimate | exact | exact 95% CI |",
        "|---|---|---|---|",
    ]
    return lines + [
        f"| {r['cell']} | {r['estimate']:+.3f} | {r['exact']:+.3f} | "
        f"[{r['ci95_low']:+.3f}, {r['ci95_high']:+.3f}] |"
        for r in table.iter_rows(named=True)
    ]
