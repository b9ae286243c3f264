"""One traced forward of the recurrent model: the reads and indexed writes (`Op`) a batch
makes, grouped by module call in forward order, and the nnsight trace that applies them and
reduces the answer logits on the device. `Engine` (engine/trace.py) builds on these."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import nnsight
import torch
from nnsight import CONFIG

from nnpatch.engine.ndif import ndif_request
from nnpatch.models.base import Cell, Encoded

CellKey = tuple  # (layer, position), or (layer, position, head) for one head's features


@dataclass
class Op:
    """One read or indexed write inside the trace: some rows × one token of one module call."""

    key: CellKey
    path: str
    tuple_output: bool
    rows: torch.Tensor  # [n]
    tokens: torch.Tensor  # [n] token index of the cell in each row
    values: torch.Tensor | None  # [n, width] to write, or None to read
    port: str = "output"  # or "input": the module's first input; "mask": its attention mask
    features: slice | None = None  # written features (one head's); reads take them all
    keys: int = 0  # "mask": the call's key length (to build a mask where the model passes none)


def ops(
    model, locate: Callable[[CellKey], Cell], encoded: Encoded, cells: dict, reads: dict | None
) -> dict[int, list[Op]]:
    """Reads (values None) or writes per cell, grouped by module call in forward order.

    `cells` maps (layer, position) to (rows, values or None). `reads` maps more cells to
    the rows read there, for a batch that also writes those cells in other rows: their
    reads come back keyed ("read", layer, position). A model that runs each row more
    than once (plain LMs score the two answers on separate copies) gets every write on
    every copy.
    """
    device = model.device
    copies = model.row_copies
    batch = encoded.offsets.shape[0] // copies
    width = encoded.input_ids.shape[1]
    by_call: dict[int, list[Op]] = defaultdict(list)
    entries = dict(cells) | {("read", *key): (rows, None) for key, rows in (reads or {}).items()}
    cell_of = {key: key[1:] if key[0] == "read" else key for key in entries}
    located = {key: locate(cell_of[key]) for key in entries}
    for key in sorted(entries, key=lambda k: _visit_order(cell_of[k], located[k])):
        cell, (rows, values) = located[key], entries[key]
        rows_t = torch.tensor(rows, device=device)
        if values is not None and copies > 1:
            rows_t = torch.cat([rows_t + copy * batch for copy in range(copies)])
            values = values.repeat(copies, 1)
        # a plain-LM span position past a short pair's span is read (never written or
        # used) at the last token, so every index stays inside the sequence
        tokens = (encoded.offsets[rows_t] + cell.token).clamp(max=width - 1)
        features = cell.features if values is not None else None
        op = Op(key, cell.path, cell.tuple_output, rows_t, tokens, values, cell.port, features)
        by_call[cell.call].append(op)
    return by_call


def run(
    traced,
    model,
    encoded: Encoded,
    by_call: dict[int, list[Op]],
    reduce: Callable,
    asked=None,
    remote: bool | str = False,
    timeout: float | None = None,
):
    """One traced forward: apply the ops, reduce the answer logits (and the decoded answer
    ids, or None) on the device: `reduce(logits_clean, logits_corrupt, decoded)`.

    Only `reduce`'s result and the reads leave the trace, never the logits.
    """
    args, kwargs = model.trace_inputs(encoded)
    answers = model.answers_of(encoded)  # the body references no model adapter (NDIF)
    if asked is not None:  # the question pass ran before the trace
        kwargs = {**kwargs, "asked": asked}
    if remote:  # True: a job on NDIF; "local": serialised as one, run here
        kwargs = {**kwargs, "remote": remote}
    on_ndif = ndif_request(CONFIG.API.HOST, timeout) if remote is True else nullcontext()
    with on_ndif, torch.no_grad(), traced.trace(*args, **kwargs) as tracer:
        read = {}
        for call in tracer.iter[sorted(by_call)] if by_call else ():
            for op in by_call[call]:
                envoy = envoy_at(traced, op.path)
                if op.port == "mask":  # block rows' queries from keys op.tokens
                    args, kwargs = envoy.inputs
                    envoy.inputs = (args, knocked_out(args, kwargs, op))
                    continue
                out = envoy.input if op.port == "input" else envoy.output
                value = out[0] if op.tuple_output else out
                if op.values is None:
                    read[op.key] = value[op.rows, op.tokens].clone()
                elif op.features is None:
                    value[op.rows, op.tokens] = op.values
                else:  # one head's slice of the output projection's input
                    value[op.rows, op.tokens, op.features] = op.values
        logits_clean, logits_corrupt, decoded = answers(tracer.result)
        out = nnsight.save((reduce(logits_clean, logits_corrupt, decoded), read))
    return out


def _visit_order(key: CellKey, cell: Cell) -> tuple[int, int, int, int]:
    """Module calls in forward order: by call, then by layer within the call (one head's
    slice after another: they are the same module call), and prj's call c after decoder
    call c (it projects that step's final hidden state)."""
    head = key[2] if len(key) > 2 else -1
    return (cell.call, int(cell.path == "prj"), -1 if key[0] is None else key[0], head)


def shifted_order(op: Op) -> tuple[int, int]:
    """Within one call of a forward that starts after the question pass, prj comes first:
    its call builds the input of the decoder call that shares its index."""
    layer = op.key[1] if op.key[0] == "read" else op.key[0]
    return (int(op.path != "prj"), -1 if layer is None else layer)


def knocked_out(args: tuple, kwargs: dict, op: Op) -> dict:
    """An attention module's kwargs with `op.rows`' queries (every query of the call) cut
    from the keys at `op.tokens`: False in a boolean mask, the dtype's minimum in an
    additive one. Where the model passes no mask (no padding: plain causal attention), the
    causal mask is built first, aligned to the last key."""
    hidden = args[0] if args else kwargs["hidden_states"]
    batch, queries = hidden.shape[0], hidden.shape[1]
    mask = kwargs.get("attention_mask")
    if mask is None:
        keys = torch.arange(op.keys, device=hidden.device)
        last = torch.arange(queries, device=hidden.device) + op.keys - queries
        mask = (keys[None, :] <= last[:, None]).expand(batch, 1, queries, op.keys)
    mask = mask.expand(batch, *mask.shape[1:]).clone()
    blocked = False if mask.dtype == torch.bool else torch.finfo(mask.dtype).min
    mask[op.rows, :, :, op.tokens] = blocked
    return {**kwargs, "attention_mask": mask}


def envoy_at(root, path: str):
    node = root
    for part in path.split("."):
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    return node
