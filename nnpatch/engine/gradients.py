"""Attribution estimates: every cell's effect from a few forward and backward passes.

For a receiver run with activation a at a cell and a donor activation a', patching changes
a metric m by about (a' - a) · ∂m/∂a (first-order Taylor: `atp`). The gradient is taken
through the whole recurrent forward, thought steps included, so a cell at thought 0 is
credited with its effect through every later thought. The estimate is exact when m is
linear in the patched activation, and its error grows with the curvature between a and a'
(`nnpatch.engine.modes.attribution` patches the strongest cells exactly to show it).

`ig` (integrated gradients, as EAP-IG does it) averages that gradient over `steps` runs
whose question embeddings lie on the line from the receiver question's to the donor's
(0, 1/S, ..., (S-1)/S: a left Riemann sum, so one step is `atp`), then multiplies by the
same difference a' - a. Every one of those runs is a real forward of the model, so every
cell's gradient is the model's own there; pairs whose questions differ in token count
cannot be mixed and keep the `atp` estimate (the mode says how many).

Gradients come from plain forward hooks on the cell modules and `torch.autograd.grad`;
the exact rows that check them come from the nnsight engine, an independent path.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager, nullcontext

import torch

from nnpatch.engine import metrics as M
from nnpatch.engine.forward import envoy_at
from nnpatch.engine.plan import PatchSpec
from nnpatch.engine.trace import Baselines, Engine, PairAnswers
from nnpatch.pairs import Pair

# metrics with a useful first-order estimate: the others are flat (zero gradient) at the
# unpatched run (KL at its minimum, an argmax), so their estimates are left NaN
ESTIMABLE = ("logit_diff", "recovery", "logprob_diff")
# what is differentiated for each: recovery is affine in the logit difference, so one
# backward pass serves both
DIFFERENTIATED = {
    "logit_diff": "logit_diff",
    "recovery": "logit_diff",
    "logprob_diff": "logprob_diff",
}


def estimate(
    engine: Engine,
    pairs: list[Pair],
    answers: PairAnswers,
    baselines: Baselines,
    specs: list[PatchSpec],
    chunk: int,
    steps: int = 1,
) -> torch.Tensor:
    """Estimated metrics [len(specs) * len(pairs), metrics] for the engine's site, rows
    spec-major like the engine's (spec, pair, pair) rows; see `estimate_sites`."""
    site = engine.site
    return estimate_sites(engine, pairs, answers, {site: (baselines, specs)}, chunk, steps)[site]


def estimate_sites(
    engine: Engine,
    pairs: list[Pair],
    answers: PairAnswers,
    sites: dict[str, tuple[Baselines, list[PatchSpec]]],
    chunk: int,
    steps: int = 1,
) -> dict[str, torch.Tensor]:
    """Per site, estimated metrics [len(specs) * len(pairs), metrics]; every site's cells
    come from the same forward and backward passes (`engine` gives the model, direction and
    metrics; each site brings the baselines its donor activations are in). `steps` = 1 is
    attribution patching (the gradient at the receiver run); more steps average the
    gradient over that many points on the line from the receiver's to the donor's
    activations, every cell of every site moved together (integrated gradients, a left
    Riemann sum: its first point is the receiver run)."""
    names = engine.metric_names
    cells = [(site, spec) for site, (_, specs) in sites.items() for spec in specs]
    out = torch.full((len(cells), len(pairs), len(names)), float("nan"))
    for start in range(0, len(pairs), chunk):
        index = list(range(start, min(start + chunk, len(pairs))))
        part = _estimate_chunk(engine, pairs, answers, sites, index, steps)
        out[:, start : start + len(index)] = part
    by_site, first = {}, 0
    for site, (_, specs) in sites.items():
        block = out[first : first + len(specs)]
        by_site[site] = block.reshape(len(specs) * len(pairs), len(names))
        first += len(specs)
    return by_site


def _estimate_chunk(engine, pairs, answers, sites, index, steps) -> torch.Tensor:
    model, names = engine.model, engine.metric_names
    any_baselines = next(iter(sites.values()))[0]  # references depend on the direction only
    encoded, targets, refs = engine.receivers(pairs, answers, any_baselines, index)
    device = model.device
    cells = {
        (site, s.layer, s.positions[0]): model.cell(site, s.layer, s.positions[0])
        for site, (_, specs) in sites.items()
        for s in specs
    }
    keys = list(cells)
    batch, copies = len(index), model.row_copies
    rows = torch.cat([torch.arange(batch, device=device) + c * batch for c in range(copies)])
    # a span position past a short pair's span (never kept) is clamped inside the sequence
    tokens = {
        key: (encoded.offsets[rows] + cell.token).clamp(max=encoded.input_ids.shape[1] - 1)
        for key, cell in cells.items()
    }
    picked = torch.tensor(index, device=device)
    donor = {k: sites[k[0]][0].donor[k[1:]].index_select(0, picked).repeat(copies, 1) for k in keys}
    estimable = [(column, name) for column, name in enumerate(names) if name in ESTIMABLE]
    bases = sorted({DIFFERENTIATED[name] for _, name in estimable})
    donor_ids, aligned = (
        _donor_questions(engine, pairs, index, encoded) if steps > 1 else (None, None)
    )
    unpatched: dict = {}
    change = {(base, key): 0.0 for base in bases for key in keys}
    gradient: dict = {}  # the last point's gradient per (differentiated metric, cell)
    here: dict = {}  # the last point's activation per cell
    for step in range(steps):
        alpha = step / steps  # 0 first: the receiver's own run, where attribution patching looks
        mixing = _mixing(model, donor_ids, aligned, alpha) if step else nullcontext()
        with mixing, _capturing(model.module, cells) as captured, torch.enable_grad():
            args, kwargs = model.trace_inputs(encoded)
            result = _call(model.module, args, kwargs)
            logits_clean, logits_corrupt, _ = model.answers_of(encoded)(result)
            scores = M.score(logits_clean, logits_corrupt, targets)
        missing = [k for k in keys if k not in captured]
        if missing:
            raise RuntimeError(f"cells never reached in the forward: {missing[:3]}")
        now = {k: captured[k][rows, tokens[k]].detach().float() for k in keys}
        _advance(change, gradient, here, now)
        for base in bases:
            value = M.METRICS[base](scores, refs)  # [B]
            if step == 0:
                unpatched[base] = value.detach().float()
            grads = torch.autograd.grad(
                value.sum(), [captured[k] for k in keys], retain_graph=True, allow_unused=True
            )
            for key, grad in zip(keys, grads, strict=True):
                if grad is not None:
                    gradient[(base, key)] = grad[rows, tokens[key]].float()
        here = now
    _advance(change, gradient, here, {k: donor[k].float() for k in keys})  # the donor run
    out = torch.full((len(keys), batch, len(names)), float("nan"))
    for spec_index, key in enumerate(keys):
        estimated = {}
        for base in bases:
            moved = change[(base, key)]
            if isinstance(moved, torch.Tensor):
                moved = moved.reshape(copies, batch).sum(0)
            estimated[base] = unpatched[base] + moved
        for column, name in estimable:
            value = estimated[DIFFERENTIATED[name]]
            if name == "recovery":
                value = M.recovery_of(value, refs)
            out[spec_index, :, column] = value.cpu()
    return out


def _advance(change: dict, gradient: dict, here: dict, there: dict) -> None:
    """Add each cell's step along the path: the gradient at the last point times how far
    the cell's activation moved from there to the next point (one step from the receiver
    straight to the donor is attribution patching)."""
    for (column, key), grad in gradient.items():
        change[(column, key)] = change[(column, key)] + (grad * (there[key] - here[key])).sum(-1)


def _donor_questions(engine, pairs, index, encoded) -> tuple[torch.Tensor, torch.Tensor]:
    """The donor questions' ids laid out as the receivers' (left-padded to the same width),
    and which rows can be mixed: those whose two questions have the same token count (the
    others keep the receiver's ids, so their estimate stays the gradient at the receiver)."""
    model = engine.model
    side = "clean_question" if engine.direction == "denoise" else "corrupted_question"
    ids = encoded.input_ids.clone()
    aligned = torch.zeros(len(index), dtype=torch.bool)
    width = ids.shape[1]
    for row, i in enumerate(index):
        donor = model.question_ids(getattr(pairs[i], side))
        length = int(encoded.attention_mask[row].sum())
        if len(donor) == length:
            ids[row, width - length :] = torch.tensor(donor, device=ids.device)
            aligned[row] = True
    return ids, aligned.to(ids.device)


@contextmanager
def _mixing(model, donor_ids: torch.Tensor, aligned: torch.Tensor, alpha: float):
    """The question pass's token embeddings moved a share `alpha` of the way to the donor
    question's (rows `aligned`), through a hook on the input embedding's first call."""
    embedding = model.module.lm.get_input_embeddings()
    calls = {"n": 0}

    def hook(module, inputs, output):
        calls["n"] += 1
        if calls["n"] > 1:
            return None
        donor = module(donor_ids).to(output.dtype)
        mixed = output + alpha * (donor - output)
        return torch.where(aligned[:, None, None], mixed, output)

    handle = embedding.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def unaligned_pairs(model, pairs: list[Pair]) -> list[str]:
    """Pairs whose clean and corrupted questions differ in token count: `ig` cannot move one
    question's embeddings onto the other's, so their estimates are the gradient at the
    receiver (`atp`)."""
    return [
        p.id
        for p in pairs
        if len(model.question_ids(p.clean_question))
        != len(model.question_ids(p.corrupted_question))
    ]


def _call(module, args: tuple, kwargs: dict):
    if len(args) == 1 and isinstance(args[0], dict):  # plain LMs take their inputs by name
        return module(**args[0], **kwargs)
    return module(*args, **kwargs)


@contextmanager
def _capturing(root: torch.nn.Module, cells: dict):
    """Forward hooks keeping the output tensor of each cell's module call (graph intact)."""
    by_path: dict[str, list] = defaultdict(list)
    for key, cell in cells.items():
        by_path[cell.path].append((key, cell))
    captured: dict = {}
    handles = []
    requires = [p for p in root.parameters() if not p.requires_grad]
    for p in requires:  # gradients must reach activations even in a frozen model
        p.requires_grad_(True)
    for path, wanted in by_path.items():
        calls = {"n": 0}

        def hook(module, inputs, output, wanted=wanted, calls=calls):
            value = output[0] if isinstance(output, tuple) else output
            for key, cell in wanted:
                if cell.call == calls["n"]:
                    captured[key] = value
            calls["n"] += 1

        handles.append(envoy_at(root, path).register_forward_hook(hook))
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()
        for p in requires:
            p.requires_grad_(False)
