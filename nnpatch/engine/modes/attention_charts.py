"""The attention mode's charts and the names it gives keys and queries.

- `layer_key_heatmap`: for one query, layer × key, the mean probability over heads and pairs;
  the question's tokens are one column (their total), every other key its own.
- `attended_tokens`: the sequence one query sees as text, each token shaded by its mean
  probability over the layers read and the heads: the first pairs' clean runs one by one,
  then the mean over every run whose keys align label for label with the most common layout
  (same question length and thought count, so token i is the same slot of the template);
  a token shared by all of them is shown as itself, a varying one (a number) as "·".
"""

from __future__ import annotations

from collections import Counter

import altair as alt
import polars as pl

from nnpatch.report.charts import Undrawable

KIND_ORDER = {"question": 0, "bot": 1, "thought": 2, "span": 2, "eot": 3, "prefix": 4}
SHOWN = 3  # pairs drawn one by one in the attended-tokens chart
WIDTH = 72  # characters per line of text
CHAR = 7  # pixels per character (monospace, 11px)
LINE = 20  # pixels per line


def main_run(summary: pl.DataFrame) -> str:
    """The run the charts and tables show: "both" when both runs were read."""
    runs = summary["run"].unique(maintain_order=True).to_list()
    return "both" if "both" in runs else runs[0]


def query_order(label: str) -> tuple[int, int]:
    if label.isdigit():
        return (1, int(label))
    return ({"bot": 0, "eot": 2, "answer": 3}.get(label, 4), 0)


def ordered_queries(labels: list[str]) -> list[str]:
    return sorted(labels, key=query_order)


def key_name(row: dict) -> str:
    """A key as the report names it: thought "t2", span token "s2", "q3 'Tom'"."""
    key, kind, token = row["key"], row["key_kind"], row.get("key_token")
    if row.get("scope") == "kind":
        return plural(kind)
    name = {"thought": f"t{key}", "span": f"s{key}"}.get(kind, key)
    if kind in ("question", "prefix", "span") and token is not None:
        name += f" {token.strip()!r}"
    return name


def plural(kind: str) -> str:
    return "thoughts" if kind == "thought" else kind


def short_query(query: str, kinds: set[str]) -> str:
    """A query as tables name it: thought "t2", span token "s2", "eot", "answer"."""
    if not query.isdigit():
        return query
    return f"{'s' if 'span' in kinds else 't'}{query}"


def query_name(query: str, kinds: set[str]) -> str:
    if not query.isdigit():
        return query
    return f"span token {query}" if "span" in kinds else f"thought {query}"


def layer_key_heatmap(summary: pl.DataFrame, query: str) -> alt.Chart:
    run = main_run(summary)
    kinds = set(summary["key_kind"].to_list())
    question = pl.col("key_kind") == "question"
    data = summary.filter(
        (pl.col("run") == run)
        & (pl.col("query") == query)
        & (((pl.col("scope") == "key") & ~question) | ((pl.col("scope") == "kind") & question))
    )
    if data.is_empty() or not data["mean"].is_finite().any():
        raise Undrawable(f"no finite attention from {query}")
    data = data.sort("key_order", "layer").with_columns(
        pl.format("L{}", pl.col("layer")).alias("layer_label"),
        pl.Series("label", [key_name(r) for r in data.sort("key_order", "layer").to_dicts()]),
    )
    keys = data["label"].unique(maintain_order=True).to_list()
    layers = [f"L{layer}" for layer in sorted(data["layer"].unique().to_list())]
    chart = (
        alt.Chart(alt.Data(values=data.to_dicts()))
        .mark_rect()
        .encode(
            x=alt.X("label:N", sort=keys, title="key"),
            y=alt.Y("layer_label:N", sort=layers, title="layer"),
            color=alt.Color("mean:Q", scale=alt.Scale(scheme="viridis"), title="mean weight"),
            tooltip=[
                alt.Tooltip("label:N", title="key"),
                alt.Tooltip("layer_label:N", title="layer"),
                alt.Tooltip("mean:Q", format=".3f"),
                alt.Tooltip("ci95_low:Q", format=".3f", title="CI low"),
                alt.Tooltip("ci95_high:Q", format=".3f", title="CI high"),
                alt.Tooltip("n:Q"),
            ],
        )
    )
    title = (
        f"attention from {query_name(query, kinds)}: mean over heads and pairs ({run} runs); "
        "question = the total over its tokens"
    )
    return chart.properties(
        title=title, width=max(240, 26 * len(keys)), height=max(120, 26 * len(layers))
    )


def attended_tokens(results: pl.DataFrame, query: str) -> alt.VConcatChart:
    rows = results.filter(pl.col("query") == query)
    if rows.is_empty() or not rows["weight"].is_finite().any():
        raise Undrawable(f"no finite attention from {query}")
    per = rows.group_by(
        ["pair_id", "run", "key_index", "key", "key_kind", "key_token"], maintain_order=True
    ).agg(pl.col("weight").cast(pl.Float64).mean())
    runs = per["run"].unique(maintain_order=True).to_list()
    first = "clean" if "clean" in runs else runs[0]
    sequences = []
    for pair in per.filter(pl.col("run") == first)["pair_id"].unique(maintain_order=True)[:SHOWN]:
        own = per.filter((pl.col("pair_id") == pair) & (pl.col("run") == first)).sort("key_index")
        tokens = [_shown(r, r["key_token"]) for r in own.iter_rows(named=True)]
        sequences.append((f"{pair} ({first})", own["key"].to_list(), tokens, own["weight"]))
    sequences.append(_aligned_mean(per))
    top = max(float(weights.max()) for *_, weights in sequences) or 1.0
    charts = [
        _text_row(name, keys, tokens, weights, top) for name, keys, tokens, weights in sequences
    ]
    kinds = set(per["key_kind"].to_list())
    title = f"attended tokens from {query_name(query, kinds)}: mean weight over layers and heads"
    return alt.vconcat(*charts).resolve_scale(color="shared").properties(title=title)


def _aligned_mean(per: pl.DataFrame):
    """The mean over the runs whose keys have the most common layout, aligned key by key."""
    layouts = per.sort("key_index").group_by(["pair_id", "run"], maintain_order=True).agg("key")
    common, _ = Counter(tuple(k) for k in layouts["key"].to_list()).most_common(1)[0]
    members = layouts.filter([tuple(k) == common for k in layouts["key"].to_list()])
    aligned = per.join(members.select("pair_id", "run"), on=["pair_id", "run"])
    mean = (
        aligned.group_by(["key_index", "key", "key_kind"], maintain_order=True)
        .agg(pl.col("weight").mean(), pl.col("key_token").unique())
        .sort("key_index")
    )
    tokens = [
        _shown(r, r["key_token"][0] if len(r["key_token"]) == 1 else "·")
        for r in mean.iter_rows(named=True)
    ]
    pairs = members["pair_id"].n_unique()
    name = f"mean over {members.height} runs of {pairs} pairs with this layout"
    return name, mean["key"].to_list(), tokens, mean["weight"]


def _shown(row: dict, token: str) -> str:
    kind = row["key_kind"]
    if kind == "thought":
        return f"<t{row['key']}>"
    if kind in ("bot", "eot"):
        return f"<{kind}>" if token.startswith("<") or not token.strip() else token.strip()
    return token.strip() or "·"


def _text_row(name: str, keys: list[str], tokens: list[str], weights, top: float) -> alt.Chart:
    """One sequence as wrapped text, each token on a rectangle shaded by its weight."""
    data, column, line = [], 0, 0
    for key, text, weight in zip(keys, tokens, weights.to_list(), strict=True):
        if column and column + len(text) > WIDTH:
            column, line = 0, line + 1
        data.append(
            {
                "key": key,
                "text": text,
                "weight": weight,
                "x0": column * CHAR,
                "x1": (column + len(text) + 1) * CHAR,
                "line": line,
            }
        )
        column += len(text) + 1
    base = alt.Chart(alt.Data(values=data)).encode(
        y=alt.Y("line:O", axis=None),
        tooltip=[
            alt.Tooltip("key:N"),
            alt.Tooltip("text:N", title="token"),
            alt.Tooltip("weight:Q", format=".3f"),
        ],
    )
    scale = alt.Scale(domain=[0, WIDTH * CHAR + 2 * CHAR], nice=False, zero=True)
    rects = base.mark_rect(stroke="white", strokeWidth=1).encode(
        x=alt.X("x0:Q", axis=None, scale=scale),
        x2="x1:Q",
        color=alt.Color(
            "weight:Q", scale=alt.Scale(scheme="blues", domain=[0, top]), title="mean weight"
        ),
    )
    words = base.mark_text(align="left", baseline="middle", dx=2, font="monospace", fontSize=11)
    words = words.encode(
        x=alt.X("x0:Q", axis=None, scale=scale),
        text="text:N",
        color=alt.condition(f"datum.weight > {0.6 * top}", alt.value("white"), alt.value("black")),
    )
    return (rects + words).properties(
        title=name, width=(WIDTH + 2) * CHAR, height=LINE * (line + 1)
    )
