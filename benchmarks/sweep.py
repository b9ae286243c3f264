"""The original experiment's sweep shape, three ways in one process, on a named model shape.

    python benchmarks/sweep.py [--shape tiny|gpt2-small|llama-1b] [--pairs 8] [--device cpu]
                               [--batch-size 64[,256,...]]

A random-weight CODI model of the shape and toy pairs, built with no download. The sweep is
pairs × every layer × every thought, single mode, resid, denoise:
(a) loop: one traced recurrent forward per patch (the original method, done correctly),
    timed on the first `--loop-patches` patches;
(b) nnpatch: the engine, `--batch-size` rows per traced forward (one timing per size given,
    the median of `--repeat` runs), baselines included;
(c) TransformerLens `patching.get_act_patch_resid_pre` on a plain model of the same shape,
    prompts as long as the CODI sequence (needs `pip install transformer-lens`).
Per way: patches/s, wall time (extrapolated for the loop), peak memory, effective FLOP/s (the
FLOPs of one full recurrent forward per patch, whatever a way actually skips) as a fraction of
a matmul peak measured in the same run; the largest difference between (a) and (b) on the rows
both ran; then the ratios b/a and b/c (b at its fastest batch size).
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from dataclasses import replace

os.environ.setdefault("TQDM_DISABLE", "1")  # TransformerLens's progress bar

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from nnpatch.engine.plan import PatchSpec, by_first_position
from nnpatch.engine.trace import Engine
from nnpatch.models.base import ThoughtModel
from nnpatch.models.codi import CodiModel, Projection
from nnpatch.models.tiny_tokenizer import build_tiny_tokenizer
from nnpatch.pairs import Pair
from nnpatch.pairs.builtin import tiny_arithmetic

SHAPES = {
    "tiny": (
        "llama",
        dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
        ),
        256,
    ),
    "gpt2-small": ("gpt2", dict(n_embd=768, n_layer=12, n_head=12), 50257),
    "llama-1b": (
        "llama",
        dict(
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
        ),
        128256,
    ),
}


def build(shape: str, num_thoughts: int, device: str, dtype: torch.dtype) -> ThoughtModel:
    family, sizes, vocab = SHAPES[shape]
    tokenizer = build_tiny_tokenizer()
    text = len(tokenizer)
    torch.manual_seed(0)
    with torch.device(device):  # random init where the model runs: seconds, not minutes, at 1B
        if family == "llama":
            config = LlamaConfig(vocab_size=vocab, max_position_embeddings=512, **sizes)
            lm, d = LlamaForCausalLM(config), sizes["hidden_size"]
        else:
            lm = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=512, **sizes))
            d = sizes["n_embd"]
        module = CodiModel(lm, Projection(d, d), num_thoughts, text + 1, text + 2, text)
    return ThoughtModel(module.to(dtype=dtype).eval(), tokenizer, shape)


def matmul_peak(device: str, dtype: torch.dtype) -> float:
    """FLOP/s of a large square matmul here: the ceiling the sweeps are measured against."""
    n = 8192 if device.startswith("cuda") else 2048  # large enough to fill the device
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    a @ b
    _sync(device)
    start, reps = time.perf_counter(), 5
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peak_memory(device: str) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB (GPU, this way)"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (process RSS)"


def _reset(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def codi_sweep(model, pairs, batch_size: int, limit: int | None, device: str):
    """Seconds for the baselines and for the patches, patches done, patches in the sweep, and
    logit_diff per (layer, thought, pair), for the sweep (or its first `limit` patches)."""
    specs = [
        PatchSpec(layer, (str(t),))
        for layer in range(model.num_layers)
        for t in range(model.num_thoughts)
    ]
    engine = Engine(model, "resid", "denoise", ["logit_diff", "recovery"])
    answers = engine.answers(pairs)
    cells = sorted({(s.layer, s.positions[0]) for s in specs})
    rows = [(spec, i, i) for spec in specs for i in range(len(pairs))]
    if batch_size > 1:  # nnpatch's order: a batch shares the forward up to its first step
        rows = by_first_position(rows, model.position_labels())
    rows = rows[:limit]
    _sync(device)
    start = time.perf_counter()
    base = engine.baselines(pairs, answers, cells, max(1, min(batch_size, len(pairs))))
    _sync(device)
    baselines = time.perf_counter() - start
    values = engine.patch(pairs, answers, base, rows, batch_size)
    _sync(device)
    patches = time.perf_counter() - start - baselines
    by_row = {
        (s.layer, s.positions, i): v[0].item() for (s, i, _), v in zip(rows, values, strict=True)
    }
    return baselines, patches, len(rows), len(specs) * len(pairs), by_row


def padded(pair: Pair, model: ThoughtModel, tokens: int) -> Pair:
    """The pair with filler words before both questions, so each is at least `tokens` long
    (GSM8K questions run to about 60 Llama tokens; the toy ones to about 25)."""

    def pad(question: str) -> str:
        return "the " * max(0, tokens - len(model.question_ids(question))) + question

    return replace(
        pair,
        clean_question=pad(pair.clean_question),
        corrupted_question=pad(pair.corrupted_question),
    )


def tokens_per_row(model, pairs) -> int:
    question = max(len(model.question_ids(p.corrupted_question)) for p in pairs)
    return question + model.num_thoughts + 1 + len(model.prefix_ids()) + 2


def transformer_lens_sweep(shape: str, batch: int, length: int, device: str, dtype):
    try:
        from transformer_lens import HookedTransformer, HookedTransformerConfig, patching
    except ImportError:
        return None
    family, sizes, vocab = SHAPES[shape]
    if family == "gpt2":
        d, layers, heads = sizes["n_embd"], sizes["n_layer"], sizes["n_head"]
        extra = dict(d_mlp=4 * d, act_fn="gelu_new", normalization_type="LN")
    else:
        d, layers, heads = (
            sizes["hidden_size"],
            sizes["num_hidden_layers"],
            sizes["num_attention_heads"],
        )
        extra = dict(
            d_mlp=sizes["intermediate_size"],
            act_fn="silu",
            normalization_type="RMS",
            positional_embedding_type="rotary",
            gated_mlp=True,
            n_key_value_heads=sizes["num_key_value_heads"],
        )
    cfg = HookedTransformerConfig(
        n_layers=layers,
        d_model=d,
        n_heads=heads,
        d_head=d // heads,
        n_ctx=512,
        d_vocab=vocab,
        device=device,
        dtype=dtype,
        **extra,
    )
    model = HookedTransformer(cfg)
    clean = torch.randint(0, 200, (batch, length), device=device)
    corrupt = clean.clone()
    corrupt[:, 3] = (corrupt[:, 3] + 1) % 200
    _, cache = model.run_with_cache(clean)
    answer = torch.randint(0, 200, (batch,), device=device)

    def metric(logits):
        return logits[torch.arange(batch), -1, answer].mean()

    _sync(device)
    start = time.perf_counter()
    patching.get_act_patch_resid_pre(model, corrupt, cache, metric)
    _sync(device)
    return time.perf_counter() - start, batch * layers * length


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="tiny", choices=list(SHAPES))
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--thoughts", type=int, default=6)
    parser.add_argument("--batch-size", default="64", help="rows per forward; a,b,… times each")
    parser.add_argument("--loop-patches", type=int, default=48)
    parser.add_argument("--repeat", type=int, default=3, help="(b) runs per size; the median")
    parser.add_argument(
        "--question-tokens", type=int, default=0, help="pad questions to this many tokens"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    model = build(args.shape, args.thoughts, args.device, dtype)
    pairs = [
        padded(pair, model, args.question_tokens)
        for pair in tiny_arithmetic(count=max(args.pairs, 2))[: args.pairs]
    ]
    params = sum(
        p.numel()
        for n, p in model.module.named_parameters()
        if not any(k in n for k in ("emb", "wte", "lm_head"))
    )
    flops_per_patch = 2 * params * tokens_per_row(model, pairs)
    peak = matmul_peak(args.device, dtype)
    print(
        f"shape {args.shape}: {model.num_layers} layers × {model.num_thoughts} thoughts × "
        f"{len(pairs)} pairs, {tokens_per_row(model, pairs)} tokens per row, "
        f"{params / 1e6:.1f}M non-embedding parameters, {args.device} "
        f"{args.dtype}, {torch.get_num_threads()} threads; matmul peak {peak / 1e9:.1f} GFLOP/s"
    )

    rates = {}

    def report(name, baselines, patches, done, total):
        """A way's rate over the whole sweep; a partial run's patch time is scaled up to it."""
        rate = total / (baselines + patches * total / done)
        rates[name] = rate
        achieved = rate * flops_per_patch
        print(
            f"({name}) {rate:9.1f} patches/s  wall {total / rate:8.2f} s for {total} patches"
            f"{'' if done == total else f' (timed on {done})'}  peak {_peak_memory(args.device)}"
            f"  {achieved / peak:6.1%} of matmul peak (effective)"
        )

    _reset(args.device)
    *timing, loop_rows = codi_sweep(model, pairs, 1, args.loop_patches, args.device)
    report("a loop", *timing)
    gap = 0.0
    for size in [int(s) for s in args.batch_size.split(",")]:
        _reset(args.device)
        runs = [codi_sweep(model, pairs, size, None, args.device) for _ in range(args.repeat)]
        *timing, rows = sorted(runs, key=lambda run: run[0] + run[1])[len(runs) // 2]
        report(f"b nnpatch, batch {size}", *timing)
        gap = max([gap] + [abs(rows[key] - value) for key, value in loop_rows.items()])
    rates["b nnpatch"] = max(v for k, v in rates.items() if k.startswith("b "))
    scale = max(abs(v) for v in loop_rows.values())
    print(
        f"largest |logit_diff (a) - (b)| over the {len(loop_rows)} rows both ran: {gap:.2e} "
        f"(largest |logit_diff| there {scale:.2f})"
    )
    _reset(args.device)
    tl = transformer_lens_sweep(
        args.shape, len(pairs), tokens_per_row(model, pairs), args.device, dtype
    )
    if tl is None:
        print("(c) TransformerLens not installed: pip install transformer-lens")
    else:
        report("c TransformerLens", 0.0, tl[0], tl[1], tl[1])
    print(f"b/a = {rates['b nnpatch'] / rates['a loop']:.1f}x", end="")
    if "c TransformerLens" in rates:
        print(f"   b/c = {rates['b nnpatch'] / rates['c TransformerLens']:.1f}x", end="")
    print()


if __name__ == "__main__":
    main()
