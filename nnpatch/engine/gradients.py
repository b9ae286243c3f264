"""Attribution estimates: every cell's effect from one forward and one backward.

For a receiver run with activation a at a cell and a donor activation a', patching changes
a metric m by about (a' - a) · ∂m/∂a (first-order Taylor). The gradient is taken through
the whole recurrent forward, thought steps included, so a cell at thought 0 is credited
with its effect through every later thought. The estimate is exact when m is linear in the
patched activation, and its error grows with the curvature between a and a'
(`nnpatch.engine.modes.attribution` patches the strongest cells exactly to show it).

Gradients come from plain forward hooks on the cell modules and `torch.autograd.grad`;
the exact rows that check them come from the nnsight engine, an independent path.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager

import torch

from nnpatch.engine import metrics as M
from nnpatch.engine.plan import PatchSpec
from nnpatch.engine.trace import Baselines, Engine, PairAnswers, _envoy
from nnpatch.pairs import Pair

# metrics with a useful first-order estimate: the others are flat (zero gradient) at the
# unpatched run (KL at its minimum, an argmax), so their estimates are left NaN
ESTIMABLE = ("logit_diff", "recovery", "logprob_diff")


def estimate(
    engine: Engine,
    pairs: list[Pair],
    answers: PairAnswers,
    baselines: Baselines,
    specs: list[PatchSpec],
    chunk: int,
) -> torch.Tensor:
    """Estimated metrics [len(specs) * len(pairs), metrics], rows spec-major like the engine's
    (spec, pair, pair) rows. Every spec is one (layer, position) cell."""
    names = engine.metric_names
    out = torch.full((len(specs), len(pairs), len(names)), float("nan"))
    for start in range(0, len(pairs), chunk):
        index = list(range(start, min(start + chunk, len(pairs))))
        part = _estimate_chunk(engine, pairs, answers, baselines, specs, index)
        out[:, start : start + len(index)] = part
    return out.reshape(len(specs) * len(pairs), len(names))


def _estimate_chunk(engine, pairs, answers, baselines, specs, index) -> torch.Tensor:
    model, names = engine.model, engine.metric_names
    encoded, targets, refs = engine.receivers(pairs, answers, baselines, index)
    device = model.device
    cells = {
        (s.layer, s.positions[0]): model.cell(engine.site, s.layer, s.positions[0]) for s in specs
    }
    with _capturing(model.module, cells) as captured, torch.enable_grad():
        args, kwargs = model.trace_inputs(encoded)
        result = _call(model.module, args, kwargs)
        logits_clean, logits_corrupt = model.answer_logits(result, encoded)
        scores = M.score(logits_clean, logits_corrupt, targets)
    keys = list(cells)
    missing = [k for k in keys if k not in captured]
    if missing:
        raise RuntimeError(f"cells never reached in the forward: {missing[:3]}")
    batch = len(index)
    copies = model.row_copies
    rows = torch.arange(batch, device=device)
    donor = {
        k: baselines.donor[k].index_select(0, torch.tensor(index, device=device)) for k in keys
    }
    out = torch.full((len(specs), batch, len(names)), float("nan"))
    for column, name in enumerate(names):
        if name not in ESTIMABLE:
            continue
        value = M.METRICS[name](scores, refs)  # [B]
        grads = torch.autograd.grad(
            value.sum(), [captured[k] for k in keys], retain_graph=True, allow_unused=True
        )
        for spec_index, key in enumerate(keys):
            activation, grad, cell = captured[key], grads[spec_index], cells[key]
            change = torch.zeros(batch, device=device)
            if grad is not None:
                for copy in range(copies):
                    copy_rows = rows + copy * batch
                    # past a short span (never kept): clamped inside the sequence
                    tokens = (encoded.offsets[copy_rows] + cell.token).clamp(
                        max=encoded.input_ids.shape[1] - 1
                    )
                    delta = donor[key].to(activation.dtype) - activation[copy_rows, tokens].detach()
                    change += (delta.float() * grad[copy_rows, tokens].float()).sum(-1)
            out[spec_index, :, column] = (value.detach().float() + change).cpu()
    return out


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

        handles.append(_envoy(root, path).register_forward_hook(hook))
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()
        for p in requires:
            p.requires_grad_(False)
