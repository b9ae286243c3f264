"""An independent reference: plain PyTorch forward hooks, one recurrent forward per patch.

It shares only the model and its tokenizer with nnpatch. Cells are located here from
DESIGN.md's sequence layout (bot = last token of call 0, thought t = call t + 1, eot = first
token of call K + 1, site `thought` = call t of prj), runs are unbatched and unpadded, and
metrics are recomputed in float64 numpy from the formulas in DESIGN.md.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import torch

from nnpatch.engine.metrics import METRICS
from nnpatch.engine.plan import PatchSpec
from nnpatch.models.base import ThoughtModel

SUBMODULES = {
    "llama": ("model", "layers", {"attn": "self_attn", "mlp": "mlp"}),
    "gpt2": ("transformer", "h", {"attn": "attn", "mlp": "mlp"}),
}


def site_module(model: ThoughtModel, site: str, layer: int | None) -> torch.nn.Module:
    if site == "thought":  # PCCoT: each iteration's slot inputs pass its `slots` identity
        return getattr(model.module, "slots", model.module.prj)
    decoder, layers, subs = SUBMODULES[model.module.lm.config.model_type]
    block = getattr(getattr(model.module.lm, decoder), layers)[layer]
    return block if site == "resid" else getattr(block, subs[site])


def call_and_token(site: str, position: str, num_thoughts: int) -> tuple[int, int]:
    if site == "thought":
        return int(position), 0
    if position == "bot":
        return 0, -1
    if position == "eot":
        return num_thoughts + 1, 0
    return int(position) + 1, 0


def pccot_call_and_token(site: str, position: str, slots: int, iterations: int):
    """PCCoT's layout (models/modeling_gpt2.py): decoder call 0 runs the question, bot and N
    placeholders, call t (1..T) iteration t's N slots, call T + 1 eot and the answer; slot
    inputs of iteration t pass `slots` at call t - 1. "s" is slot s of the last iteration."""
    if position == "bot":
        return 0, -(slots + 1)
    if position == "eot":
        return iterations + 1, 0
    slot, _, iteration = position.partition("@")
    t = int(iteration) if iteration else iterations
    if site == "thought":
        return t - 1, int(slot)
    return t, int(slot) - slots if t == 0 else int(slot)


def locate(model, site: str, position: str, question: str) -> tuple[int, int]:
    """(call, token) of a cell in one unpadded forward of `question`, by the model's loop
    (a model whose thoughts differ per question runs exactly this question's)."""
    iterations = getattr(model.module, "num_iterations", None)
    if iterations is not None:
        return pccot_call_and_token(site, position, model.num_thoughts, iterations)
    if hasattr(model, "thoughts_of"):
        return call_and_token(site, position, len(model.thoughts_of([question])[0]))
    return call_and_token(site, position, model.num_thoughts)


def run_one(
    model: ThoughtModel,
    question: str,
    clean: list[int],
    corrupt: list[int],
    hooks: list[tuple[torch.nn.Module, object]] = (),
    pre_hooks: list[tuple[torch.nn.Module, object]] = (),
    prefix: list[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One unpadded recurrent forward with the given hooks (`pre_hooks` see and may replace
    the module's kwargs); answer logits as float64. `prefix`: the tokens teacher-forced
    between eot and the answer (default: the answer prefix's)."""
    ids = torch.tensor([model.question_ids(question)])
    if prefix is None:
        prefix = model.tokenizer(model.answer_prefix, add_special_tokens=False).input_ids
    prefix = torch.tensor(prefix, dtype=torch.long)  # answer-only checkpoints: no prefix
    handles = [module.register_forward_hook(hook) for module, hook in hooks]
    handles += [
        module.register_forward_pre_hook(hook, with_kwargs=True) for module, hook in pre_hooks
    ]
    thoughts, extra = model.module.num_thoughts, {}
    if hasattr(model, "thoughts_of"):  # thoughts decided per question (CoLaR, verbalized):
        written = model.thoughts_of([question])[0]  # this question thinks its own
        model.module.num_thoughts = len(written)
        if model.writes:  # and feeds the tokens it wrote
            extra["thought_ids"] = torch.tensor([written])
    try:
        with torch.no_grad():
            logits_clean, logits_corrupt = model.module(
                ids,
                torch.ones_like(ids),
                prefix,
                torch.tensor([clean]),
                torch.tensor([corrupt]),
                **extra,
            )
    finally:
        model.module.num_thoughts = thoughts
        for handle in handles:
            handle.remove()
    return logits_clean[0].double().numpy(), logits_corrupt[0].double().numpy()


def recorder(store: list):
    def hook(module, args, output):
        value = output[0] if isinstance(output, tuple) else output
        store.append(value.detach().clone())

    return hook


def patcher(targets: dict[int, tuple[int, torch.Tensor]]):
    """Replace output[:, token] on the listed calls with the given vector."""
    return multi_patcher({call: [target] for call, target in targets.items()})


def answer_ids(model: ThoughtModel, answer: str) -> list[int]:
    space = " " if getattr(model, "answer_space", True) else ""  # answer-only: bare number
    ids = model.tokenizer(space + answer, add_special_tokens=False).input_ids
    return ids + [model.tokenizer.eos_token_id]


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def answer_view(logits_clean, logits_corrupt, clean, corrupt):
    d = next(i for i, (a, b) in enumerate(zip(clean, corrupt, strict=False)) if a != b)
    at_d = logits_clean[d]
    lp_c = sum(log_softmax(logits_clean[j])[t] for j, t in enumerate(clean))
    lp_k = sum(log_softmax(logits_corrupt[j])[t] for j, t in enumerate(corrupt))
    return {"at_d": at_d, "ld": at_d[clean[d]] - at_d[corrupt[d]], "lp_c": lp_c, "lp_k": lp_k}


def metrics(view: dict, clean_view: dict, corrupt_view: dict, receiver_view: dict) -> dict:
    p_clean = np.exp(log_softmax(clean_view["at_d"]))
    lp_patched = log_softmax(view["at_d"])
    lp_clean = log_softmax(clean_view["at_d"])
    lp_corrupt = log_softmax(corrupt_view["at_d"])
    return {
        "logit_diff": view["ld"],
        "recovery": (view["ld"] - corrupt_view["ld"]) / (clean_view["ld"] - corrupt_view["ld"]),
        "logprob_diff": view["lp_c"] - view["lp_k"],
        "kl_to_clean": float((p_clean * (lp_clean - lp_patched)).sum()),
        "kl_from_corrupt": float((np.exp(lp_patched) * (lp_patched - lp_corrupt)).sum()),
        "l2": float(np.linalg.norm(view["at_d"] - corrupt_view["at_d"])),
        "top1_changed": float(view["at_d"].argmax() != receiver_view["at_d"].argmax()),
    }


def reference_rows(
    model: ThoughtModel, pairs, specs, site: str, direction: str, donors: dict | None = None
) -> list[dict]:
    """Every (spec, pair) row's metrics, computed one recurrent forward at a time.

    `donors` maps a pair id to the pair whose activations it receives (default: itself).
    """
    rows = []
    for pair in pairs:
        clean, corrupt = (
            answer_ids(model, pair.clean_answer),
            answer_ids(model, pair.corrupted_answer),
        )
        donor = (donors or {}).get(pair.id, pair)
        donor_question = (
            donor.clean_question if direction == "denoise" else donor.corrupted_question
        )
        receiver_question = (
            pair.corrupted_question if direction == "denoise" else pair.clean_question
        )
        recorded: dict[tuple, list] = {}
        hooks = []
        for spec in specs:
            key = (site, spec.layer)
            if key not in recorded:
                recorded[key] = []
                hooks.append((site_module(model, site, spec.layer), recorder(recorded[key])))
        run_one(model, donor_question, clean, corrupt, hooks)
        clean_view = answer_view(
            *run_one(model, pair.clean_question, clean, corrupt), clean, corrupt
        )
        corrupt_view = answer_view(
            *run_one(model, pair.corrupted_question, clean, corrupt), clean, corrupt
        )
        receiver_view = corrupt_view if direction == "denoise" else clean_view
        for spec in specs:
            targets = {}
            for position in spec.positions:
                call, token = locate(model, site, position, receiver_question)
                at, at_token = locate(model, site, position, donor_question)
                targets[call] = (token, recorded[(site, spec.layer)][at][:, at_token])
            patched = run_one(
                model,
                receiver_question,
                clean,
                corrupt,
                [(site_module(model, site, spec.layer), patcher(targets))],
            )
            view = answer_view(*patched, clean, corrupt)
            rows.append(
                {
                    "pair_id": pair.id,
                    "layer": spec.layer,
                    "positions": spec.positions,
                    **metrics(view, clean_view, corrupt_view, receiver_view),
                }
            )
    return rows


def final_norm_and_head(lm, hidden: torch.Tensor) -> np.ndarray:
    """The model's final norm and LM head written out by hand, in float64: probabilities."""
    x = hidden.double().reshape(-1)
    config = lm.config
    if config.model_type == "llama":
        weight = lm.model.norm.weight.double()
        x = x * torch.rsqrt((x * x).mean() + config.rms_norm_eps) * weight
    else:
        norm = lm.transformer.ln_f
        x = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + config.layer_norm_epsilon)
        x = x * norm.weight.double() + norm.bias.double()
    logits = (lm.lm_head.weight.detach().double() @ x.detach()).numpy()
    return np.exp(log_softmax(logits))


def codi_lens_reference(model: ThoughtModel, question: str, site: str, cells) -> dict:
    """Per (layer, position): the lens probabilities [V] of one unpadded recurrent forward,
    the activations recorded by plain hooks at DESIGN.md's calls and tokens."""
    K = model.num_thoughts
    stores: dict = {}
    hooks = []
    for layer, _ in cells:
        if layer not in stores:
            stores[layer] = []
            hooks.append((site_module(model, site, layer), recorder(stores[layer])))
    answer = answer_ids(model, "1")
    run_one(model, question, answer, answer, hooks)
    out = {}
    for layer, position in cells:
        call, token = call_and_token(site, position, K)
        out[(layer, position)] = final_norm_and_head(model.module.lm, stores[layer][call][0, token])
    return out


# ---- sources and heads ------------------------------------------------------------------
HEAD_MODULES = {"llama": "o_proj", "gpt2": "c_proj"}


def head_module(model, layer: int) -> torch.nn.Module:
    """The output projection of layer `layer`'s attention: its input holds the heads."""
    decoder, layers, subs = SUBMODULES[model.lm.config.model_type]
    attention = getattr(getattr(getattr(model.lm, decoder), layers)[layer], subs["attn"])
    return getattr(attention, HEAD_MODULES[model.lm.config.model_type])


def head_slice(model, head: int) -> slice:
    config = model.lm.config
    heads = getattr(config, "num_attention_heads", None) or config.n_head
    width = getattr(config, "head_dim", None) or config.hidden_size // heads
    return slice(head * width, (head + 1) * width)


def input_recorder(store: list):
    def hook(module, args):
        store.append(args[0].detach().clone())

    return hook


def input_patcher(targets: dict[int, tuple[int, slice, torch.Tensor]]):
    """Replace input[:, token, features] on the listed calls (a forward pre-hook)."""
    count = {"n": 0}

    def hook(module, args):
        call = count["n"]
        count["n"] += 1
        if call not in targets:
            return None
        patched = args[0].clone()
        for token, features, vector in targets[call]:
            patched[:, token, features] = vector
        return (patched, *args[1:])

    return hook


def codi_activation(model, question: str, site: str, layer, position: str, head=None):
    """One cell's activation [width] (a head's slice) of one unpadded recurrent forward."""
    store: list = []
    answer = answer_ids(model, "1")
    call, token = call_and_token(site, position, model.num_thoughts)
    if site == "head":
        handle = head_module(model, layer).register_forward_pre_hook(input_recorder(store))
        try:
            run_one(model, question, answer, answer)
        finally:
            handle.remove()
        return store[call][0, token, head_slice(model, head)]
    run_one(model, question, answer, answer, [(site_module(model, site, layer), recorder(store))])
    return store[call][0, token]


def source_vector(
    model,
    pairs,
    i: int,
    spec,
    position: str,
    site: str,
    direction: str,
    source: str,
    scale: float,
    seed: int,
) -> torch.Tensor:
    """What `source` writes for pair i at one cell, from its definition, by hooked forwards."""
    from nnpatch.engine.sources import random_direction

    def act(pair, side):
        question = pair.clean_question if side == "clean" else pair.corrupted_question
        return codi_activation(model, question, site, spec.layer, position, spec.head).double()

    donor_side, receiver_side = (
        ("clean", "corrupted") if direction == "denoise" else ("corrupted", "clean")
    )
    if source == "donor":
        return act(pairs[i], donor_side)
    if source == "zero":
        return torch.zeros_like(act(pairs[i], donor_side))
    if source == "mean":
        return torch.stack([act(p, donor_side) for j, p in enumerate(pairs) if j != i]).mean(0)
    own = act(pairs[i], receiver_side)
    if source == "steer":
        clean = torch.stack([act(p, "clean") for p in pairs]).mean(0)
        corrupt = torch.stack([act(p, "corrupted") for p in pairs]).mean(0)
        return own + scale * (clean - corrupt)
    key = (spec.layer, position) if spec.head is None else (spec.layer, position, spec.head)
    return random_direction(seed, i, key, own.shape[-1]).double() * own.norm()


def source_reference_rows(
    model, pairs, specs, site: str, direction: str, source: str, scale: float = 1.0, seed: int = 0
) -> dict:
    """Every (pair, spec) row's metrics: one hooked recurrent forward per patch, writing
    what `source` defines (heads: a pre-hook on the output projection's input slice)."""
    rows = {}
    for i, pair in enumerate(pairs):
        clean, corrupt = (
            answer_ids(model, pair.clean_answer),
            answer_ids(model, pair.corrupted_answer),
        )
        receiver = pair.corrupted_question if direction == "denoise" else pair.clean_question
        clean_view = answer_view(
            *run_one(model, pair.clean_question, clean, corrupt), clean, corrupt
        )
        corrupt_view = answer_view(
            *run_one(model, pair.corrupted_question, clean, corrupt), clean, corrupt
        )
        receiver_view = corrupt_view if direction == "denoise" else clean_view
        for spec in specs:
            targets: dict = {}
            for position in spec.positions:
                call, token = locate(model, site, position, receiver)
                vector = source_vector(
                    model, pairs, i, spec, position, site, direction, source, scale, seed
                )
                targets.setdefault(call, []).append((token, vector))
            if site == "head":
                features = head_slice(model, spec.head)
                hook = input_patcher(
                    {c: [(t, features, v.float()) for t, v in ts] for c, ts in targets.items()}
                )
                handle = head_module(model, spec.layer).register_forward_pre_hook(hook)
                try:
                    patched = run_one(model, receiver, clean, corrupt)
                finally:
                    handle.remove()
            else:
                one = {c: (ts[0][0], ts[0][1].float()) for c, ts in targets.items()}
                patched = run_one(
                    model,
                    receiver,
                    clean,
                    corrupt,
                    [(site_module(model, site, spec.layer), patcher(one))],
                )
            view = answer_view(*patched, clean, corrupt)
            rows[(pair.id, spec.layer, spec.head, spec.positions)] = metrics(
                view, clean_view, corrupt_view, receiver_view
            )
    return rows


def all_outputs(model, question: str, clean, corrupt, hooks=()) -> tuple:
    """One recurrent forward recording every decoder layer's output and every prj output
    (per call), after `hooks` (patches) have applied; (answer logits, recorded)."""
    layers = [site_module(model, "resid", layer) for layer in range(model.num_layers)]
    recorded = {("resid", layer): [] for layer in range(model.num_layers)}
    recorded[("thought", None)] = []
    record = [(m, recorder(recorded[("resid", j)])) for j, m in enumerate(layers)]
    record.append((model.module.prj, recorder(recorded[("thought", None)])))
    logits = run_one(model, question, clean, corrupt, [*hooks, *record])
    return logits, recorded


def later_targets(position: str, K: int, layers: int, values: dict) -> dict:
    """Writes that set every thought after `position` (its prj output, each layer's output)
    to `values` (recorded per (site, layer) and call): module key → {call: (token, vector)}."""
    first = {"bot": 0, "eot": K}.get(position)
    first = int(position) + 1 if first is None else first
    targets: dict = {}
    for t in range(first, K):
        targets.setdefault(("thought", None), {})[t] = (0, values[("thought", None)][t][:, 0])
        for layer in range(layers):
            recorded = values[("resid", layer)][t + 1]
            targets.setdefault(("resid", layer), {})[t + 1] = (0, recorded[:, 0])
    return targets


def mediation_reference_rows(model, pairs, cells, site: str, direction: str) -> dict:
    """Total, direct and indirect effects per (pair, layer, position), each one hooked
    recurrent forward: total patches the cell from the donor run; direct also writes every
    later thought's prj output and layer outputs from the receiver's own run; indirect
    writes only those, as the total forward produced them."""
    K, L = model.num_thoughts, model.num_layers
    rows = {}

    def hooks(targets: dict) -> list:
        return [
            (site_module(model, key[0], key[1]), patcher(calls)) for key, calls in targets.items()
        ]

    for pair in pairs:
        clean, corrupt = (
            answer_ids(model, pair.clean_answer),
            answer_ids(model, pair.corrupted_answer),
        )
        donor_q, receiver_q = (
            (pair.clean_question, pair.corrupted_question)
            if direction == "denoise"
            else (pair.corrupted_question, pair.clean_question)
        )
        clean_view = answer_view(
            *run_one(model, pair.clean_question, clean, corrupt), clean, corrupt
        )
        corrupt_view = answer_view(
            *run_one(model, pair.corrupted_question, clean, corrupt), clean, corrupt
        )
        receiver_view = corrupt_view if direction == "denoise" else clean_view
        _, donor = all_outputs(model, donor_q, clean, corrupt)
        _, own = all_outputs(model, receiver_q, clean, corrupt)
        for layer, position in cells:
            call, token = call_and_token(site, position, K)
            key = (site, layer)
            cell = {key: {call: (token, donor[key][call][:, token])}}
            total, under_patch = all_outputs(model, receiver_q, clean, corrupt, hooks(cell))
            direct_targets = later_targets(position, K, L, own)
            for module, calls in cell.items():
                direct_targets.setdefault(module, {}).update(calls)
            direct = run_one(model, receiver_q, clean, corrupt, hooks(direct_targets))
            indirect_targets = later_targets(position, K, L, under_patch)
            indirect = run_one(model, receiver_q, clean, corrupt, hooks(indirect_targets))
            for effect, logits in (("total", total), ("direct", direct), ("indirect", indirect)):
                view = answer_view(*logits, clean, corrupt)
                rows[(pair.id, layer, position, effect)] = metrics(
                    view, clean_view, corrupt_view, receiver_view
                )
    return rows


def attention_module(model, layer: int) -> torch.nn.Module:
    decoder, layers, subs = SUBMODULES[model.module.lm.config.model_type]
    return getattr(getattr(getattr(model.module.lm, decoder), layers)[layer], subs["attn"])


def mask_cutter(calls: dict[int, int], key: int):
    """A pre-hook cutting every query of the listed calls from key index `key` in the 4D
    attention mask (calls: call → its key length, to build the causal mask where none is
    passed: query i sees keys up to length - queries + i)."""
    count = {"n": 0}

    def hook(module, args, kwargs):
        call = count["n"]
        count["n"] += 1
        if call not in calls:
            return None
        hidden = args[0] if args else kwargs["hidden_states"]
        queries, keys = hidden.shape[1], calls[call]
        mask = kwargs.get("attention_mask")
        if mask is None:
            mask = torch.zeros(1, 1, queries, keys, dtype=torch.bool)
            for i in range(queries):
                mask[0, 0, i, : keys - queries + i + 1] = True
        mask = mask.clone()
        mask[..., key] = False if mask.dtype == torch.bool else torch.finfo(mask.dtype).min
        return args, {**kwargs, "attention_mask": mask}

    return hook


def knockout_reference_rows(model, pairs, windows, keys, queries, run: str) -> dict:
    """Per (pair, window, key): one forward of the pair's `run` question with a pre-hook on
    each window layer's attention editing the 4D mask by hand at the query calls (thought t:
    call t + 1; "answer": calls K + 1 and K + 2), keys at bot = T - 1 and thought t = T + t."""
    K = model.num_thoughts
    prefix = len(model.tokenizer(model.answer_prefix, add_special_tokens=False).input_ids)
    rows = {}
    for pair in pairs:
        clean, corrupt = (
            answer_ids(model, pair.clean_answer),
            answer_ids(model, pair.corrupted_answer),
        )
        question = pair.clean_question if run == "clean" else pair.corrupted_question
        T = len(model.question_ids(question))
        lengths = {t + 1: T + t + 1 for t in range(K)}
        lengths[K + 1] = T + K + 1 + prefix + len(clean)
        lengths[K + 2] = T + K + 1 + prefix + len(corrupt)
        query_calls = [K + 1, K + 2] if queries == "answer" else [int(q) + 1 for q in queries]
        clean_view = answer_view(
            *run_one(model, pair.clean_question, clean, corrupt), clean, corrupt
        )
        corrupt_view = answer_view(
            *run_one(model, pair.corrupted_question, clean, corrupt), clean, corrupt
        )
        receiver_view = clean_view if run == "clean" else corrupt_view
        for window in windows:
            for key in keys:
                index = T - 1 if key == "bot" else T + int(key)
                cutter = {call: lengths[call] for call in query_calls}
                pre = [
                    (attention_module(model, layer), mask_cutter(cutter, index)) for layer in window
                ]
                logits = run_one(model, question, clean, corrupt, pre_hooks=pre)
                view = answer_view(*logits, clean, corrupt)
                rows[(pair.id, tuple(window), key)] = metrics(
                    view, clean_view, corrupt_view, receiver_view
                )
    return rows


def assert_matches_reference(
    results: pl.DataFrame, model, site: str, direction: str, pairs, control: bool = False
) -> None:
    results = results.filter(pl.col("control") == control)
    by_id = {p.id: p for p in pairs}
    donors = {r["pair_id"]: by_id[r["donor_id"]] for r in results.iter_rows(named=True)}
    specs = [
        PatchSpec(layer, tuple(positions))
        for layer, positions in results.select("layer", "positions")
        .unique(maintain_order=True)
        .iter_rows()
    ]
    expected = reference_rows(model, pairs, specs, site, direction, donors)
    assert results.height == len(expected)
    got = {
        (r["pair_id"], r["layer"], tuple(r["positions"])): r for r in results.iter_rows(named=True)
    }
    for row in expected:
        actual = got[(row["pair_id"], row["layer"], row["positions"])]
        for name in METRICS:
            np.testing.assert_allclose(
                actual[name],
                row[name],
                rtol=1e-4,
                atol=1e-4,
                err_msg=f"{name} {row['pair_id']} {row['positions']}",
            )


# ---- decoded answers ----------------------------------------------------------------------
def multi_patcher(targets: dict[int, list[tuple[int, torch.Tensor]]]):
    """Replace output[:, token] on the listed calls, several tokens a call."""
    count = {"n": 0}

    def hook(module, args, output):
        call = count["n"]
        count["n"] += 1
        if call not in targets:
            return None
        value = output[0] if isinstance(output, tuple) else output
        patched = value.clone()
        for token, vector in targets[call]:
            patched[:, token] = vector
        return (patched, *output[1:]) if isinstance(output, tuple) else patched

    return hook


def decoded_reference(model, question: str, make_hooks, tokens: int) -> str:
    """Greedy decoding with neither a KV cache nor `generate`: each step is one hooked
    recurrent forward of `question` teacher-forcing the tokens written so far right after
    eot (or after the answer prompt, for a family that reads it), and the next token is the
    argmax at the last of them, the model's markers never chosen. `make_hooks()` gives
    fresh (forward hooks, pre-hooks) for each forward."""
    eos = model.tokenizer.eos_token_id
    prefix = model.prefix_ids() if model.prompt_in_input else []
    markers = list(model.module.marker_ids)
    written: list[int] = []
    for _ in range(tokens):
        forced = [*written, eos]
        hooks, pre_hooks = make_hooks()
        logits, _ = run_one(model, question, forced, forced, hooks, pre_hooks, prefix=prefix)
        step = logits[len(written)].copy()
        step[markers] = -np.inf
        token = int(step.argmax())
        if token == eos:
            break
        written.append(token)
    return model.tokenizer.decode(written, skip_special_tokens=True)


def lm_decoded_reference(model, prompt: str, make_hooks, tokens: int) -> str:
    """A plain LM's greedy answer with neither cache nor `generate`: each step one hooked
    unpadded forward of the prompt, the answer prefix and the tokens so far."""
    eos = model.tokenizer.eos_token_id
    head, span, tail = model.pieces(prompt)
    prefix = model.tokenizer(" " + model.answer_prefix, add_special_tokens=False).input_ids
    written: list[int] = []
    for _ in range(tokens):
        handles = [module.register_forward_hook(hook) for module, hook in make_hooks()]
        try:
            with torch.no_grad():
                ids = torch.tensor([head + span + tail + prefix + written])
                logits = model.module(input_ids=ids).logits[0, -1].double()
        finally:
            for handle in handles:
                handle.remove()
        token = int(logits.argmax())
        if token == eos:
            break
        written.append(token)
    return model.tokenizer.decode(written, skip_special_tokens=True)
