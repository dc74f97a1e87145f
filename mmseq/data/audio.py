"""Audio reading with soundfile (torchaudio 2.11's ``load`` needs FFmpeg), to mono float tensors."""

from __future__ import annotations

import io
import math
import os

import numpy as np
import torch
import torchaudio

from ..errors import InputError


class AudioSpan(str):
    """An audio file's path (the string itself) and the part of it to read, as a Lhotse cut names it.

    ``offset`` and ``duration`` in seconds (``duration`` None: to the end of the file); ``channels``:
    the file's channels to average (None: all). It is a ``str`` so that everything that handles an
    example's ``audio`` as a path (messages, headers, hypotheses files) goes on doing so, while
    :func:`load_audio` reads only the span.
    """

    def __new__(cls, path: str, offset: float = 0.0, duration: float | None = None,
                channels: list[int] | None = None):
        span = super().__new__(cls, path)
        span.offset, span.duration, span.channels = float(offset), duration, channels
        return span

    def __reduce__(self):  # DataLoader workers receive examples pickled
        return AudioSpan, (str(self), self.offset, self.duration, self.channels)

    def __repr__(self) -> str:
        return f"AudioSpan({str(self)!r}, offset={self.offset}, duration={self.duration}, channels={self.channels})"


def resample(waveform: torch.Tensor, sample_rate: int, target: int) -> torch.Tensor:
    if sample_rate == target:
        return waveform
    return torchaudio.functional.resample(waveform, sample_rate, target)


def load_audio(path, sample_rate: int | None = None, isolate: bool = False) -> torch.Tensor:
    """Read an audio file as a mono float32 waveform ``(samples,)``, resampled to ``sample_rate``.

    Stereo is averaged to mono. An :class:`AudioSpan` reads only its part of the file. Raises :class:`InputError` naming the file when it is missing, a
    folder, empty, unreadable, or holds no finite samples.

    ``isolate``: decode in a forked child process, so that a file which crashes libsndfile itself
    (a C library: a crash would end this process) becomes an :class:`InputError` too. It costs a
    fork per file (milliseconds); meant for files from untrusted sources and for fuzzing.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"{path}: audio file not found")
    if os.path.isdir(path):
        raise InputError(f"{path}: is a folder, not an audio file")
    data, rate = _read_in_child(path) if isolate and hasattr(os, "fork") else _read(path)
    if data.shape[0] == 0:
        raise InputError(f"{path}: audio file holds no samples")
    if not np.isfinite(data).all():
        raise InputError(f"{path}: audio holds NaN or infinite samples")
    waveform = torch.from_numpy(data.mean(1))
    return resample(waveform, rate, sample_rate) if sample_rate else waveform


def _read(path: str) -> tuple[np.ndarray, int]:
    """``(samples (frames, channels) float32, sample rate)`` as soundfile reads them."""
    import soundfile

    try:
        if not isinstance(path, AudioSpan):
            return soundfile.read(path, dtype="float32", always_2d=True)
        with soundfile.SoundFile(path) as file:  # only the span's frames are decoded
            rate, start = file.samplerate, _frames(path.offset, file.samplerate)
            if start >= file.frames:
                raise InputError(f"{path}: offset {path.offset} s is past the end of the audio "
                                 f"({file.frames / rate:.3f} s)")
            file.seek(start)
            data = file.read(-1 if path.duration is None else _frames(path.duration, rate), dtype="float32",
                             always_2d=True)
    except InputError:
        raise
    except Exception as error:  # soundfile raises several kinds for corrupt files
        raise InputError(f"{path}: cannot read audio ({str(error).strip() or type(error).__name__})") from None
    if path.channels is not None:
        if max(path.channels) >= data.shape[1]:
            raise InputError(f"{path}: channel {max(path.channels)} asked for, the file has {data.shape[1]}")
        data = data[:, path.channels]
    return data, rate


def _frames(seconds: float, rate: int) -> int:
    """Seconds to samples as Lhotse counts them (half a sample rounds up, after rounding away
    float noise), so a cut's span is the very samples Lhotse would read."""
    return int(math.floor(round(seconds * rate, 8) + 0.5))


def _read_in_child(path: str) -> tuple[np.ndarray, int]:
    """:func:`_read` in a forked child; its answer comes back through a pipe as ``.npy`` arrays
    (no pickle): a message (``"ok"`` or the error), then the rate and the samples."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only reads, writes the answer and leaves without cleanup
        try:
            os.close(read_end)
            answer = io.BytesIO()  # np.save to a real file would write the samples past its buffer
            try:
                data, rate = _read(path)
                for array in (np.array("ok"), np.array([rate]), data):
                    np.save(answer, array, allow_pickle=False)
            except InputError as error:
                np.save(answer, np.array(str(error)), allow_pickle=False)
            with os.fdopen(write_end, "wb") as pipe:
                pipe.write(answer.getbuffer())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read()  # all of it before waiting: a large file fills the pipe's buffer
    status = os.waitpid(pid, 0)[1]
    if os.WIFSIGNALED(status) or not answer:
        how = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit status {os.WEXITSTATUS(status)}"
        raise InputError(f"{path}: cannot read audio (the audio library crashed: {how})")
    stream = io.BytesIO(answer)
    message = str(np.load(stream, allow_pickle=False))
    if message != "ok":
        raise InputError(message)
    rate = int(np.load(stream, allow_pickle=False)[0])
    return np.load(stream, allow_pickle=False), rate


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
