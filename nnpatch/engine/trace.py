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

import torch

from nnpatch.engine import forward
from nnpatch.engine import metrics as M
from nnpatch.engine.answers import split as answers_split
from nnpatch.engine.forward import CellKey, Op, shifted_order
from nnpatch.engine.plan import PatchSpec
from nnpatch.errors import PairsError
from nnpatch.models.base import Cell, Encoded, ThoughtModel
from nnpatch.pairs import Pair


@dataclass
class PairAnswers:
    clean: list[list[int]]
    corrupt: list[list[int]]
    diff_index: list[int]


@dataclass
class Baselines:
    """Per-pair results of the unpatched runs, and the activations patches copy from."""

    references: M.References  # indexed by pair
    clean_metrics: torch.Tensor  # [pairs, numeric metrics] of the unpatched clean run
    corrupt_metrics: torch.Tensor  # [pairs, numeric metrics] of the unpatched corrupted run
    donor: dict[tuple[int | None, str], torch.Tensor]  # (layer, position) → [pairs, d]
    # with both runs read: (layer, position) → [2, pairs, d], clean run first
    runs: dict[tuple[int | None, str], torch.Tensor] | None = None
    # each run's greedy decoded answer per pair, when the metrics decode
    clean_texts: list[str] | None = None
    corrupt_texts: list[str] | None = None


Row = tuple[PatchSpec, int, int]  # (patch, receiver pair index, donor pair index)
# what a batch writes at one cell: (key, its Cell, receiver pairs, donor pairs) → [rows, width]
Written = Callable[[CellKey, Cell, list[int], list[int]], torch.Tensor]


class Engine:
    def __init__(
        self,
        model: ThoughtModel,
        site: str,
        direction: str,
        metric_names: list[str],
        remote: bool | str = False,
        decode_tokens: int = 0,
        remote_timeout: float | None = None,
    ):
        self.model = model
        self.remote_timeout = remote_timeout  # seconds a request to NDIF may take
        self.metric_names = metric_names
        # answers decoded per row (at most this many tokens) when a metric reads them
        self.decode_tokens = decode_tokens if M.decodes(metric_names) else 0
        self.traced = model.traced(decodes=self.decode_tokens > 0)
        self.site = site
        self.direction = direction
        self.remote = remote

    # every decoding step runs even once each row has ended (a knockout acts on all of them)
    decode_every_step = False

    # ---- answers -------------------------------------------------------------------------
    def answers(self, pairs: list[Pair]) -> PairAnswers:
        clean, corrupt, diff = [], [], []
        for pair in pairs:
            if self.model.question_ids(pair.clean_question) == self.model.question_ids(
                pair.corrupted_question
            ):
                raise PairsError(
                    f"pair {pair.id!r}: the clean and corrupted questions reach {self.model.name} "
                    "as the same tokens (they differ only in what its question preparation "
                    "removes, such as whitespace); change a number"
                )
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
        if self.decode_tokens:
            encoded.decode = self.model.decoding(self.decode_tokens, self.decode_every_step)
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
        both_runs: bool = False,
    ) -> Baselines:
        """Score both unpatched runs of every pair, a chunk of pairs per trace, and record
        the activations at `cells`: the donor run's, or with `both_runs` both runs'."""
        parts: list[dict] = []
        for start in range(0, len(pairs), chunk):
            index = list(range(start, min(start + chunk, len(pairs))))
            parts.append(self._baseline_chunk(pairs, answers, index, cells, both_runs))
        scores = {k: torch.cat([p["scores"][k] for p in parts]) for k in parts[0]["scores"]}
        read = {cell: torch.cat([p["read"][cell] for p in parts], dim=1) for cell in cells}
        donor_run = 1 if both_runs and self.direction == "noise" else 0
        donor = {cell: value[donor_run] for cell, value in read.items()}
        clean_logits, corrupt_logits = scores["clean_logits"], scores["corrupt_logits"]
        receiver = corrupt_logits if self.direction == "denoise" else clean_logits
        refs = M.References(
            clean_logits,
            corrupt_logits,
            receiver.argmax(-1),
            scores["clean_ld"],
            scores["corrupt_ld"],
        )
        own = list(range(len(pairs)))
        (clean_values, clean_texts), (corrupt_values, corrupt_texts) = (
            answers_split(
                self._run_values(scores, run, refs), self.metric_names, self.model, pairs, own
            )
            for run in ("clean", "corrupt")
        )
        return Baselines(
            refs,
            clean_values,
            corrupt_values,
            donor,
            read if both_runs else None,
            clean_texts,
            corrupt_texts,
        )

    def _run_values(self, scores: dict, run: str, refs: M.References) -> torch.Tensor:
        """One unpatched run's raw rows (logit metrics, then decoded ids) from the baseline
        pass's scores; `run` is "clean" or "corrupt"."""
        own = M.Scores(
            scores[f"{run}_logits"],
            scores[f"{run}_ld"],
            scores[f"{run}_lp_clean"],
            scores[f"{run}_lp_corrupt"],
        )
        values = M.compute(self.metric_names, own, refs)
        return M.with_decoded(values, scores.get(f"{run}_ids"))

    def _baseline_chunk(
        self,
        pairs: list[Pair],
        answers: PairAnswers,
        index: list[int],
        cells: list[tuple[int | None, str]],
        both_runs: bool,
    ) -> dict:
        n = len(index)
        questions = [pairs[i].clean_question for i in index] + [
            pairs[i].corrupted_question for i in index
        ]
        encoded, targets = self._encode(questions, answers, index + index)
        if both_runs:
            rows = list(range(2 * n))
        else:
            rows = list(range(n)) if self.direction == "denoise" else list(range(n, 2 * n))
        ops = self._ops(encoded, {key: (rows, None) for key in cells})

        def split(logits_clean: torch.Tensor, logits_corrupt: torch.Tensor, decoded) -> dict:
            s = M.score(logits_clean, logits_corrupt, targets)
            ids = {} if decoded is None else {"clean_ids": decoded[:n], "corrupt_ids": decoded[n:]}
            return ids | {
                "clean_logits": s.logits[:n],
                "corrupt_logits": s.logits[n:],
                "clean_ld": s.logit_diff[:n],
                "corrupt_ld": s.logit_diff[n:],
                "clean_lp_clean": s.logprob_clean[:n],
                "clean_lp_corrupt": s.logprob_corrupt[:n],
                "corrupt_lp_clean": s.logprob_clean[n:],
                "corrupt_lp_corrupt": s.logprob_corrupt[n:],
            }

        scores, read = self._run(encoded, ops, split)
        runs = 2 if both_runs else 1  # [runs, n, d]: the clean run first
        return {"scores": scores, "read": {k: v.reshape(runs, n, -1) for k, v in read.items()}}

    # ---- pass 2: patched rows ------------------------------------------------------------
    def patch(
        self,
        pairs: list[Pair],
        answers: PairAnswers,
        baselines: Baselines,
        rows: list[Row],
        batch_size: int,
        progress: Callable[[int], None] = lambda n: None,
        written: Written | None = None,
    ) -> torch.Tensor:
        """Raw rows [len(rows), logit metrics + answer tokens] for (spec, pair, donor pair)
        rows, batch by batch (`answers.split` reads them).

        `written` gives what each row writes at each cell (default: the donor pair's run's
        activation: the pair itself for a real patch, another pair for the control).
        """
        written = written or donor_values(baselines)
        out = []
        for batch in _batches(rows, batch_size):
            out.append(self._patch_fitting(pairs, answers, baselines, batch, written))
            progress(len(batch))
        return torch.cat(out)

    def _patch_fitting(self, pairs, answers, baselines, batch: list[Row], written) -> torch.Tensor:
        """One batch; on CUDA out-of-memory, its halves one after the other (down to a row)."""
        try:
            return self._patch_batch(pairs, answers, baselines, batch, written).cpu()
        except torch.cuda.OutOfMemoryError:
            if len(batch) == 1:
                raise
        torch.cuda.empty_cache()
        half = len(batch) // 2
        return torch.cat(
            [
                self._patch_fitting(pairs, answers, baselines, part, written)
                for part in (batch[:half], batch[half:])
            ]
        )

    def receivers(
        self, pairs: list[Pair], answers: PairAnswers, baselines: Baselines, index: list[int]
    ) -> tuple[Encoded, M.AnswerTargets, M.References]:
        """The runs patched into (corrupted for denoise, clean for noise) of pairs `index`:
        encoded, their answer targets, and their pairs' baselines."""
        side = "corrupted_question" if self.direction == "denoise" else "clean_question"
        encoded, targets = self._encode([getattr(pairs[i], side) for i in index], answers, index)
        refs = _select(baselines.references, torch.tensor(index, device=self.model.device))
        return encoded, targets, M.needed(refs, self.metric_names)

    def _patch_batch(
        self,
        pairs: list[Pair],
        answers: PairAnswers,
        baselines: Baselines,
        batch: list[Row],
        written: Written,
    ) -> torch.Tensor:
        index = [pair for _, pair, _ in batch]
        rows_by_cell: dict[CellKey, tuple[list[int], list[int], list[int]]] = defaultdict(
            lambda: ([], [], [])
        )
        for row, (spec, receiver, donor) in enumerate(batch):
            heads = spec.head if isinstance(spec.head, tuple) else (spec.head,)
            for position in spec.positions:
                for head in heads:  # several heads of one cell are written together
                    key = (spec.layer, position) if head is None else (spec.layer, position, head)
                    rows, receivers, donors = rows_by_cell[key]
                    rows.append(row)
                    receivers.append(receiver)
                    donors.append(donor)
        writes = {
            key: (rows, written(key, self.locate(key), receivers, donors))
            for key, (rows, receivers, donors) in rows_by_cell.items()
        }
        return self.run_rows(pairs, answers, baselines, index, writes)[0]

    def run_rows(
        self,
        pairs: list[Pair],
        answers: PairAnswers,
        baselines: Baselines,
        index: list[int],
        writes: dict,
        reads: dict | None = None,
    ) -> tuple[torch.Tensor, dict]:
        """One traced forward of the receiver runs of pairs `index` (one per row): `writes`
        maps a cell to (rows, values [rows, width]), `reads` a cell to the rows read there.
        Returns the metrics [rows, metrics] and the reads (keyed ("read", layer, position))."""
        encoded, targets, refs = self.receivers(pairs, answers, baselines, index)
        names = self.metric_names

        def metrics(logits_clean: torch.Tensor, logits_corrupt: torch.Tensor, decoded):
            values = M.compute(names, M.score(logits_clean, logits_corrupt, targets), refs)
            return M.with_decoded(values, decoded)

        asked, ops = self._share_question(encoded, index, self._ops(encoded, writes, reads))
        return self._run(encoded, ops, metrics, asked)

    def _share_question(self, encoded: Encoded, index: list[int], by_call: dict):
        """Run what the batch's patches cannot change once per pair, outside the trace.

        Every row of a pair shares the question + bot pass and the thoughts before the
        batch's earliest patched step; those run for the distinct pairs and their KV cache is
        broadcast over the rows, and the trace starts after them (module calls shift down).
        Returns (the state per row or None, the ops by call).
        """
        model = self.model
        if not model.shares_question or self.remote or len(set(index)) == len(index):
            return None, by_call
        before = [model.thoughts_before(op.path, c) for c, ops in by_call.items() for op in ops]
        if not before or None in before:
            return None, by_call
        ran = min(before)
        shifted: dict[int, list[Op]] = defaultdict(list)
        for call, ops in by_call.items():
            for op in ops:
                shifted[model.call_after(op.path, call, ran)].append(op)
        for ops in shifted.values():
            ops.sort(key=shifted_order)  # stable: heads keep their order
        first_row: dict[int, int] = {}  # pair → its first row, pairs in order of appearance
        for row, pair in enumerate(index):
            first_row.setdefault(pair, row)
        slot = {pair: i for i, pair in enumerate(first_row)}
        device = encoded.input_ids.device
        pick = torch.tensor(list(first_row.values()), device=device)
        with torch.no_grad():
            asked = model.module.ask(
                encoded.input_ids.index_select(0, pick),
                encoded.attention_mask.index_select(0, pick),
                thoughts=ran,
            )
        return asked.rows(torch.tensor([slot[p] for p in index], device=device)), shifted

    # ---- the traced forward (engine/forward.py) --------------------------------------------
    def _ops(self, encoded: Encoded, cells: dict, reads: dict | None = None) -> dict[int, list[Op]]:
        """Reads or writes per cell, grouped by module call in forward order (see
        `forward.ops`)."""
        return forward.ops(self.model, self.locate, encoded, cells, reads)

    def locate(self, key: CellKey) -> Cell:
        """Where a (layer, position[, head]) cell of this engine's site lives; a cell with
        no layer is the thought itself (site `thought`), whatever the engine's site."""
        if key[0] is None:
            return self.model.cell("thought", None, key[1])
        head = key[2] if len(key) > 2 else None
        if head is None:
            return self.model.cell(self.site, key[0], key[1])
        return self.model.cell(self.site, key[0], key[1], head)

    def _run(self, encoded: Encoded, by_call: dict[int, list[Op]], reduce: Callable, asked=None):
        """One traced forward applying the ops; only `reduce`'s result and the reads leave it."""
        return forward.run(
            self.traced,
            self.model,
            encoded,
            by_call,
            reduce,
            asked,
            self.remote,
            self.remote_timeout,
        )


def donor_values(baselines: Baselines) -> Written:
    """Each row writes its donor pair's run's activation at the cell (its features)."""

    def written(key: CellKey, cell: Cell, receivers: list[int], donors: list[int]):
        table = baselines.donor[key[:2]]
        values = table.index_select(0, torch.tensor(donors, device=table.device))
        return values if cell.features is None else values[:, cell.features]

    return written


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
