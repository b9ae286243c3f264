"""The patching engine: one nnsight trace of the whole recurrent forward per batch of rows.

Two passes over the pairs:
1. baselines: each chunk of pairs runs clean and corrupted questions unpatched in one trace,
   which records the donor activations at every cell the plan touches and scores both runs;
2. patches: each batch of (patch, pair) rows runs the receiver questions in one trace; every
   row is patched at its own cells, step by step through the thought loop, with one indexed
   write per (module call) visited, and the metrics are computed on the device inside the
   trace so only a [rows, metrics] tensor leaves it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import nnsight
import torch
from nnsight import NNsight

from nnpatch import metrics as M
from nnpatch.errors import PairsError
from nnpatch.models.base import Cell, Encoded, ThoughtModel
from nnpatch.pairs import Pair
from nnpatch.plan import PatchSpec


@dataclass
class PairAnswers:
    clean: list[list[int]]
    corrupt: list[list[int]]
    diff_index: list[int]


@dataclass
class Baselines:
    """Per-pair results of the unpatched runs, and the activations patches copy from."""

    references: M.References  # indexed by pair
    clean_metrics: torch.Tensor  # [pairs, metrics] of the unpatched clean run
    corrupt_metrics: torch.Tensor  # [pairs, metrics] of the unpatched corrupted run
    donor: dict[tuple[int | None, str], torch.Tensor]  # (layer, position) → [pairs, d]


@dataclass
class Edit:
    """One indexed write inside the trace: rows × one token of one module call."""

    path: str
    token: int
    tuple_output: bool
    rows: torch.Tensor  # [n]
    values: torch.Tensor  # [n, d]


class Engine:
    def __init__(self, model: ThoughtModel, site: str, direction: str, metric_names: list[str]):
        self.model = model
        self.traced = NNsight(model.module)
        self.site = site
        self.direction = direction
        self.metric_names = metric_names

    # ---- answers -------------------------------------------------------------------------
    def answers(self, pairs: list[Pair]) -> PairAnswers:
        clean, corrupt, diff = [], [], []
        for pair in pairs:
            a = self.model.answer_ids(pair.clean_answer)
            b = self.model.answer_ids(pair.corrupted_answer)
            index = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
            if index is None:
                raise PairsError(
                    f"pair {pair.id!r}: answers {pair.clean_answer!r} and "
                    f"{pair.corrupted_answer!r} give the same tokens; "
                    "use answers that differ"
                )
            clean.append(a)
            corrupt.append(b)
            diff.append(index)
        return PairAnswers(clean, corrupt, diff)

    def _encode(
        self, questions: list[str], answers: PairAnswers, index: list[int]
    ) -> tuple[Encoded, M.AnswerTargets]:
        """Encode receiver questions with their pairs' answers; the targets metrics read."""
        encoded = self.model.encode(
            questions, [answers.clean[i] for i in index], [answers.corrupt[i] for i in index]
        )
        diff = torch.tensor([answers.diff_index[i] for i in index], device=self.model.device)
        targets = M.AnswerTargets(
            encoded.clean_answer,
            encoded.clean_mask,
            encoded.corrupt_answer,
            encoded.corrupt_mask,
            diff,
        )
        return encoded, targets

    # ---- pass 1: baselines and donor activations ----------------------------------------
    def baselines(
        self,
        pairs: list[Pair],
        answers: PairAnswers,
        cells: list[tuple[int | None, str]],
        chunk: int,
    ) -> Baselines:
        parts: list[dict] = []
        for start in range(0, len(pairs), chunk):
            index = list(range(start, min(start + chunk, len(pairs))))
            parts.append(self._baseline_chunk(pairs, answers, index, cells))
        scores = {k: torch.cat([p["scores"][k] for p in parts]) for k in parts[0]["scores"]}
        donor = {cell: torch.cat([p["donor"][cell] for p in parts]) for cell in cells}
        clean_logits, corrupt_logits = scores["clean_logits"], scores["corrupt_logits"]
        receiver = corrupt_logits if self.direction == "denoise" else clean_logits
        refs = M.References(
            clean_logits,
            corrupt_logits,
            receiver.argmax(-1),
            scores["clean_ld"],
            scores["corrupt_ld"],
        )
        clean = M.Scores(
            clean_logits, scores["clean_ld"], scores["clean_lp_clean"], scores["clean_lp_corrupt"]
        )
        corrupt = M.Scores(
            corrupt_logits,
            scores["corrupt_ld"],
            scores["corrupt_lp_clean"],
            scores["corrupt_lp_corrupt"],
        )
        return Baselines(
            refs,
            M.compute(self.metric_names, clean, refs),
            M.compute(self.metric_names, corrupt, refs),
            donor,
        )

    def _baseline_chunk(
        self,
        pairs: list[Pair],
        answers: PairAnswers,
        index: list[int],
        cells: list[tuple[int | None, str]],
    ) -> dict:
        n = len(index)
        questions = [pairs[i].clean_question for i in index] + [
            pairs[i].corrupted_question for i in index
        ]
        encoded, targets = self._encode(questions, answers, index + index)
        donor_rows = slice(0, n) if self.direction == "denoise" else slice(n, 2 * n)
        located = {cell: self.model.cell(self.site, *cell) for cell in cells}
        by_call: dict[int, list[tuple[tuple[int | None, str], Cell]]] = defaultdict(list)
        for key, cell in sorted(located.items(), key=lambda kv: _visit_order(kv[0], kv[1])):
            by_call[cell.call].append((key, cell))
        traced = self.traced
        with torch.no_grad(), traced.trace(*encoded.args()) as tracer:
            donor = {}
            for call in tracer.iter[sorted(by_call)]:
                for key, cell in by_call[call]:
                    out = _envoy(traced, cell.path).output
                    value = out[0] if cell.tuple_output else out
                    donor[key] = value[donor_rows, cell.token].clone()
            result = tracer.result
            s = M.score(result[0], result[1], targets)
            scores = {
                "clean_logits": s.logits[:n],
                "corrupt_logits": s.logits[n:],
                "clean_ld": s.logit_diff[:n],
                "corrupt_ld": s.logit_diff[n:],
                "clean_lp_clean": s.logprob_clean[:n],
                "clean_lp_corrupt": s.logprob_corrupt[:n],
                "corrupt_lp_clean": s.logprob_clean[n:],
                "corrupt_lp_corrupt": s.logprob_corrupt[n:],
            }
            recorded = nnsight.save({"scores": scores, "donor": donor})
        return recorded

    # ---- pass 2: patched rows ------------------------------------------------------------
    def patch(
        self,
        pairs: list[Pair],
        answers: PairAnswers,
        baselines: Baselines,
        rows: list[tuple[PatchSpec, int]],
        batch_size: int,
        progress: Callable[[int], None] = lambda n: None,
    ) -> torch.Tensor:
        """Metrics [len(rows), metrics] for (spec, pair index) rows, batch by batch."""
        out = []
        for batch in _batches(rows, batch_size):
            out.append(self._patch_batch(pairs, answers, baselines, batch).cpu())
            progress(len(batch))
        return torch.cat(out)

    def _patch_batch(
        self,
        pairs: list[Pair],
        answers: PairAnswers,
        baselines: Baselines,
        batch: list[tuple[PatchSpec, int]],
    ) -> torch.Tensor:
        index = [pair for _, pair in batch]
        side = "corrupted_question" if self.direction == "denoise" else "clean_question"
        encoded, targets = self._encode([getattr(pairs[i], side) for i in index], answers, index)
        refs = _select(baselines.references, torch.tensor(index, device=self.model.device))
        by_call = self._edits(batch, baselines)
        traced, names = self.traced, self.metric_names
        with torch.no_grad(), traced.trace(*encoded.args()) as tracer:
            for call in tracer.iter[sorted(by_call)]:
                for edit in by_call[call]:
                    out = _envoy(traced, edit.path).output
                    value = out[0] if edit.tuple_output else out
                    value[edit.rows, edit.token] = edit.values
            result = tracer.result
            values = nnsight.save(M.compute(names, M.score(result[0], result[1], targets), refs))
        return values

    def _edits(
        self, batch: list[tuple[PatchSpec, int]], baselines: Baselines
    ) -> dict[int, list[Edit]]:
        """Group the batch's writes by module call, in the order the forward visits them."""
        rows_by_cell: dict[tuple[int | None, str], list[tuple[int, int]]] = defaultdict(list)
        for row, (spec, pair) in enumerate(batch):
            for position in spec.positions:
                rows_by_cell[(spec.layer, position)].append((row, pair))
        device = self.model.device
        by_call: dict[int, list[Edit]] = defaultdict(list)
        located = {key: self.model.cell(self.site, *key) for key in rows_by_cell}
        for key in sorted(rows_by_cell, key=lambda k: _visit_order(k, located[k])):
            cell = located[key]
            rows = torch.tensor([r for r, _ in rows_by_cell[key]], device=device)
            donor_index = torch.tensor([p for _, p in rows_by_cell[key]], device=device)
            values = baselines.donor[key].index_select(0, donor_index)
            by_call[cell.call].append(Edit(cell.path, cell.token, cell.tuple_output, rows, values))
        return by_call


def _visit_order(key: tuple[int | None, str], cell: Cell) -> tuple[int, int]:
    """Module calls in forward order: by call, then by layer within the call."""
    return (cell.call, -1 if key[0] is None else key[0])


def _envoy(root: NNsight, path: str):
    node = root
    for part in path.split("."):
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    return node


def _select(refs: M.References, index: torch.Tensor) -> M.References:
    return M.References(
        *(
            t.index_select(0, index)
            for t in (
                refs.clean_logits,
                refs.corrupt_logits,
                refs.receiver_top1,
                refs.clean_logit_diff,
                refs.corrupt_logit_diff,
            )
        )
    )


def _batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
