"""Speech encoders: log-mel front end inside the model, SpecAugment, conv subsampling, then
Transformer or Conformer layers.

The features are part of the model, so a checkpoint carries its feature settings and inference
takes raw 16 kHz (or any rate, resampled by the caller) waveforms on the model's device.
"""

from __future__ import annotations

import math

import torch
import torchaudio
from torch import nn

from .base import Encoder, lengths_to_mask, register_encoder


class LogMel(nn.Module):
    """Waveforms ``(batch, samples)`` to per-utterance normalised log-mels ``(batch, frames, n_mels)``."""

    def __init__(self, sample_rate: int, n_mels: int, n_fft: int, hop_length: int):
        super().__init__()
        self.n_fft, self.hop_length = n_fft, hop_length
        # center=False: a frame never reaches past the end of its own waveform, so the padding
        # of a batch cannot change any real frame.
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels, center=False)

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if waveforms.shape[1] < self.n_fft:
            waveforms = nn.functional.pad(waveforms, (0, self.n_fft - waveforms.shape[1]))
        with torch.autocast(waveforms.device.type, enabled=False):
            features = (self.mel(waveforms.float()) + 1e-6).log().transpose(1, 2)
        frames = (torch.div(lengths - self.n_fft, self.hop_length, rounding_mode="floor") + 1).clamp(min=1)
        mask = lengths_to_mask(frames, features.shape[1])[..., None]
        # Utterance-level mean and variance over real frames only: padding must not change features.
        count = mask.sum(1, keepdim=True).clamp(min=1)
        mean = (features * mask).sum(1, keepdim=True) / count
        var = (((features - mean) * mask) ** 2).sum(1, keepdim=True) / count
        return ((features - mean) / (var + 1e-5).sqrt()) * mask, frames


class SpecAugment(nn.Module):
    """Frequency and time masking (Park et al. 2019), each example masked independently."""

    def __init__(self, freq_masks: int = 2, freq_width: int = 27, time_masks: int = 2, time_width: float = 0.05):
        super().__init__()
        self.freq = torchaudio.transforms.FrequencyMasking(freq_width, iid_masks=True)
        self.time_masks, self.time_width, self.freq_masks = time_masks, time_width, freq_masks

    def forward(self, features: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        x = features.transpose(1, 2)[:, None]  # (batch, 1, mels, frames)
        for _ in range(self.freq_masks):
            x = self.freq(x)
        batch, total = features.shape[0], features.shape[1]
        for _ in range(self.time_masks):
            # Mask width is a fraction of each utterance's own length, so short ones keep their words.
            width = (torch.rand(batch, device=x.device) * self.time_width * frames).long()
            start = (torch.rand(batch, device=x.device) * (frames - width).clamp(min=1)).long()
            position = torch.arange(total, device=x.device)[None]
            masked = (position >= start[:, None]) & (position < (start + width)[:, None])
            x = x.masked_fill(masked[:, None, None, :], 0.0)
        return x[:, 0].transpose(1, 2)


_SUBSAMPLING = {4: [(3, 2), (3, 2)], 6: [(3, 2), (5, 3)], 8: [(3, 2), (3, 2), (3, 2)]}


class ConvSubsampling(nn.Module):
    """Conv2d subsampling of ``(batch, frames, mels)`` by 4, 6 or 8 in time, as ESPnet does."""

    def __init__(self, n_mels: int, dim: int, factor: int = 4, channels: int | None = None):
        super().__init__()
        if factor not in _SUBSAMPLING:
            raise ValueError(f"subsampling must be one of {sorted(_SUBSAMPLING)}, got {factor}")
        channels = channels or dim
        self.layers = _SUBSAMPLING[factor]
        convs, width, in_channels = [], n_mels, 1
        for kernel, stride in self.layers:
            convs += [nn.Conv2d(in_channels, channels, kernel, stride), nn.ReLU()]
            width, in_channels = (width - kernel) // stride + 1, channels
        self.conv = nn.Sequential(*convs)
        self.out = nn.Linear(channels * width, dim)

    def output_lengths(self, frames: torch.Tensor) -> torch.Tensor:
        for kernel, stride in self.layers:
            frames = torch.div(frames - kernel, stride, rounding_mode="floor") + 1
        return frames.clamp(min=1)

    def forward(self, features: torch.Tensor, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Very short inputs (under ~85 ms at factor 4) are zero-padded to one output frame
        # rather than failing inside the convolution.
        needed = 1
        for kernel, stride in reversed(self.layers):
            needed = (needed - 1) * stride + kernel
        if features.shape[1] < needed:
            features = nn.functional.pad(features, (0, 0, 0, needed - features.shape[1]))
        x = self.conv(features[:, None])  # (batch, channels, frames', mels')
        x = self.out(x.transpose(1, 2).flatten(2))
        return x, self.output_lengths(frames)


def sinusoidal_positions(length: int, dim: int, device=None) -> torch.Tensor:
    position = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    scale = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, device=device)
    table[:, 0::2] = torch.sin(position * scale)
    table[:, 1::2] = torch.cos(position * scale[: dim // 2])
    return table


class ConformerLayer(nn.Module):
    """A Conformer block (Gulati et al. 2020): half FFN, self-attention, convolution, half FFN.

    Written here rather than taken from torchaudio because its convolution must not see padded
    frames (they are zeroed first), and its normalisation is LayerNorm, which, unlike BatchNorm,
    does not mix padding into statistics.
    """

    def __init__(self, dim: int, heads: int, ffn_dim: int, kernel: int, dropout: float):
        super().__init__()

        def feed_forward():
            return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, ffn_dim), nn.SiLU(), nn.Dropout(dropout),
                                 nn.Linear(ffn_dim, dim), nn.Dropout(dropout))

        self.ffn1, self.ffn2 = feed_forward(), feed_forward()
        self.heads = heads
        self.attention_norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attention_out = nn.Linear(dim, dim)
        self.conv_norm = nn.LayerNorm(dim)
        self.pointwise_in = nn.Linear(dim, 2 * dim)
        self.depthwise = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.depthwise_norm = nn.LayerNorm(dim)
        self.pointwise_out = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.final_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, frames, dim = x.shape
        x = x + 0.5 * self.ffn1(x)
        q, k, v = self.qkv(self.attention_norm(x)).view(batch, frames, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attended = nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask[:, None, None, :], dropout_p=self.dropout.p if self.training else 0.0)
        x = x + self.dropout(self.attention_out(attended.transpose(1, 2).reshape(batch, frames, dim)))
        y = nn.functional.glu(self.pointwise_in(self.conv_norm(x)), dim=-1)
        y = self.depthwise(y.masked_fill(~mask[..., None], 0.0).transpose(1, 2)).transpose(1, 2)
        y = self.pointwise_out(nn.functional.silu(self.depthwise_norm(y)))
        x = x + self.dropout(y)
        x = x + 0.5 * self.ffn2(x)
        return self.final_norm(x)


class SpeechEncoder(Encoder):
    """Log-mel front end, SpecAugment, conv subsampling and Transformer or Conformer layers.

    Args:
        sample_rate: rate the waveforms must have (callers resample to it).
        n_mels, n_fft, hop_length: log-mel settings (defaults: 80 mels, 25 ms window, 10 ms hop).
        dim, layers, heads, ffn_dim: width, depth, attention heads and feed-forward width.
        layer_type: ``"conformer"`` (:class:`ConformerLayer`) or ``"transformer"`` (pre-norm).
        conv_kernel: depthwise convolution kernel of the Conformer blocks.
        subsampling: time reduction of the conv front end: 4, 6 or 8.
        subsampling_channels: channels of the conv front end (default ``dim``).
        dropout: dropout inside the layers.
        specaugment: settings of :class:`SpecAugment`, or ``None`` to train without it.

    ``forward(waveforms (batch, samples), lengths (batch,))`` returns memory
    ``(batch, frames, dim)`` and its mask ``(batch, frames)``.
    """

    modality = "speech"

    def __init__(self, sample_rate: int = 16000, n_mels: int = 80, n_fft: int = 400, hop_length: int = 160,
                 dim: int = 256, layers: int = 12, heads: int = 4, ffn_dim: int = 1024,
                 layer_type: str = "conformer", conv_kernel: int = 31, subsampling: int = 4,
                 subsampling_channels: int | None = None, dropout: float = 0.1,
                 specaugment: dict | None = None):
        super().__init__()
        self.sample_rate, self.output_dim, self.layer_type = sample_rate, dim, layer_type
        self.frame_rate = sample_rate / hop_length / subsampling
        self.features = LogMel(sample_rate, n_mels, n_fft, hop_length)
        self.specaugment = SpecAugment(**specaugment) if specaugment is not None else None
        self.subsampling = ConvSubsampling(n_mels, dim, subsampling, subsampling_channels)
        self.dropout = nn.Dropout(dropout)
        if layer_type == "conformer":
            self.layers = nn.ModuleList(ConformerLayer(dim, heads, ffn_dim, conv_kernel, dropout) for _ in range(layers))
        elif layer_type == "transformer":
            layer = nn.TransformerEncoderLayer(dim, heads, ffn_dim, dropout, activation="gelu",
                                               batch_first=True, norm_first=True)
            self.layers = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(dim), enable_nested_tensor=False)
        else:
            raise ValueError(f"layer_type must be 'conformer' or 'transformer', got {layer_type!r}")

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if lengths is None:
            lengths = torch.full(waveforms.shape[:1], waveforms.shape[1], device=waveforms.device)
        features, frames = self.features(waveforms, lengths)
        if self.training and self.specaugment is not None:
            features = self.specaugment(features, frames)
        x, frames = self.subsampling(features, frames)
        x = self.dropout(x * math.sqrt(self.output_dim) + sinusoidal_positions(x.shape[1], x.shape[2], x.device))
        mask = lengths_to_mask(frames, x.shape[1])
        if self.layer_type == "conformer":
            for layer in self.layers:
                x = layer(x, mask)
        else:
            x = self.layers(x, src_key_padding_mask=~mask)
        return x, mask


@register_encoder("conformer")
def conformer(**settings) -> SpeechEncoder:
    """Speech encoder with Conformer layers (defaults sized like ESPnet's LibriSpeech-100 model)."""
    return SpeechEncoder(**{"layer_type": "conformer", **settings})


@register_encoder("transformer")
def transformer(**settings) -> SpeechEncoder:
    """Speech encoder with pre-norm Transformer layers."""
    return SpeechEncoder(**{"layer_type": "transformer", **settings})
