"""A CPU model actor for ndif 0.1.2: ndif's own actor with every CUDA call taken out.

Loaded by the Ray workers of the loopback server (its folder is on Ray's PYTHONPATH) and
chosen through ndif's own NDIF_MODEL_IMPORT_PATH; no ndif file is edited. Why each override
exists is in tests/ndif/WORKAROUNDS.md (W2).
"""

import gc

import ray
from ndif.services.ray.deployments.modeling.base import BaseModelDeployment
from nnsight.modeling.huggingface import HuggingFaceModel


class CpuModelDeployment(BaseModelDeployment):
    # Parking HOT->WARM moves weights GPU->CPU; on a CPU they never leave, so the controller
    # must evict a replica rather than cache it.
    CACHEABLE = False

    def load_from_disk(self) -> HuggingFaceModel:
        # base.load_from_disk: torch.cuda.set_device, per-process CUDA memory caps,
        # torch.cuda.synchronize() and a check that every tensor is on a CUDA device.
        model = HuggingFaceModel.from_model_key(
            self.model_key, dispatch=True, dtype=self.dtype_name, device="cpu", **self.kwargs
        )
        model._module.requires_grad_(False)
        return model

    def cleanup(self) -> None:
        # base.cleanup ends with torch.cuda.synchronize() / empty_cache() after every request.
        self.kill_switch.clear()
        self.kill_reason = None
        self.execution_ident = None
        self.model.interleaver.cancel()
        gc.collect()

    async def to_cache(self) -> None:  # never called while CACHEABLE is False
        await self.cancel("preempted")
        self.cached = True

    def from_cache(self, gpu_mem_bytes_by_id) -> None:
        self.gpu_mem_bytes_by_id = gpu_mem_bytes_by_id
        self.cached = False


# The same decoration as ndif's ModelActor (base.py, last lines).
CpuModelActor = ray.remote(num_cpus=1, max_restarts=-1)(CpuModelDeployment)
