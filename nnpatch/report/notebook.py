"""A finished run as Jupyter shows it (`Run._repr_html_`): its facts, its key table and its
lead metric's heatmap, inline, from the folder's own files."""

from __future__ import annotations

import base64
import html

from nnpatch.report.facts import html_table, key_table, run_facts


def run_html(run) -> str:
    facts = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in run_facts(run)
    )
    key = key_table(run)
    parts = [
        f"<h3>nnpatch run {html.escape(run.resolved['name'])}</h3>",
        f"<p><code>{html.escape(str(run.path))}</code></p>",
        f"<table>{facts}</table>",
        f"<h4>{html.escape(key.title)}</h4>",
        html_table(key.header, key.rows),
        _main_chart(run),
    ]
    return "\n".join(p for p in parts if p)


def _main_chart(run) -> str:
    """The lead metric's heatmap as an inline PNG, or a line saying where the charts are."""
    charts = run.charts
    stem = f"heatmap_{run.lead_metric}"
    chosen = charts.get(stem) or next((p for p in charts.values() if p.suffix == ".png"), None)
    if chosen is None or chosen.suffix != ".png":
        return f"<p>charts: <code>{html.escape(str(run.path / 'charts'))}</code></p>"
    data = base64.b64encode(chosen.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(chosen.stem)}" src="data:image/png;base64,{data}"/>'
