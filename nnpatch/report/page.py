"""A run's report, rendered from its stored tables alone: charts, report.html, summary.md.

`render(run_dir)` is what `nnpatch run` calls at the end and `nnpatch report RUN_DIR` calls
again later; the same tables give the same files. The charts and any extra sections are the
mode's (`Mode.charts`, `Mode.report_lines`).
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from nnpatch.engine.modes import mode_for
from nnpatch.report import accuracy, charts
from nnpatch.report.facts import baseline_rows, html_table, key_table, run_facts
from nnpatch.report.load import Run, describe_error, load_run
from nnpatch.run.folder import write_bytes, write_text

TOP = 10
BUNDLE = "vega-bundle.js"  # Vega, Vega-Lite and vega-embed, so charts render offline


ChartMaker = Callable[[], object]  # builds one altair chart; may raise charts.Undrawable


def run_charts(run: Run) -> dict[str, ChartMaker]:
    """Every chart of the run, by file stem, as makers: each is built (and may fail) alone."""
    return mode_for(run.resolved["patch"]["mode"]).charts(run)


@dataclass
class Rendered:
    """What `render` wrote, and one note per chart it could not draw (saying why)."""

    files: list[Path]
    notes: list[str]


def render(path: str | Path, manifest: dict | None = None, png: bool = True) -> Rendered:
    """Write charts/*.html and *.png, report.html and summary.md into the run folder.

    A chart that cannot be drawn (no finite value to show, or the renderer refuses it) is
    left out, with a one-line note in its place; it never stops the report. Faults of the
    folder itself (a full disk) do."""

    run = load_run(path, manifest)
    folder = run.path / "charts"
    folder.mkdir(exist_ok=True)
    bundle = vega_bundle()
    write_text(folder / BUNDLE, bundle)  # one copy, shared by the chart pages beside it
    specs, notes, written = draw_charts(folder, run_charts(run), png)
    write_text(run.path / "report.html", _page(run, specs, bundle, notes))
    write_text(run.path / "summary.md", _markdown(run, notes))
    files = [folder / BUNDLE, *written, run.path / "report.html", run.path / "summary.md"]
    return Rendered(files, notes)


@cache
def vega_bundle() -> str:
    """Vega, Vega-Lite and vega-embed as one script. Building it takes about a second and
    depends only on the vl-convert release, so it is kept in the user's cache
    (`$NNPATCH_CACHE`, else `$XDG_CACHE_HOME/nnpatch`, else `~/.cache/nnpatch`) with its
    digest beside it; a cache that cannot be read, or does not match its digest, is rebuilt."""
    import vl_convert as vlc

    path = cache_dir() / f"vega-bundle-{vlc.__version__}.js"
    digest = path.with_suffix(".sha256")
    try:
        text = path.read_text(encoding="utf-8")
        if hashlib.sha256(text.encode()).hexdigest() == digest.read_text().strip():
            return text
    except (OSError, UnicodeDecodeError):
        pass
    text = vlc.javascript_bundle()
    with contextlib.suppress(OSError):  # an unwritable cache costs the second, nothing else
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, text)
        write_text(digest, hashlib.sha256(text.encode()).hexdigest())
    return text


def cache_dir() -> Path:
    if os.environ.get("NNPATCH_CACHE"):
        return Path(os.environ["NNPATCH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "nnpatch"


def draw_charts(
    folder: Path, makers: dict[str, ChartMaker], png: bool = True
) -> tuple[dict[str, dict], list[str], list[Path]]:
    """Each chart as `<stem>.html` (beside the Vega bundle) and, with `png`, `<stem>.png`:
    the specs drawn, a note for each chart that could not be, and the files written."""
    import vl_convert as vlc

    specs, notes, written = {}, [], []
    for stem, make in makers.items():
        try:
            spec = make().to_dict()
            image = vlc.vegalite_to_png(spec, scale=2) if png else None
        except charts.Undrawable as err:
            notes.append(f"{stem}: not drawn ({err})")
            continue
        except (ValueError, TypeError, RuntimeError) as err:  # altair or vl-convert refused it
            notes.append(f"{stem}: not drawn ({describe_error(err)})")
            continue
        specs[stem] = spec
        write_text(folder / f"{stem}.html", _chart_page(stem, spec))
        written.append(folder / f"{stem}.html")
        if image is not None:
            write_bytes(folder / f"{stem}.png", image)
            written.append(folder / f"{stem}.png")
    return specs, notes, written


STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right}th{background:#f3f3f3}pre{background:#f7f7f7;padding:1em;overflow:auto}
.chart{margin:1.5em 0}.note{color:#a40}dt{font-weight:bold;float:left;width:12em}
dd{margin-left:13em}"""


def _page(run: Run, specs: dict[str, dict], bundle: str, notes: list[str]) -> str:
    """One self-contained page: the Vega bundle inline, no network needed to render."""
    title = html.escape(f"nnpatch: {run.resolved['name']} ({run.path.name})")
    facts = "".join(
        f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in run_facts(run)
    )
    divs = "".join(f'<div class="chart" id="chart-{i}"></div>' for i in range(len(specs)))
    divs += "".join(f'<p class="note">{html.escape(note)}</p>' for note in notes)
    key = key_table(run)
    embeds = "".join(
        f"vegaEmbed('#chart-{i}', {json.dumps(spec)}, {{actions: false}});"
        for i, spec in enumerate(specs.values())
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title><style>{STYLE}</style>
<script>{bundle}</script></head><body>
<h1>{title}</h1><dl>{facts}</dl>
<h2>Baselines (mean over pairs)</h2>
{html_table(["metric", "clean", "corrupted"], baseline_rows(run))}
<h2>{html.escape(key.title)}</h2>
<p>{html.escape(key.note)}</p>
{html_table(key.header, key.rows)}
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


def _markdown(run: Run, notes: list[str]) -> str:
    lines = [f"# {run.resolved['name']} ({run.path.name})", ""]
    lines += [f"- **{k}**: {v}" for k, v in run_facts(run)]
    lines += [
        "",
        "## Baselines (mean over pairs)",
        "",
        "| metric | clean | corrupted |",
        "|---|---|---|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in baseline_rows(run)]
    key = key_table(run)
    lines += [
        "",
        f"## {key.title}",
        "",
        "| " + " | ".join(key.header) + " |",
        "|" + "---|" * len(key.header),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in key.rows]
    lines += accuracy.report_lines(run.summary, run.baselines)
    lines += mode_for(run.resolved["patch"]["mode"]).report_lines(run)
    if notes:
        lines += ["", "## Charts not drawn", "", *[f"- {note}" for note in notes]]
    return "\n".join(lines) + "\n"
