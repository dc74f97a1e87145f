"""A raw-waveform speech encoder for mmseq, shipped in its own package.

Strided 1-D convolutions read the samples themselves, as wav2vec 2.0's feature encoder does (no
log-mel front end), then a few pre-norm Transformer layers give the memory. Importing this module
registers the encoder as ``"waveform"``; mmseq imports it through the ``mmseq.encoders`` entry
point that ``pyproject.toml`` declares, so a config names it like any built-in encoder:

    model:
      encoder: {name: waveform, dim: 144, layers: 4}
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mmseq.encoders import Encoder, lengths_to_mask, register_encoder
from mmseq.encoders.speech import sinusoidal_positions

__version__ = "0.1.0"


class ConvBlock(nn.Module):
    """Conv1d, LayerNorm over channels, GELU. The norm looks at one frame at a time, so padding
    never leaks into real frames (GroupNorm over time, as wav2vec 2.0's first layer has, would)."""

    def __init__(self, in_channels: int, channels: int, kernel: int, stride: int):
        super().__init__()
        self.conv = nn.Conv1d(in_channels, channels, kernel, stride)
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (batch, channels, samples)
        x = self.conv(x)
        return nn.functional.gelu(self.norm(x.transpose(1, 2)).transpose(1, 2))


@register_encoder("waveform")
class WaveformEncoder(Encoder):
    """Waveforms ``(batch, samples)`` at ``sample_rate`` to memory ``(batch, frames, dim)``.

    Args:
        sample_rate: rate of the waveforms (mmseq resamples audio files to it).
        channels: channels of every convolution.
        kernels, strides: the convolutions; the defaults (wav2vec 2.0's) make one frame per 320
            samples, 50 frames a second at 16 kHz, each seeing 400 samples (25 ms).
        dim, layers, heads, ffn_dim, dropout: the Transformer layers after the convolutions.

    ``forward(waveforms, lengths)`` returns the memory and its mask, True on frames whose samples
    are all real; ``frame_rate`` says how many frames a second of audio gives.
    """

    modality = "speech"

    def __init__(self, sample_rate: int = 16000, channels: int = 256, kernels=(10, 3, 3, 3, 3, 2, 2),
                 strides=(5, 2, 2, 2, 2, 2, 2), dim: int = 144, layers: int = 2, heads: int = 4,
                 ffn_dim: int = 576, dropout: float = 0.1):
        super().__init__()
        if len(kernels) != len(strides):
            raise ValueError(f"kernels and strides must pair up, got {len(kernels)} and {len(strides)}")
        self.sample_rate, self.output_dim = sample_rate, dim
        self.kernels, self.strides = list(kernels), list(strides)
        self.frame_rate = sample_rate / math.prod(strides)
        self.receptive_field = 1 + sum((k - 1) * math.prod(strides[:i]) for i, k in enumerate(kernels))
        self.convs = nn.Sequential(*[ConvBlock(1 if i == 0 else channels, channels, k, s)
                                     for i, (k, s) in enumerate(zip(kernels, strides))])
        self.project = nn.Linear(channels, dim)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(dim, heads, ffn_dim, dropout, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.layers = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(dim), enable_nested_tensor=False)

    def output_lengths(self, samples: torch.Tensor) -> torch.Tensor:
        """Frames that ``samples`` real samples give (at least one)."""
        frames = samples.clamp(min=self.receptive_field)
        for kernel, stride in zip(self.kernels, self.strides):
            frames = torch.div(frames - kernel, stride, rounding_mode="floor") + 1
        return frames

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if lengths is None:
            lengths = torch.full(waveforms.shape[:1], waveforms.shape[1], device=waveforms.device)
        if waveforms.shape[1] < self.receptive_field:  # too short for one frame: pad with silence
            waveforms = nn.functional.pad(waveforms, (0, self.receptive_field - waveforms.shape[1]))
        # Each utterance to zero mean and unit variance over its real samples only.
        real = lengths_to_mask(lengths, waveforms.shape[1])
        count = real.sum(1, keepdim=True).clamp(min=1)
        mean = (waveforms * real).sum(1, keepdim=True) / count
        std = ((((waveforms - mean) * real) ** 2).sum(1, keepdim=True) / count).sqrt()
        x = ((waveforms - mean) / (std + 1e-5) * real)[:, None]  # (batch, 1, samples)
        x = self.project(self.convs(x).transpose(1, 2))  # (batch, frames, dim)
        frames = self.output_lengths(lengths)
        mask = lengths_to_mask(frames, x.shape[1])
        x = self.dropout(x * math.sqrt(self.output_dim) + sinusoidal_positions(x.shape[1], self.output_dim, x.device))
        return self.layers(x, src_key_padding_mask=~mask), mask
