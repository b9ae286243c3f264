"""`run.batch_size = "auto"`: the batch sized from a measured peak per row.

Two probe batches (k and 2k rows of the run's first cell, which recomputes the most of the
thought loop) measure the peak memory each adds: the difference is the cost of k rows,
whatever the batch's fixed cost. The batch is then as large as the budget allows
(`run.max_memory`, else 90% of the free GPU memory or half the machine's available memory),
at most the run's row count, and on the CPU at most CPU_CAP (beyond it rows/s stops
rising). The probes' values are thrown away; out-of-memory still halves a batch. On the CPU
the measure is the resident set sampled in a thread: coarser than CUDA's allocator counts.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from nnpatch.sizes import parse_size, shown

DEFAULT = 64  # where nothing can be measured
CPU_CAP = 256
GPU_CAP = 65536
PROBE_ROWS = 4
HEADROOM = 0.8  # of the budget: allocator fragmentation and the rows' own outputs


@dataclass
class Chosen:
    size: int
    how: str  # what the manifest and screen say about it

    def record(self) -> dict:
        return {"size": self.size, "how": self.how}


def fixed(batch_size: int | str) -> int:
    """A batch size for what runs before the choice (the baselines, the both-correct filter)."""
    return DEFAULT if batch_size == "auto" else batch_size


def choose(prep, baselines, rows_planned: int, recorded: dict | None = None) -> Chosen:
    """The run's batch size: the recipe's number, the one a resumed run recorded (its shards
    depend on it), or one measured here."""
    wanted = prep.recipe.run.batch_size
    if wanted != "auto":
        return Chosen(wanted, "run.batch_size")
    if recorded and isinstance(recorded.get("size"), int) and recorded["size"] >= 1:
        return Chosen(recorded["size"], f"resumed: {recorded.get('how', 'recorded')}")
    if not prep.mode.sized_by_memory:
        return Chosen(
            DEFAULT, f"auto: {DEFAULT} (mode {prep.recipe.patch.mode} is not sized by memory)"
        )
    device = prep.model.device
    meter = Meter.for_device(device)
    if meter is None or not prep.plan or prep.recipe.run.remote:
        return Chosen(DEFAULT, f"auto: {DEFAULT} (memory cannot be measured here)")
    budget = _budget(prep.recipe.run.max_memory, device)
    per_row = _per_row(prep, baselines, meter)
    cap = min(rows_planned, GPU_CAP if device.type == "cuda" else CPU_CAP)
    if per_row <= 0:  # too small to see: the cap decides
        return Chosen(max(1, cap), f"auto: {cap} (the rows' memory is too small to measure)")
    size = int(max(0, budget * HEADROOM - meter.in_use()) // per_row)
    size = max(1, min(size, cap))
    return Chosen(
        size, f"auto: {shown(int(per_row))} per row measured, budget {shown(budget)}, cap {cap}"
    )


def _per_row(prep, baselines, meter: Meter) -> float:
    engine, pairs = prep.mode.probe_engine(prep.engine), len(prep.pairs)
    peaks = {}
    # the larger first: memory an allocator keeps from it can only shrink the smaller's
    # peak, so the difference errs toward more memory per row, never less
    for k in (2 * PROBE_ROWS, PROBE_ROWS):
        rows = prep.mode.probe_rows(prep.plan, pairs, k)
        with meter.peak() as peak:
            engine.patch(prep.pairs, prep.answers, baselines, rows, k)
        peaks[k] = peak.bytes
    return (peaks[2 * PROBE_ROWS] - peaks[PROBE_ROWS]) / PROBE_ROWS


def _budget(max_memory: str | int | None, device: torch.device) -> int:
    if max_memory is not None:
        return parse_size(max_memory)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(0.9 * free) + torch.cuda.memory_allocated(device)
    return int(0.5 * _available_bytes()) + Meter.for_device(device).in_use()


def _available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise OSError("no MemAvailable in /proc/meminfo")


class Meter:
    """Memory in use on a device, and its peak over a block."""

    @staticmethod
    def for_device(device: torch.device) -> Meter | None:
        if device.type == "cuda":
            return CudaMeter(device)
        if device.type == "cpu" and Path("/proc/self/statm").exists():
            return RssMeter()
        return None

    def in_use(self) -> int:
        raise NotImplementedError

    def peak(self) -> AbstractContextManager[Peak]:
        """A block whose `Peak` holds, once it ends, the most memory it added."""
        raise NotImplementedError


@dataclass
class Peak:
    bytes: int = 0


class CudaMeter(Meter):
    def __init__(self, device: torch.device):
        self.device = device

    def in_use(self) -> int:
        return torch.cuda.memory_allocated(self.device)

    @contextmanager
    def peak(self) -> Iterator[Peak]:
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        start, found = self.in_use(), Peak()
        try:
            yield found
        finally:
            torch.cuda.synchronize(self.device)
            found.bytes = torch.cuda.max_memory_allocated(self.device) - start


class RssMeter(Meter):
    """The process's resident memory, sampled every millisecond in a thread (torch's kernels
    release the GIL, so the sampler sees the batch's peak)."""

    PAGE = os.sysconf("SC_PAGE_SIZE")

    def in_use(self) -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * self.PAGE

    @contextmanager
    def peak(self) -> Iterator[Peak]:
        start = high = self.in_use()
        done = threading.Event()

        def sample() -> None:
            nonlocal high
            while not done.is_set():
                high = max(high, self.in_use())
                time.sleep(0.001)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        found = Peak()
        try:
            yield found
        finally:
            done.set()
            thread.join()
            found.bytes = max(high, self.in_use()) - start
