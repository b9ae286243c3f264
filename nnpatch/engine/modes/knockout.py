"""Attention knockout: cut attention from some query positions to one key position, at a
layer or a window of layers, in one run of each pair, and measure the answer.

`patch.from` names the queries: "answer" (eot, the answer prefix and the answer tokens, both
answers) or a list of thoughts. `patch.to` lists the key positions (bot and thoughts); each
is its own row. `patch.layers` knocks out each listed layer alone; `patch.layer_groups`
windows of layers instead. The cut goes through the attention mask each attention module is
called with, in the same traced forward (several pairs and cells per trace); rows carry the
window in `layers`. `patch.run` is the run knocked out (clean by default: how much of the
clean answer survives); its metrics read as for a patch into that run (`kl_to_clean`,
`logit_diff`, `top1_changed` against its own unpatched answer).

There is no donor, so no random-donor control.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Literal

import polars as pl
import torch
from pydantic import Field

from nnpatch.engine import metrics as M
from nnpatch.engine.forward import Op
from nnpatch.engine.modes.base import Computed, Mode, Sweep
from nnpatch.engine.plan import PatchSpec, by_first_position, selected_layers, selected_positions
from nnpatch.engine.trace import Engine
from nnpatch.errors import RecipeError
from nnpatch.fields import Int, Layers, Position, Section, Window, distinct
from nnpatch.report import charts
from nnpatch.report.summary import lead_metric
from nnpatch.report.top import top_cells_lines
from nnpatch.run.tables import Facets, results_table


@dataclass(frozen=True)
class KnockoutSpec(PatchSpec):
    """One row: the key position cut (`positions`), at the layers of `window`, from the
    queries of `queries` ("answer" or thought labels)."""

    window: tuple[int, ...] = ()
    queries: tuple[str, ...] = ()


class KnockoutPatch(Section):
    """Queries cut from keys through the attention mask, at layers or windows of layers."""

    model_config = {**Section.model_config, "populate_by_name": True}

    mode: Literal["knockout"]
    # the queries cut: "answer" (eot, the prefix, the answer, decoded tokens) or thoughts
    queries: (
        Literal["answer"] | Annotated[list[Int], Field(min_length=1), distinct("a thought")]
    ) = Field(default="answer", alias="from")
    # the key positions cut from them (bot and thoughts), each its own row
    to: (
        Annotated[
            list[Annotated[Position, Field(union_mode="left_to_right")]],
            Field(min_length=1),
            distinct("a position"),
        ]
        | Literal["all"]
    ) = "all"
    layers: Layers = "all"  # each listed layer cut alone
    # instead of layers: windows of layers cut together, e.g. [[0, 1, 2, 3]]
    layer_groups: Annotated[list[Window], Field(min_length=1)] | None = None
    run: Literal["clean", "corrupted"] = "clean"  # the run knocked out

    @property
    def site(self) -> str:
        return "attn"  # what a knockout acts on: the attention modules' masks


class Knockout(Mode):
    sections = (KnockoutPatch,)

    def primary(self, patch) -> tuple[str, str]:
        return "resid", "noise" if patch.run == "clean" else "denoise"  # noise: clean receives

    def plan(self, patch, shape, source) -> list[KnockoutSpec]:
        if not shape.named_positions:
            raise RecipeError(
                source,
                "patch.mode",
                f"knockout cuts attention inside a thought loop and {shape.name} has none",
                "use a continuous-thought model (`nnpatch models` lists them)",
            )
        queries = _queries(patch, shape, source)
        keys = _keys(patch, shape, source, queries)
        windows = _windows(patch, shape, source)
        return [
            KnockoutSpec(window[0], (key,), window=tuple(window), queries=queries)
            for window in windows
            for key in keys
        ]

    def cells(self, plan) -> list:
        return []  # nothing is copied: the baseline pass only scores the runs

    def probe_engine(self, engine: Engine) -> Engine:
        return KnockoutEngine(engine)

    def compute(self, sweep: Sweep) -> Computed:
        clock = time.perf_counter()
        patch = sweep.recipe.patch
        rows = [(spec, i, i) for spec in sweep.plan for i in range(len(sweep.pairs))]
        rows = by_first_position(rows, sweep.model.position_labels())
        engine = KnockoutEngine(sweep.engine)
        values, texts, computed = sweep.patched(
            rows, sweep.progress(len(rows)), None, (engine, sweep.baselines)
        )
        facets = Facets("knockout", "attn", patch.run)
        names = sweep.recipe.metrics.numeric
        results = results_table(rows, sweep.pairs, values, names, facets, True, texts=texts)
        window = pl.Series("layers", [_window_label(s.window) for s, _, _ in rows], dtype=pl.String)
        results = results.insert_column(results.columns.index("layer") + 1, window)
        queries = pl.Series("queries", [",".join(s.queries) for s, _, _ in rows], dtype=pl.String)
        results = results.insert_column(results.columns.index("positions") + 1, queries)
        return Computed(results, computed, time.perf_counter() - clock)

    def screen_lines(self, summary, recipe) -> list[str]:
        patch = recipe.patch
        lead = (
            "kl_to_clean"
            if "kl_to_clean" in recipe.metrics.names
            else lead_metric(recipe.metrics.numeric)
        )
        where = "answer" if patch.queries == "answer" else f"thoughts {patch.queries}"
        return top_cells_lines(summary, lead, f"knockout of the {patch.run} run, from {where}")

    def charts(self, run) -> dict:
        return {
            f"knockout_{metric}": partial(
                charts.heatmap,
                run.summary,
                metric,
                run.positions,
                f"{metric} with attention cut from the queries to each key (rows: layers)",
            )
            for metric in run.metrics
        }


def _window_label(window: tuple[int, ...]) -> str:
    if len(window) > 1 and list(window) == list(range(window[0], window[-1] + 1)):
        return f"{window[0]}-{window[-1]}"
    return ",".join(map(str, window))


def _queries(patch, shape, source) -> tuple[str, ...]:
    if patch.queries == "answer":
        return ("answer",)
    return tuple(selected_positions(patch.queries, shape, source, "patch.from", "thought"))


def _keys(patch, shape, source, queries: tuple[str, ...]) -> list[str]:
    labels = selected_positions(patch.to, shape, source, "patch.to", "resid")
    if "eot" in labels:
        raise RecipeError(
            source, "patch.to", "eot is a query of the answer, not a key before it", "drop eot"
        )
    if queries != ("answer",):
        order = shape_order(shape)
        late = next((k for k in labels if order[k] > min(order[q] for q in queries)), None)
        if late is not None:
            raise RecipeError(
                source,
                "patch.to",
                f"key {late!r} comes after query thought {min(queries, key=order.get)!r}: a "
                "query never attends a later position, so the cut would change nothing",
                "list keys at or before the earliest query",
            )
    return labels


def shape_order(shape) -> dict[str, int]:
    labels = ["bot", *map(str, range(shape.num_thoughts)), "eot"]
    return {label: i for i, label in enumerate(labels)}


def _windows(patch, shape, source) -> list[list[int]]:
    if patch.layer_groups is None:
        return [[layer] for layer in selected_layers(patch, shape, source)]
    if "layers" in patch.model_fields_set:
        raise RecipeError(
            source, "patch.layer_groups", "is given with patch.layers", "give one of the two"
        )
    top = shape.num_layers - 1
    for i, window in enumerate(patch.layer_groups):
        wrong = next((layer for layer in window if layer > top), None)
        if wrong is not None:
            raise RecipeError(
                source,
                f"patch.layer_groups.{i}",
                f"layer {wrong} is out of range for {shape.name} (layers 0..{top})",
                "use layers in range",
            )
    keys = [tuple(window) for window in patch.layer_groups]  # ascending (checked by Window)
    if len(set(keys)) != len(keys):
        raise RecipeError(
            source, "patch.layer_groups", "a window is listed twice", "list each once"
        )
    return [list(window) for window in patch.layer_groups]


class KnockoutEngine(Engine):
    """The run's engine, cutting attention instead of writing activations."""

    def __init__(self, engine: Engine) -> None:
        self.__dict__.update(engine.__dict__)
        # decoded answers are answer queries too: every decoding call must happen to be cut
        self.decode_every_step = True

    def _patch_batch(self, pairs, answers, baselines, batch, written) -> torch.Tensor:
        index = [r for _, r, _ in batch]
        encoded, targets, refs = self.receivers(pairs, answers, baselines, index)
        width = encoded.input_ids.shape[1]  # T: bot is key T - 1, thought t is key T + t
        cuts: dict[tuple[int, int], tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
        for row, (spec, _, _) in enumerate(batch):
            key = width - 1 if spec.positions[0] == "bot" else width + int(spec.positions[0])
            for layer in spec.window:
                for call in self.query_calls(spec.queries):
                    rows, keys = cuts[(layer, call)]
                    rows.append(row)
                    keys.append(key)
        device = self.model.device
        by_call: dict[int, list[Op]] = defaultdict(list)
        for (layer, call), (rows, keys) in sorted(cuts.items(), key=lambda item: item[0][::-1]):
            path = "lm." + self.model.module.architecture.site_path("attn", layer)
            by_call[call].append(
                Op(
                    (layer, "mask"),
                    path,
                    False,
                    torch.tensor(rows, device=device),
                    torch.tensor(keys, device=device),
                    None,
                    "mask",
                    keys=self.key_length(call, encoded),
                )
            )
        names = self.metric_names

        def metrics(logits_clean, logits_corrupt, decoded):
            values = M.compute(names, M.score(logits_clean, logits_corrupt, targets), refs)
            return M.with_decoded(values, decoded)

        asked, ops = self._share_question(encoded, index, by_call)
        return self._run(encoded, ops, metrics, asked)[0]

    def query_calls(self, queries: tuple[str, ...]) -> list[int]:
        """The decoder calls whose queries these are: thought t is call t + 1; the answer is
        calls K + 1 (eot, prefix, clean answer), K + 2 (the corrupted answer) and, when
        answers are decoded, K + 2 + j feeding decoded token j (j = 1..tokens - 1)."""
        K = self.model.num_thoughts
        if queries == ("answer",):
            return list(range(K + 1, K + 2 + max(self.decode_tokens, 1)))
        return [int(q) + 1 for q in queries]

    def key_length(self, call: int, encoded) -> int:
        """How many keys the attention of this call sees (cache + its own tokens)."""
        K, T = self.model.num_thoughts, encoded.input_ids.shape[1]
        prefix = encoded.prefix_ids.shape[0]
        if call <= K:
            return T + call
        if call == K + 1:
            return T + K + 1 + prefix + encoded.clean_answer.shape[1]
        if call == K + 2:
            return T + K + 1 + prefix + encoded.corrupt_answer.shape[1]
        kept = prefix if encoded.decode.after_prefix else 0  # the prompt read before it
        return T + K + 1 + kept + (call - K - 2)  # decoding: one token a call after eot
