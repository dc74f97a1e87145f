"""Distributed training helpers: joining the process group torchrun starts, sums and gathers
over ranks, FSDP2 sharding, and activation checkpointing of a model's repeated layers."""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext

import torch
import torch.distributed as dist
from torch import nn


def distributed_setup(device_setting: str) -> tuple[int, int, torch.device]:
    """Rank, world size and device; joins the process group when started by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device_setting == "auto":
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(device_setting)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls on tensor cores (Ampere and later)
        torch.backends.cudnn.allow_tf32 = True
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def all_reduce_sum(values: list[float], device) -> list[float]:
    """Sums over every rank (the values themselves in a single process)."""
    if not dist.is_initialized():
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def leave_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def gather_objects(value) -> list:
    """``value`` of every rank, in rank order (``[value]`` in a single process)."""
    if not dist.is_initialized():
        return [value]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def layer_modules(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a model: every child of a ``layers`` or ``blocks`` list (the
    encoder's and decoder's layers, a timm ViT's blocks), outermost lists only."""
    found, inside = [], []
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in inside):
            continue
        if name.rsplit(".", 1)[-1] in ("layers", "blocks") and isinstance(module, (nn.ModuleList, nn.Sequential)):
            found += list(module)
            inside.append(name)
    return found


def checkpoint_activations(modules: list[nn.Module]) -> None:
    """Keep only each module's inputs in the forward pass and recompute the rest in backward:
    activation memory of one layer instead of all, for about a third more compute. The weights,
    their names and the results (dropout masks included) are unchanged."""
    from torch.utils.checkpoint import checkpoint

    for module in modules:
        def forward(*args, _forward=module.forward, **kwargs):
            if not torch.is_grad_enabled():
                return _forward(*args, **kwargs)
            return checkpoint(_forward, *args, use_reentrant=False, **kwargs)
        module.forward = forward


def shard_model(model: nn.Module) -> None:
    """FSDP2: each layer, then the rest, sharded across the process group (in place). A layer's
    own public methods besides ``forward`` (the decoder layer's ``memory_kv``) gather its weights too."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    for module in layer_modules(model):
        methods = [name for name, value in vars(type(module)).items()
                   if callable(value) and not name.startswith("_") and name != "forward"]
        fully_shard(module)  # (this changes the module's class)
        for name in methods:
            register_fsdp_forward_method(module, name)
    fully_shard(model)


def wrap_network(network: nn.Module, world: int, sharded: bool, device: torch.device) -> nn.Module:
    """``network`` in DistributedDataParallel when several processes train unsharded copies."""
    if world == 1 or sharded:
        return network
    return nn.parallel.DistributedDataParallel(network, device_ids=[device.index] if device.type == "cuda" else None)


def gradient_sync(ddp: nn.Module, model: nn.Module, world: int, sharded: bool, sync: bool):
    """Within an accumulation window only the last micro-batch exchanges gradients: a context in
    which DDP (``ddp``) or FSDP (``model``) syncs them only when ``sync``."""
    if world == 1:
        return nullcontext()
    if sharded:
        model.set_requires_gradient_sync(sync)
        return nullcontext()
    return nullcontext() if sync else ddp.no_sync()


@contextmanager
def full_weights(model: nn.Module):
    """Gather a sharded model's weights on every rank for the duration (validation, decoding),
    so that ranks may run different numbers of forward passes; a no-op for a plain model."""
    from torch.distributed.fsdp import FSDPModule

    sharded = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for module in sharded:
        module.unshard()
        module.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for module in sharded:
            module.set_reshard_after_forward(True, recurse=False)
            module.reshard()


