"""Whisper's audio encoder (Radford et al. 2022) as an mmseq encoder: its own log-mel front end
(Slaney mel filterbank over a 400-point STFT with a 160-sample hop, log10 clamped to 8 below the
utterance's peak, scaled to about [-1, 1]), two convolutions (the second of stride 2: 50 frames a
second), sinusoidal positions, pre-norm Transformer blocks and a final norm.

Whisper was trained on 30-s windows: by default every input is padded with silence to 30 s and
all 1,500 frames are memory, as in openai-whisper, faster-whisper and transformers. ``tail``
runs each input on a shorter length instead: its audio and ``tail`` seconds of silence after it,
at most the window (the positions of its first frames; a batch's padding masked out of
attention). ``tail: 0`` is each input's real length. Far less work on short clips, at a cost:
Whisper decides where the speech ends from the silence after it, and Whisper-base given less
than about 10 s of it often repeats its transcript until the length limit. The figures are in
the README.

Weights come from ``mmseq import whisper`` (:mod:`mmseq.importers.whisper`); the names follow
openai-whisper's, with each attention's query, key and value fused into one ``qkv`` projection.
"""

from __future__ import annotations

import torch
import torchaudio
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError, InputError
from .base import Encoder, lengths_to_mask, register_encoder
from .speech import SpecAugment

SAMPLE_RATE, N_FFT, HOP = 16000, 400, 160


def log_mel(waveforms: torch.Tensor, lengths: torch.Tensor, filters: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Whisper's log-mel spectrogram ``(batch, n_mels, frames)`` of zero-padded ``waveforms
    (batch, samples)`` and each row's frame count ``lengths // 160``. Each row's peak is taken over
    its own frames, and a frame sees the row's samples or the silence after them, never another
    row's padding: a batch gives every row the features it gets alone."""
    waveforms = F.pad(waveforms.float(), (0, N_FFT // 2))  # the last frames reflect silence, not signal
    window = torch.hann_window(N_FFT, device=waveforms.device)
    spectrum = torch.stft(waveforms, N_FFT, HOP, window=window, return_complex=True)[..., :-1].abs() ** 2
    frames = torch.div(lengths, HOP, rounding_mode="floor").clamp(min=1)
    spectrum = spectrum[..., : int(frames.max())]
    mels = (filters.T @ spectrum).clamp(min=1e-10).log10()
    real = lengths_to_mask(frames, mels.shape[-1])[:, None, :]
    peak = mels.masked_fill(~real, float("-inf")).amax((1, 2), keepdim=True)
    return (torch.maximum(mels, peak - 8.0) + 4.0) / 4.0, frames


class Block(nn.Module):
    """Pre-norm self-attention and MLP (Whisper's ``ResidualAttentionBlock`` without cross-attention)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.attn_ln, self.mlp_ln = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)  # Whisper's key has no bias: imported as zeros (and softmax ignores it)
        self.out = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        batch, frames, dim = x.shape
        q, k, v = self.qkv(self.attn_ln(x)).view(batch, frames, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        x = x + self.out(attended.transpose(1, 2).reshape(batch, frames, dim))
        return x + self.mlp(self.mlp_ln(x))


def sinusoids(length: int, dim: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """Whisper's fixed positions ``(length, dim)``: sines then cosines of geometric timescales."""
    increment = torch.log(torch.tensor(max_timescale)) / (dim // 2 - 1)
    scaled = torch.arange(length)[:, None] * torch.exp(-increment * torch.arange(dim // 2))[None, :]
    return torch.cat([scaled.sin(), scaled.cos()], 1)


@register_encoder("whisper")
class WhisperEncoder(Encoder):
    """Whisper's encoder. Settings (those of whisper-base by default):

    Args:
        n_mels: mel bands (80; 128 for large-v3).
        dim, heads, layers: width, attention heads and blocks.
        positions: memory frames of a whole window (1500: 30 s at 50 frames a second).
        tail: seconds of silence after each input's audio, the whole at most the window (30: every
            input a whole window, as Whisper; 0: its real length; see the module).
        spec_augment: SpecAugment on the log-mels while training (fine-tuning).
        feature_padding: what follows the audio in a window: ``"silence"`` (its log-mel, as
            openai-whisper and transformers pad the waveform) or ``"zeros"`` (zero log-mel frames,
            as faster-whisper pads the features: its outputs, token for token).
    """

    modality = "speech"
    sample_rate = SAMPLE_RATE
    frame_rate = SAMPLE_RATE / HOP / 2  # 50 memory frames a second

    def __init__(self, n_mels: int = 80, dim: int = 512, heads: int = 8, layers: int = 6, positions: int = 1500,
                 tail: float = 30.0, spec_augment: bool = False, feature_padding: str = "silence"):
        super().__init__()
        self.output_dim = dim
        self.window_samples = positions * 2 * HOP
        if not 0 <= tail * SAMPLE_RATE <= self.window_samples:
            raise ConfigError(f"whisper encoder: tail={tail} must be between 0 and {self.window_samples / SAMPLE_RATE:g} s")
        self.tail_samples = int(tail * SAMPLE_RATE)
        if feature_padding not in ("silence", "zeros"):
            raise ConfigError(f"whisper encoder: feature_padding={feature_padding!r}: silence or zeros")
        self.feature_padding = feature_padding
        filters = torchaudio.functional.melscale_fbanks(N_FFT // 2 + 1, 0.0, SAMPLE_RATE / 2, n_mels, SAMPLE_RATE,
                                                        norm="slaney", mel_scale="slaney")
        self.register_buffer("filters", filters, persistent=False)  # (frequencies, n_mels)
        self.conv1 = nn.Conv1d(n_mels, dim, 3, padding=1)
        self.conv2 = nn.Conv1d(dim, dim, 3, stride=2, padding=1)
        self.register_buffer("positional_embedding", sinusoids(positions, dim))
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.ln_post = nn.LayerNorm(dim)
        self.spec_augment = SpecAugment() if spec_augment else None

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``inputs (batch, samples)`` waveforms at 16 kHz, ``lengths (batch,)`` -> memory
        ``(batch, frames, dim)`` and its mask."""
        if lengths is None:
            lengths = torch.full(inputs.shape[:1], inputs.shape[1], device=inputs.device)
        longest = int(lengths.max())
        if longest > self.window_samples:
            raise InputError(f"audio of {longest / SAMPLE_RATE:.1f} s is longer than Whisper's "
                             f"{self.window_samples / SAMPLE_RATE:.0f}-s window: decode it as long audio")
        audio_frames = torch.div(lengths, HOP, rounding_mode="floor") + 1  # the audio's and 10 ms after
        if self.tail_samples > 0:  # every input is its audio then silence, at most a window of them
            lengths = (lengths + self.tail_samples).clamp(max=self.window_samples)
            inputs = F.pad(inputs[:, :longest], (0, int(lengths.max()) - longest))
        mels, frames = log_mel(inputs, lengths, self.filters)
        if self.feature_padding == "zeros":
            mels = mels * lengths_to_mask(audio_frames, mels.shape[-1])[:, None, :]
        if self.spec_augment is not None and self.training:
            mels = self.spec_augment(mels.transpose(1, 2), frames).transpose(1, 2)
        real = lengths_to_mask(frames, mels.shape[-1])[:, None, :]
        x = F.gelu(self.conv1(mels * real)) * real  # beyond a row's end: the zeros its convolutions see alone
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        memory_frames = torch.div(frames + 1, 2, rounding_mode="floor")
        x = x + self.positional_embedding[: x.shape[1]].to(x.dtype)
        mask = lengths_to_mask(memory_frames, x.shape[1])
        bias = None
        if not bool(mask.all()):
            bias = torch.zeros(mask.shape, dtype=x.dtype, device=x.device).masked_fill(~mask, float("-inf"))
            bias = bias[:, None, None, :]
        for block in self.blocks:
            x = block(x, bias)
        return self.ln_post(x), mask
