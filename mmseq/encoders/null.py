"""The ``null`` encoder: no input, for models that only model text (task ``lm``)."""

from __future__ import annotations

import torch

from .base import Encoder, register_encoder


@register_encoder("null")
class NullEncoder(Encoder):
    """One constant frame per example: the decoder's cross-attention then reduces to a learned
    bias per layer, and the network is a decoder-only Transformer language model."""

    modality = "none"

    def __init__(self, dim: int = 1):
        super().__init__()
        self.output_dim = dim

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor | None):
        batch = inputs.shape[0]
        memory = torch.zeros(batch, 1, self.output_dim, device=inputs.device)
        return memory, torch.ones(batch, 1, dtype=torch.bool, device=inputs.device)
