"""nnpatch from Python, as in a notebook: run a recipe with overrides, then read its tables.

    python examples/notebook.py [OUTPUT_FOLDER]

Runs the single-position sweep on the embedded model for 8 pairs at the attention site,
then prints the top cells and the path of the main heatmap. In Jupyter, the returned run
displays itself (facts, top cells, heatmap).
"""

import sys
from pathlib import Path

import polars as pl

import nnpatch

output = sys.argv[1] if len(sys.argv) > 1 else "outputs"
recipe = Path(__file__).resolve().parent.parent / "recipes" / "position.toml"

run = nnpatch.run(
    recipe,
    patch__site="attn",  # any recipe field: double underscores for dots
    limit=8,
    out=output,
)

top = (
    run.summary.filter(pl.col("metric") == run.lead_metric)
    .sort("mean", descending=True)
    .select("layer", "position", "mean", "ci95_low", "ci95_high", "control_mean", "q_value")
    .head(5)
)
print(f"run folder: {run.path}")
print(top)
print(f"heatmap: {run.charts[f'heatmap_{run.lead_metric}']}")
