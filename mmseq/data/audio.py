"""Audio reading with soundfile (torchaudio 2.11's ``load`` needs FFmpeg), to mono float tensors."""

from __future__ import annotations

import os

import numpy as np
import torch
import torchaudio

from ..errors import InputError


def resample(waveform: torch.Tensor, sample_rate: int, target: int) -> torch.Tensor:
    if sample_rate == target:
        return waveform
    return torchaudio.functional.resample(waveform, sample_rate, target)


def load_audio(path, sample_rate: int | None = None) -> torch.Tensor:
    """Read an audio file as a mono float32 waveform ``(samples,)``, resampled to ``sample_rate``.

    Stereo is averaged to mono. Raises :class:`InputError` naming the file when it is missing, a
    folder, empty, unreadable, or holds no finite samples.
    """
    import soundfile

    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"{path}: audio file not found")
    if os.path.isdir(path):
        raise InputError(f"{path}: is a folder, not an audio file")
    try:
        data, rate = soundfile.read(path, dtype="float32", always_2d=True)
    except Exception as error:  # soundfile raises several kinds for corrupt files
        raise InputError(f"{path}: cannot read audio ({str(error).strip() or type(error).__name__})") from None
    if data.shape[0] == 0:
        raise InputError(f"{path}: audio file holds no samples")
    if not np.isfinite(data).all():
        raise InputError(f"{path}: audio holds NaN or infinite samples")
    waveform = torch.from_numpy(data.mean(1))
    return resample(waveform, rate, sample_rate) if sample_rate else waveform


def as_waveform(audio, sample_rate: int, given_rate: int | None = None) -> torch.Tensor:
    """A path, numpy array or tensor to a mono waveform at ``sample_rate``.

    Arrays and tensors are taken at ``given_rate`` (default: already at ``sample_rate``); a 2-D one
    is ``(channels, samples)`` and is averaged.
    """
    if isinstance(audio, (str, os.PathLike)):
        return load_audio(audio, sample_rate)
    waveform = torch.as_tensor(audio, dtype=torch.float32)
    if waveform.dim() == 2:
        waveform = waveform.mean(0)
    if waveform.dim() != 1 or waveform.numel() == 0:
        raise InputError(f"expected a waveform of shape (samples,) or (channels, samples), got {tuple(waveform.shape)}")
    if not torch.isfinite(waveform).all():
        raise InputError("waveform holds NaN or infinite samples")
    return resample(waveform, given_rate or sample_rate, sample_rate)
