"""Multi-process helpers for `torchrun`: process-group set-up and gradient averaging.

We do not wrap modules in DistributedDataParallel: a GAN step runs several phases over different
parameter subsets with lazy regularisation, which DDP's bucketed hooks handle badly. Instead each
phase averages its gradients explicitly after accumulation (one flat all-reduce), as StyleGAN3 does.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    """Where this process stands: rank, world size and its device."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device: str = "auto") -> Dist:
    """Join the process group if launched by torchrun (WORLD_SIZE > 1), and pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        # Importing torch._dynamo after the group exists (the optimizers do) makes it keep references to the
        # group that destroy_process_group() does not drop (torch 2.14). The group then outlives teardown(), and
        # a gloo worker thread that frees its last collective's tensors during interpreter shutdown aborts the
        # process (SIGABRT, "terminate called without an active exception"). Imported first, it holds nothing.
        importlib.import_module("torch._dynamo")

        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank=rank, world=world, device=dev)


def teardown() -> None:
    """Leave the process group, if any."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def average_gradients(params: list[torch.nn.Parameter], world: int) -> None:
    """Average `.grad` over ranks with one flat all-reduce; missing grads count as zero."""
    if world <= 1 or not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def broadcast_module(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (identical start)."""
    if dist.is_available() and dist.is_initialized():
        for t in module.parameters():
            dist.broadcast(t.data, src=0)
        broadcast_buffers(module)


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Copy rank 0's buffers to every rank (statistics each rank tracks on its own batches, e.g. w_avg)."""
    if dist.is_available() and dist.is_initialized():
        for t in module.buffers():
            dist.broadcast(t.data, src=0)


def all_reduce_mean(x: torch.Tensor, world: int) -> torch.Tensor:
    """Mean of a tensor over ranks (for logging)."""
    if world > 1:
        x = x.clone()
        dist.all_reduce(x)
        x /= world
    return x
