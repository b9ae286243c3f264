"""What the report page, the summary and a notebook show of a run: its facts, baselines and
key table, as rows of text (no file is read or written here)."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

from nnpatch.engine.modes import mode_for
from nnpatch.report.summary import signed
from nnpatch.report.top import Table

if TYPE_CHECKING:
    from nnpatch.report.load import Run


def key_table(run: Run) -> Table:
    return mode_for(run.resolved["patch"]["mode"]).key_table(run.summary, run.metrics)


def baseline_rows(run: Run) -> list[list[str]]:
    base = run.baselines
    return [
        [name, signed(base[f"clean_{name}"].mean()), signed(base[f"corrupted_{name}"].mean())]
        for name in run.metrics
    ]


def html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def run_facts(run: Run) -> list[tuple[str, str]]:
    m, patch = run.manifest, run.resolved["patch"]
    pairs = ", ".join(f"{k} {v}" for k, v in m["pairs"].items())
    timings = ", ".join(f"{k} {v:.2f}" for k, v in m.get("timings", {}).items())
    model = m["model"]
    return [
        (
            "model",
            f"{model['name']} ({model['num_layers']} layers, {model['dtype']}, {model['device']})",
        ),
        ("patch", ", ".join(f"{k} {shown(v)}" for k, v in patch.items())),
        ("pairs", pairs),
        ("rows", str(m.get("rows", run.results.height))),
        ("status", m["status"]),
        ("timings (s, rows/s)", timings),
        ("versions", ", ".join(f"{k} {v}" for k, v in m["versions"].items())),
    ]


def shown(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)
