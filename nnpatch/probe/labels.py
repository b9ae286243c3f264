"""What each example of a record run is labelled with: per (pair, run), the run's own answer
and, when the pairs carry them, each step's result (`step_1`, `step_2`, ...), the values the
lens tracks.

The answers are in baselines.parquet. A run folder keeps the pairs' ids, not their steps:
those come from loading the pairs again as the run's resolved recipe names them (data.pairs,
relative to the recipe file's folder), and are used only when the pairs loaded are the ones
the run used (the manifest's fingerprint of them); otherwise a note says why not.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from nnpatch.errors import NnpatchError
from nnpatch.pairs import Pair, load_pair_set

RUNS = ("clean", "corrupted")
SCHEMA = {"pair_id": pl.String, "run": pl.String, "value": pl.String, "label": pl.String}


def run_labels(run) -> tuple[pl.DataFrame, list[str]]:
    """One row per (pair, run, value): pair_id, run, value, label (text); and notes."""
    rows = [
        {"pair_id": r["pair_id"], "run": side, "value": "answer", "label": str(r[f"{side}_answer"])}
        for r in run.baselines.iter_rows(named=True)
        for side in RUNS
    ]
    pairs, why = run_pairs(run)
    notes = [] if pairs is not None else [f"steps not probed: {why}"]
    for pair in pairs or []:
        for side, steps in zip(RUNS, (pair.clean_steps, pair.corrupted_steps), strict=True):
            rows += [
                {"pair_id": pair.id, "run": side, "value": f"step_{k}", "label": text}
                for k, text in enumerate(steps, start=1)
            ]
    return pl.DataFrame(rows, schema=SCHEMA), notes


def run_pairs(run) -> tuple[list[Pair] | None, str]:
    """The run's pairs, in its order, loaded again; or None and why they cannot be."""
    from nnpatch.run.fingerprint import pairs_hash

    try:
        data, ids = run.resolved["data"], run.resolved["resolved"]["pairs"]
        name, source, seed = data["pairs"], data.get("source"), data.get("seed", 0)
        limit = data.get("limit") if data.get("filter", "none") == "none" else None
    except (KeyError, TypeError, AttributeError):
        return None, f"{run.path}/resolved.json does not name the pairs and their ids"
    recipe_file = run.manifest.get("recipe_file")
    folder = Path(recipe_file).parent if isinstance(recipe_file, str) else run.path
    try:
        loaded, _ = load_pair_set(name, folder, limit, source, seed)  # as prepare loads them
    except (NnpatchError, OSError) as err:
        return None, f"the pairs {name!r} cannot be loaded again ({err})"
    by_id = {pair.id: pair for pair in loaded}
    missing = [i for i in ids if i not in by_id]
    if missing:
        return None, f"the pairs {name!r} no longer hold pair {missing[0]!r} of the run"
    pairs = [by_id[i] for i in ids]
    recorded = (run.manifest.get("fingerprint") or {}).get("pairs")
    answers = {
        r["pair_id"]: (r["clean_answer"], r["corrupted_answer"])
        for r in run.baselines.iter_rows(named=True)
    }
    changed = any(answers.get(p.id) != (p.clean_answer, p.corrupted_answer) for p in pairs)
    if changed or (recorded is not None and pairs_hash(pairs) != recorded):
        return None, f"the pairs {name!r} changed since the run (their fingerprint differs)"
    return pairs, ""


def value_order(values: list[str]) -> list[str]:
    """Steps in order (step_1, step_2, ..., step_10), then the answer, then anything else."""

    def key(value: str) -> tuple:
        step = value.removeprefix("step_")
        if step.isdigit():
            return (0, int(step), "")
        return (1 if value == "answer" else 2, 0, value)

    return sorted(values, key=key)
