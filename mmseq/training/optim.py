"""The optimizer, the learning-rate schedule, mixed precision and the weight average."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from ..errors import ConfigError


def make_optimizer(model: torch.nn.Module, config) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (not on biases, norms, or embeddings' positions);
    the encoders' weights at ``encoder_lr_scale`` times the learning rate (a pretrained encoder
    fine-tuned more gently than the rest)."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    scale = getattr(config, "encoder_lr_scale", 1.0)
    groups = []
    for encoder in (False, True):
        part = [p for name, p in named if (".encoders." in f".{name}") == encoder]
        lr = config.lr * (scale if encoder else 1.0)
        groups += [{"params": [p for p in part if p.dim() >= 2], "weight_decay": config.weight_decay, "lr": lr},
                   {"params": [p for p in part if p.dim() < 2], "weight_decay": 0.0, "lr": lr}]
    groups = [group for group in groups if group["params"]]
    params = [p for _, p in named]
    fused = bool(params) and all(p.is_cuda for p in params)
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.98), eps=1e-9 if fused else 1e-8, fused=fused)


def lr_factor(step: int, total: int, config) -> float:
    """Learning-rate multiplier: linear warmup, then cosine to ``min_lr_ratio``, noam, or constant."""
    warmup = max(1, config.warmup_steps)
    if step < warmup:
        return (step + 1) / warmup
    if config.schedule == "noam":
        return math.sqrt(warmup / (step + 1))
    if config.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_schedule(optimizer: torch.optim.Optimizer, total_steps: int, config, dtype, device: torch.device):
    """The learning rate schedule (:func:`lr_factor`) and the loss scaler (on with fp16 only)."""
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, config))
    return scheduler, torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 on GPUs that have it, else fp16 (with a loss scaler); fp32 on CPU unless asked."""
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ConfigError(f"trainer.precision={precision!r}: expected auto, fp32, bf16 or fp16")
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


class WeightAverage:
    """Exponential moving average of a model's weights (Polyak averaging), in a copy of the model.

    The decay ramps up as ``min(decay, (1 + step) / (10 + step))`` so the first steps' random
    weights fade quickly; buffers are copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ConfigError(f"trainer.ema={decay}: the decay must be between 0 and 1 (0 turns it off)")
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(list(self.model.parameters()), list(model.parameters()), 1.0 - decay)
        for mine, theirs in zip(self.model.buffers(), model.buffers()):
            mine.copy_(theirs)


