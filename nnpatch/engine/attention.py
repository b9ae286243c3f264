"""Reading attention probabilities inside the engine's traced forward.

Each attention module's probabilities are what transformers' own eager attention returns as
the module's second output: softmax(Q Kᵀ · scaling + mask), per query head ([B, heads,
queries, keys], the key/value heads of grouped-query attention repeated to the query heads
first), the keys being the KV cache and the call's own tokens. SDPA and flash attention
return None there, so the forwards that read them run with every config of the model set to
eager (`eager_attention`), and are set back to what they were when the forward ends, however
it ends: the user's implementation runs everything else (the baseline pass, other modes).
Reading eager's own output, rather than recomputing the query, key, rotary and
grouped-query steps by hand, is exact by construction and follows the architecture (Llama,
GPT-2, Qwen3's q/k norms) without a per-family copy of its attention code; the cost is one
more forward per chunk of pairs, with eager's [B, heads, queries, keys] per layer and call.

`Layout` says where a query and its keys are in the padded batch of one traced forward:

- continuous-thought models (one call per step, DESIGN.md's layout): call 0 is the question
  and bot (left-padded to width T), call t + 1 thought t (key column T + t), call K + 1 eot
  (T + K), the answer prefix (T + K + 1 + j) and the teacher-forced answer. Query "answer" is
  the token whose logits predict the first answer token: the last prefix token in call K + 1
  (eot when the prefix is empty). A row that thinks fewer thoughts than the batch (CoLaR,
  verbalized) has its later thought columns masked: they are not its keys.
- plain causal LMs (one call): the prompt (question with its span, then the prefix), left
  padded; a span token's query and "answer" (the prompt's last token) read the row's first
  copy (both copies carry the same prompt).

Each query sees the keys at or before it in its own unpadded sequence (itself last); padding,
masked thoughts and the causal future are never keys, and its probabilities over them sum to 1.
`table` lays one (pair, run, query)'s weights out as rows of the mode's results table.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import nnsight
import numpy as np
import polars as pl
import torch
from transformers import PretrainedConfig

from nnpatch.engine.forward import envoy_at
from nnpatch.models.base import Encoded


@dataclass(frozen=True)
class Key:
    """One key a query sees: where it is in the batch and in its run's own sequence."""

    column: int  # on the attention's key axis, in the padded batch
    index: int  # in the run's own unpadded sequence
    label: str  # "q{i}" a question token, "bot", thought "t", "eot", "p{j}" a prefix token
    kind: str  # question, bot, thought, eot, prefix (plain LMs: question, span, prefix)
    token: str  # its text


@dataclass(frozen=True)
class Query:
    """One query position of one row: its module call, its column on that call's query axis,
    and the keys it sees (in sequence order, itself last)."""

    call: int
    column: int
    keys: tuple[Key, ...]

    @property
    def index(self) -> int:
        return self.keys[-1].index


Layout = dict[str, Query]  # query label → where it is, for one row of the batch


@contextmanager
def eager_attention(lm: torch.nn.Module) -> Iterator[None]:
    """Every config inside `lm` (and their sub-configs) set to eager attention, each set back
    to its own value on leaving, whatever happens inside."""
    configs: dict[int, PretrainedConfig] = {}
    pending = [getattr(m, "config", None) for m in lm.modules()]
    while pending:
        config = pending.pop()
        if not isinstance(config, PretrainedConfig) or id(config) in configs:
            continue
        configs[id(config)] = config
        for name in getattr(config, "sub_configs", {}) or {}:
            pending.append(getattr(config, name, None))
    saved = {key: config._attn_implementation_internal for key, config in configs.items()}
    try:
        for config in configs.values():
            config._attn_implementation_internal = "eager"
        yield
    finally:
        for key, config in configs.items():
            config._attn_implementation_internal = saved[key]


def attention_path(model, layer: int) -> str:
    """The attention module of `layer`, relative to the traced root."""
    named = model.shape.named_positions
    return model.cell("attn", layer, "eot" if named else "0").path


def layouts(model, questions: list[str], encoded: Encoded, labels: list[str]) -> list[Layout]:
    """For each row (question) of a batch: where each of `labels` is, and its keys; a label
    the row does not have (a thought past its count, a span token past its span) is absent."""
    build = _thought_layout if model.shape.named_positions else _plain_layout
    return [build(model, q, encoded, row, labels) for row, q in enumerate(questions)]


def _text(model, token: int) -> str:
    return model.tokenizer.decode([token])


def _thought_layout(model, question: str, encoded: Encoded, row: int, labels: list[str]):
    width, loop = encoded.input_ids.shape[1], model.module.num_thoughts  # T, the batch's K
    named = model.position_tokens(question)
    n = named["bot"][0]  # question tokens 0..n-1, bot at n
    ids = encoded.input_ids[row, width - n - 1 :].tolist()
    thoughts = sum(label.isdigit() for label in named)  # this row's own count (≤ K)
    keys = [Key(width - n - 1 + i, i, f"q{i}", "question", _text(model, ids[i])) for i in range(n)]
    keys.append(Key(width - 1, n, "bot", "bot", named["bot"][1]))
    keys += [
        Key(width + t, n + 1 + t, str(t), "thought", named[str(t)][1]) for t in range(thoughts)
    ]
    eot = len(keys)
    keys.append(Key(width + loop, n + 1 + thoughts, "eot", "eot", named["eot"][1]))
    prefix = encoded.prefix_ids.tolist()
    keys += [
        Key(width + loop + 1 + j, n + 2 + thoughts + j, f"p{j}", "prefix", _text(model, p))
        for j, p in enumerate(prefix)
    ]
    # label → (call, column on its query axis, its own place in `keys`)
    where = {"bot": (0, width - 1, n), "eot": (loop + 1, 0, eot)}
    where["answer"] = (loop + 1, len(prefix), eot + len(prefix))
    where |= {str(t): (t + 1, 0, n + 1 + t) for t in range(thoughts)}
    return {
        label: Query(call, column, tuple(keys[: last + 1]))
        for label, (call, column, last) in where.items()
        if label in labels
    }


def _plain_layout(model, question: str, encoded: Encoded, row: int, labels: list[str]):
    head, span, tail = model.pieces(question)
    prompt = [*head, *span, *tail, *model.prefix_ids()]
    offset = int(encoded.attention_mask[row].nonzero()[0])  # left padding ends here
    starts = (len(head), len(head) + len(span), len(head) + len(span) + len(tail))

    def key(i: int) -> Key:
        if starts[0] <= i < starts[1]:
            label, kind = str(i - starts[0]), "span"
        elif i >= starts[2]:
            label, kind = f"p{i - starts[2]}", "prefix"
        else:
            label, kind = f"q{i}", "question"
        return Key(offset + i, i, label, kind, _text(model, prompt[i]))

    keys = [key(i) for i in range(len(prompt))]
    where = {str(t): starts[0] + t for t in range(len(span))} | {"answer": len(prompt) - 1}
    return {
        label: Query(0, offset + last, tuple(keys[: last + 1]))
        for label, last in where.items()
        if label in labels
    }


def read(
    model,
    traced,
    encoded: Encoded,
    rows: list[Layout],
    layers: list[int],
    heads: list[int],
) -> dict[tuple[int, str], torch.Tensor]:
    """One traced forward of the batch under eager attention: per (row, query label) the
    probabilities [layers, heads, keys] from that query to each of its keys (float32, CPU)."""
    device = model.device
    by_call: dict[int, list[tuple[str, torch.Tensor, torch.Tensor]]] = defaultdict(list)
    grouped: dict[tuple[int, str], tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
    for row, layout in enumerate(rows):
        for label, query in layout.items():
            members, columns = grouped[(query.call, label)]
            members.append(row)
            columns.append(query.column)
    for (call, label), (members, columns) in grouped.items():
        by_call[call].append(
            (label, torch.tensor(members, device=device), torch.tensor(columns, device=device))
        )
    head_index = torch.tensor(heads, device=device)
    paths = [attention_path(model, layer) for layer in layers]
    args, kwargs = model.trace_inputs(encoded)
    with eager_attention(model.lm), torch.no_grad(), traced.trace(*args, **kwargs) as tracer:
        found = {}
        for call in tracer.iter[sorted(by_call)] if by_call else ():
            for layer, path in zip(layers, paths, strict=True):
                weights = envoy_at(traced, path).output[1]  # [B, heads, queries, keys]
                for label, members, columns in by_call[call]:
                    picked = weights[members, :, columns]  # [rows, heads, keys]
                    found[(label, layer)] = picked.index_select(1, head_index).clone()
        found = nnsight.save(found)
    out = {}
    for (_, label), (members, _) in grouped.items():
        stacked = torch.stack([found[(label, layer)] for layer in layers], 1).float().cpu()
        for position, row in enumerate(members):  # [layers, heads, keys] of the row's own keys
            columns = torch.tensor([k.column for k in rows[row][label].keys])
            out[(row, label)] = stacked[position].index_select(-1, columns)
    return out


RESULT_SCHEMA = {
    "pair_id": pl.String,
    "run": pl.String,
    "layer": pl.Int64,
    "head": pl.Int64,
    "query": pl.String,
    "query_index": pl.Int64,
    "key_index": pl.Int64,
    "key": pl.String,
    "key_kind": pl.String,
    "key_token": pl.String,
    "weight": pl.Float32,
}


def table(
    pair_id: str, run: str, label: str, query: Query, weights: torch.Tensor, layers, heads
) -> pl.DataFrame:
    """One (pair, run, query)'s weights [layers, heads, keys] as rows of the results table."""
    count = len(query.keys)
    keys = pl.DataFrame(
        {
            "key_index": [k.index for k in query.keys],
            "key": [k.label for k in query.keys],
            "key_kind": [k.kind for k in query.keys],
            "key_token": [k.token for k in query.keys],
        },
        schema={k: RESULT_SCHEMA[k] for k in ("key_index", "key", "key_kind", "key_token")},
    )
    cells = len(layers) * len(heads)
    spread = keys[np.tile(np.arange(count), cells)]
    frame = pl.DataFrame(
        {
            "layer": np.repeat(np.asarray(layers, dtype=np.int64), len(heads) * count),
            "head": np.tile(np.repeat(np.asarray(heads, dtype=np.int64), count), len(layers)),
            "weight": weights.numpy().reshape(-1),
        }
    )
    return pl.concat([frame, spread], how="horizontal").select(
        pl.lit(pair_id).alias("pair_id"),
        pl.lit(run).alias("run"),
        "layer",
        "head",
        pl.lit(label).alias("query"),
        pl.lit(query.index, dtype=pl.Int64).alias("query_index"),
        "key_index",
        "key",
        "key_kind",
        "key_token",
        pl.col("weight").cast(pl.Float32),
    )
