"""What a patch writes into a cell (`patch.source`), built from the baseline pass's
activations before any patched batch runs, so a row's value does not depend on its batch:

- `donor`: the donor pair's run (the pair itself; another pair for control rows);
- `mean`: the donor run's activation at the cell averaged over the other pairs;
- `zero`: zeros;
- `random`: a seeded random direction (one per pair and cell) scaled to the receiver's own
  norm there;
- `steer`: the receiver's own activation plus `scale` × (mean clean − mean corrupted
  activation at the cell, over all pairs); `scale` may be negative, and 0 changes nothing.

For one head, every source works on that head's slice of the features. For plain LMs, means
run over the pairs whose span has the position.
"""

from __future__ import annotations

import hashlib

import torch

from nnpatch.engine.forward import CellKey
from nnpatch.engine.trace import Baselines, Written, donor_values
from nnpatch.models.base import Cell

SOURCES = ("donor", "mean", "zero", "random", "steer")
NEEDS_BOTH_RUNS = ("random", "steer")  # they read the receiver's own run


def source_values(
    name: str,
    baselines: Baselines,
    direction: str,
    seed: int = 0,
    scale: float = 1.0,
    inside: torch.Tensor | None = None,
) -> Written:
    """The `Written` of a source. `inside` [pairs, positions] says which pairs have which
    span position (plain LMs); None: every pair has every position."""
    if name == "donor":
        return donor_values(baselines)
    receiver_run = 1 if direction == "denoise" else 0

    def features(values: torch.Tensor, cell: Cell) -> torch.Tensor:
        return values if cell.features is None else values[..., cell.features]

    def written(key: CellKey, cell: Cell, receivers: list[int], donors: list[int]):
        device = baselines.donor[key[:2]].device
        index = torch.tensor(receivers, device=device)
        donor_side = features(baselines.donor[key[:2]], cell)  # [pairs, width]
        if name == "zero":
            return torch.zeros_like(donor_side.index_select(0, index))
        has = _has_position(inside, key, donor_side.shape[0], device)
        if name == "mean":
            return _leave_one_out_mean(donor_side, has).index_select(0, index)
        runs = features(baselines.runs[key[:2]], cell)  # [2, pairs, width]
        own = runs[receiver_run].index_select(0, index)
        if name == "steer":
            shift = _mean(runs[0], has) - _mean(runs[1], has)
            return own + scale * shift
        directions = torch.stack(
            [random_direction(seed, r, key, own.shape[-1]) for r in receivers]
        ).to(device=device, dtype=own.dtype)
        return directions * own.norm(dim=-1, keepdim=True)

    return written


def random_direction(seed: int, pair: int, key: CellKey, width: int) -> torch.Tensor:
    """A unit vector [width] drawn from a generator seeded by the run seed, the pair's index
    and the cell (its layer, position and head): the same for the pair wherever it runs."""
    text = f"{seed}|{pair}|{'|'.join(map(str, key))}"
    generator = torch.Generator().manual_seed(
        int(hashlib.sha256(text.encode()).hexdigest()[:15], 16)
    )
    vector = torch.randn(width, generator=generator, dtype=torch.float64)
    return (vector / vector.norm()).float()


def _has_position(inside, key: CellKey, pairs: int, device) -> torch.Tensor:
    if inside is None or not str(key[1]).isdigit():
        return torch.ones(pairs, dtype=torch.bool, device=device)
    return inside[:, int(key[1])].to(device)


def _mean(values: torch.Tensor, has: torch.Tensor) -> torch.Tensor:
    """Summed in float32 whatever the model's dtype, returned in it."""
    return values[has].float().mean(dim=0).to(values.dtype)


def _leave_one_out_mean(values: torch.Tensor, has: torch.Tensor) -> torch.Tensor:
    """Per pair: the mean over the other pairs (that have the position) of `values`."""
    wide = values.float()
    weights = has.float().unsqueeze(-1)
    total, count = (wide * weights).sum(dim=0), weights.sum()
    others = count - weights  # [pairs, 1]
    return ((total - wide * weights) / others.clamp(min=1)).to(values.dtype)
