"""LoRA: a low-rank update of a frozen linear layer (Hu et al. 2021, "LoRA: Low-Rank Adaptation of
Large Language Models"), the second adapter form of prompt tuning (``prompt_tuning.lora``).

:func:`add_lora` gives each attention projection of a decoder (``self_qkv``, ``self_out``,
``cross_q``, ``cross_kv``, ``cross_out`` of every layer) two parameters beside its own, ``lora_a``
``(rank, in)`` and ``lora_b`` ``(out, rank)``, and a forward hook that adds ``x A^T B^T * alpha / rank``
to its output. ``B`` starts at zero, so the adapted model starts as the base; the layer's own
``weight`` and ``bias`` keep their names, so a base checkpoint loads into it unchanged and the
adapter's tensors are the state-dict entries ending in ``.lora_a`` / ``.lora_b``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

PROJECTIONS = ("self_qkv", "self_out", "cross_q", "cross_kv", "cross_out")
SUFFIXES = (".lora_a", ".lora_b")


def _update(module: nn.Linear, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    x = inputs[0].to(module.lora_a.dtype)
    return output + (F.linear(F.linear(x, module.lora_a), module.lora_b) * module.lora_scale).to(output.dtype)


def add_lora(decoder: nn.Module, rank: int, alpha: float | None = None) -> list[str]:
    """Rank-``rank`` adapters on every attention projection of ``decoder``'s layers; returns the
    names (relative to ``decoder``) of the new parameters. ``alpha`` defaults to ``rank`` (scale 1)."""
    names = []
    generator = torch.Generator().manual_seed(rank)
    for index, layer in enumerate(decoder.layers):
        for projection in PROJECTIONS:
            linear = getattr(layer, projection)
            if hasattr(linear, "lora_a"):
                raise ValueError(f"layers.{index}.{projection} already has a LoRA adapter")
            a = torch.empty(rank, linear.in_features)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)  # as nn.Linear's own weight
            linear.lora_a = nn.Parameter(a.to(linear.weight))
            linear.lora_b = nn.Parameter(linear.weight.new_zeros(linear.out_features, rank))
            linear.lora_scale = (alpha or rank) / rank
            linear.register_forward_hook(_update)
            names += [f"layers.{index}.{projection}{suffix}" for suffix in SUFFIXES]
    return names


def is_lora(name: str) -> bool:
    return name.endswith(SUFFIXES)
