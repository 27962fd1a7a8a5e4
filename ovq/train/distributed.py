"""Data parallelism on PyTorch's own engines: DDP, or FSDP2 (``fully_shard``), under ``torchrun``.

    torchrun --standalone --nproc_per_node 2 -m ovq.cli train ...

Single-process runs get a context with world_size 1 whose wrappers do nothing.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn


@dataclass
class DistributedContext:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    fsdp: bool = False

    @classmethod
    def from_env(cls, device: str | None = None) -> "DistributedContext":
        """Read torchrun's RANK/LOCAL_RANK/WORLD_SIZE; start the process group when there are several."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
        if device is None or device == "auto":
            dev = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
        else:
            dev = torch.device(device)
            if dev.type == "cuda" and dev.index is None:  # "cuda": this process's GPU, as torchrun numbers them
                dev = torch.device("cuda", local_rank)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        if world_size > 1 and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        return cls(rank, local_rank, world_size, dev)

    def close(self) -> None:
        """Tear down the process group once training is done, as PyTorch asks of every process that started one
        (rather than leaving the backend's threads to the interpreter's exit)."""
        if self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module, fsdp: bool = False) -> nn.Module:
        if self.world_size == 1:
            return model
        self.fsdp = fsdp
        if fsdp:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard
            # the mesh on this context's device: fully_shard's default mesh is on the accelerator whenever one
            # exists, so CPU processes on a one-GPU machine would all ask for cuda:<local rank>
            mesh = init_device_mesh(self.device.type, (self.world_size,))
            for block in _fsdp_blocks(model):
                fully_shard(block, mesh=mesh)
            fully_shard(model, mesh=mesh)
            return model
        from torch.nn.parallel import DistributedDataParallel
        return DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def no_sync(self, model: nn.Module, enabled: bool):
        """Skip the gradient all-reduce on accumulation micro-steps (DDP) / resharding (FSDP2)."""
        if not enabled or self.world_size == 1:
            return contextlib.nullcontext()
        if self.fsdp:
            model.set_requires_gradient_sync(False)
            return _restore_sync(model)
        return model.no_sync()

    def mean(self, value: float) -> float:
        if self.world_size == 1:
            return value
        t = torch.tensor([value], device=self.device, dtype=torch.float64)
        dist.all_reduce(t)
        return t.item() / self.world_size

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def full_state_dicts(self, model: nn.Module, raw_model: nn.Module, optimizer) -> tuple[dict, dict]:
        """Unsharded model and optimizer state, as one process would hold them (collective under FSDP2)."""
        if self.world_size > 1 and self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
            return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return raw_model.state_dict(), optimizer.state_dict()

    def load_full_state_dicts(self, model, raw_model, optimizer, model_state: dict, optim_state: dict) -> None:
        if self.world_size > 1 and self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict
            set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state,
                           options=StateDictOptions(full_state_dict=True))
            return
        raw_model.load_state_dict(model_state)
        optimizer.load_state_dict(optim_state)


def _fsdp_blocks(model: nn.Module) -> list[nn.Module]:
    """The units FSDP2 shards one by one: ``model.fsdp_units()`` if defined, else every transformer block."""
    if hasattr(model, "fsdp_units"):
        return list(model.fsdp_units())
    from ..models.modeling_ovq import OVQBlock
    return [m for m in model.modules() if isinstance(m, OVQBlock)]


@contextlib.contextmanager
def _restore_sync(model):
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)
