"""Read checkpoint state dicts safely, merge unmerged LoRA, and account for every key.

Earlier work loaded CODI checkpoints with strict=False and silently dropped the projection
and half the LoRA weights. Here every key of the file must land somewhere, and every
parameter of the model must come from the file; anything else is an error that lists them.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from nnpatch.errors import ModelError

# Buffers that older transformers saved in state dicts and newer ones recompute.
RECOMPUTED_BUFFERS = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """safetensors, or torch.load with weights_only=True: a checkpoint never runs code. A
    sharded checkpoint's index (`*.index.json`) reads every shard its weight map names."""
    if path.name.endswith(".index.json"):
        return _read_shards(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - corrupt or unsafe file: one clear line
        first = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        raise ModelError(f"{path}: cannot read the checkpoint ({first})") from None


def _read_shards(index: Path) -> dict[str, torch.Tensor]:
    import json

    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise ModelError(f"{index}: not a shard index with a weight_map ({err})") from None
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        path = index.parent / shard
        if not path.is_file():
            raise ModelError(f"{index}: names shard {shard}, which is not in {index.parent}")
        part = read_state_dict(path)
        listed = {k for k, v in weight_map.items() if v == shard}
        if set(part) != listed:
            raise ModelError(
                f"{path}: holds {len(part)} tensors, the index lists {len(listed)} for it; "
                "the shards do not match their index"
            )
        state |= part
    return state


@dataclass
class KeyReport:
    """Where every key of a checkpoint went."""

    file: str
    loaded: int = 0
    merged_lora: list[str] = field(default_factory=list)  # modules whose LoRA was merged
    tied_absent: list[str] = field(default_factory=list)  # absent because tied
    ignored: list[str] = field(default_factory=list)  # recomputed buffers, tied aliases
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    # training-only modules a release ships beside the model, dropped on purpose:
    # "<prefix>* (<what it is>)" → how many keys
    dropped: dict[str, int] = field(default_factory=dict)

    def drop(self, state: dict, prefixes: dict[str, str]) -> dict:
        """`state` without the keys under `prefixes` (prefix → what the module is), each
        prefix found counted in `dropped`."""
        kept = dict(state)
        for prefix, what in prefixes.items():
            keys = [k for k in kept if k.startswith(prefix)]
            if keys:
                self.dropped[f"{prefix}* ({what})"] = len(keys)
                for key in keys:
                    del kept[key]
        return kept

    def check(self) -> None:
        if self.missing or self.unexpected:
            raise ModelError(
                f"{self.file}: {len(self.missing)} missing key(s) {_few(self.missing)}, "
                f"{len(self.unexpected)} unexpected key(s) {_few(self.unexpected)}; "
                "the checkpoint does not match the model the recipe describes "
                "(check model.kind, model.base and the LoRA/prj settings)"
            )

    def lines(self) -> list[str]:
        return [
            f"file: {self.file}",
            f"loaded tensors: {self.loaded}",
            f"LoRA merged into {len(self.merged_lora)} modules",
            f"absent because tied: {', '.join(self.tied_absent) or 'none'}",
            f"ignored (recomputed buffers, tied aliases): {len(self.ignored)}",
            *[f"dropped on purpose: {n} keys {what}" for what, n in self.dropped.items()],
            f"missing: {len(self.missing)}   unexpected: {len(self.unexpected)}",
        ]


def _few(keys: list[str], limit: int = 4) -> str:
    if not keys:
        return "()"
    more = f", and {len(keys) - limit} more" if len(keys) > limit else ""
    return "(" + ", ".join(keys[:limit]) + more + ")"


def merge_lora(
    state: dict[str, torch.Tensor],
    lm: nn.Module,
    alpha: float,
    rank: int | None,
    report: KeyReport,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """Fold `base_layer` + (alpha / r)·B·A into plain weights in `dtype` (float32, or float64
    for exact comparisons), keyed as `lm` expects.

    GPT-2's Conv1D stores weights [in, out], so its delta is transposed (peft's
    fan_in_fan_out). A LoRA key without its partner, or without a base layer, is reported.
    """
    merged: dict[str, torch.Tensor] = {}
    lora = {k for k in state if ".lora_A." in k or ".lora_B." in k}
    used: set[str] = set()
    for key, value in state.items():
        if key in lora:
            continue
        if ".base_layer." not in key:
            merged[key] = value
            continue
        module, _, param = key.rpartition(".base_layer.")
        if param != "weight":
            merged[f"{module}.{param}"] = value
            continue
        a_key, b_key = f"{module}.lora_A.default.weight", f"{module}.lora_B.default.weight"
        absent = [k for k in (a_key, b_key) if k not in state]
        if absent:
            report.missing += absent
            continue
        a, b = state[a_key].to(dtype), state[b_key].to(dtype)
        if rank is not None and a.shape[0] != rank:
            raise ModelError(
                f"{report.file}: {a_key} has rank {a.shape[0]}, the recipe says "
                f"model.lora_r = {rank}; fix model.lora_r"
            )
        delta = (b @ a) * (alpha / a.shape[0])
        if _is_conv1d(lm, module):
            delta = delta.T
        # kept in float32 (or float64): the recipe's dtype is applied once, after loading
        merged[f"{module}.weight"] = value.to(dtype) + delta
        used.update((a_key, b_key))
        report.merged_lora.append(module)
    report.unexpected += sorted(lora - used - set(report.missing))
    return merged


def _is_conv1d(lm: nn.Module, module: str) -> bool:
    try:
        return type(lm.get_submodule(module)).__name__ == "Conv1D"
    except AttributeError:
        return False


def load_exactly(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    report: KeyReport,
    tied: set[str] = frozenset(),
) -> None:
    """Account for every key, then load with strict=True (tied keys may be absent)."""
    expected = set(module.state_dict())
    given = set(state)
    for key in sorted(given - expected):
        if key.endswith(RECOMPUTED_BUFFERS):
            report.ignored.append(key)
            state.pop(key)
        else:
            report.unexpected.append(key)
    for key in sorted(expected - given):
        if key in tied:
            report.tied_absent.append(key)
        else:
            report.missing.append(key)
    report.check()
    try:
        incompatible = module.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        detail = " ".join(str(err).split())[:300]
        raise ModelError(f"{report.file}: tensors do not fit the model: {detail}") from None
    leftover = set(incompatible.missing_keys) - tied
    if leftover or incompatible.unexpected_keys:  # accounted above; never silently partial
        raise ModelError(f"{report.file}: keys did not load: {_few(sorted(leftover))}")
    report.loaded += len(state)


class _Inert:
    """Stands in for every object a pickled checkpoint holds beside its tensors (a Lightning
    checkpoint's hyper-parameters, callbacks, loop state): built without running any of
    their classes' code."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __setstate__(self, state) -> None:
        pass


def _allowed(module: str, name: str) -> bool:
    """torch's tensor and storage rebuilders, dtypes and plain containers: what a state
    dict is made of (the same things torch's weights-only loader allows)."""
    if module == "collections" and name == "OrderedDict":
        return True
    if module == "builtins":
        return name in ("set", "frozenset", "dict", "list", "tuple", "slice", "bytearray")
    if module == "torch" or module.startswith("torch."):
        if name.startswith("_rebuild") or name.endswith("Storage") or name == "Size":
            return True
        return module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
    return False


class _StateOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        return super().find_class(module, name) if _allowed(module, name) else _Inert


class _StateOnlyPickle:
    """A pickle module for torch.load whose unpickler builds tensors and inert stand-ins."""

    Unpickler = _StateOnly
    load = staticmethod(pickle.load)
    __name__ = "nnpatch.state_only_pickle"


def read_lightning_state(path: Path) -> dict[str, torch.Tensor]:
    """The `state_dict` of a PyTorch Lightning checkpoint (.ckpt), its other contents
    (hyper-parameters as OmegaConf objects, which weights_only loading refuses) read as
    inert stand-ins, so no code in the file runs."""
    try:
        checkpoint = torch.load(
            path, map_location="cpu", weights_only=False, pickle_module=_StateOnlyPickle
        )
    except Exception as err:  # noqa: BLE001 - corrupt or foreign file: one clear line
        first = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        raise ModelError(f"{path}: cannot read the checkpoint ({first})") from None
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path}: not a Lightning checkpoint (no state_dict of tensors)")
    return dict(state)


def merge_adapters(
    lm: nn.Module,
    adapters: dict[str, torch.Tensor],
    alpha: float,
    rank: int | None,
    report: KeyReport,
) -> None:
    """Fold LoRA pairs `<module>.lora_A[.default].weight` / `lora_B` into `lm`'s weights in
    place (for releases that ship adapters beside a base model); every key must pair up and
    name a module of `lm`."""
    state = {}
    base = lm.state_dict()
    for key, value in adapters.items():
        module, part, _ = key.partition(".lora_")
        if not part:
            report.unexpected.append(key)
            continue
        which = "A" if key[len(module) :].startswith(".lora_A") else "B"
        state[f"{module}.lora_{which}.default.weight"] = value
        if f"{module}.weight" in base:  # else merge_lora reports the pair unexpected
            state[f"{module}.base_layer.weight"] = base[f"{module}.weight"]
    merged = merge_lora(state, lm, alpha, rank, report, lm.dtype)
    report.check()
    with torch.no_grad():
        for key, value in merged.items():
            base[key].copy_(value)
    report.loaded += len(adapters)
