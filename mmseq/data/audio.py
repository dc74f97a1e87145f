"""Audio reading with soundfile (torchaudio 2.11's ``load`` needs FFmpeg), to mono float tensors.

The cost of reading is bounded by what the file really holds, whatever its header says: the sample
rate must lie in [:data:`MIN_SAMPLE_RATE`, :data:`MAX_SAMPLE_RATE`], the duration (frames that are
really there, which libsndfile counts from the file's size) at most :data:`MAX_AUDIO_SECONDS`, and
resampling goes through soxr, whose cost grows with the samples, not with the rates' gcd
(torchaudio's sinc resampler builds a ``(rate / gcd) x (target / gcd)`` kernel: 4.8 GB for 16001 Hz).
"""

from __future__ import annotations

import io
import math
import os
import re

import numpy as np
import torch

from ..errors import InputError
from .files import check_regular, escape, open_regular

MIN_SAMPLE_RATE = 1000  # below this a header is wrong (a 1 Hz header turns 38 KB into ten hours)
MAX_SAMPLE_RATE = 768_000  # the highest rate audio interfaces record
MAX_AUDIO_SECONDS = 3 * 3600.0  # longest recording read at all (3 h at 16 kHz: 0.7 GB of float32)
MAX_PEAK = 1e5  # samples beyond this are not audio (int16-range floats, up to 32768, still pass)


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
    """``(samples,)`` from ``sample_rate`` to ``target`` with soxr (high quality), in time linear in
    the samples whatever the two rates are."""
    if sample_rate == target:
        return waveform
    import soxr

    _check_rate(sample_rate, "waveform")
    out = soxr.resample(waveform.detach().cpu().numpy().astype(np.float32, copy=False), sample_rate, target)
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))


def _why(error: Exception) -> str:
    """soundfile's message without its "Error opening <file object>: " (it was given a file object)."""
    text = re.sub(r"^Error opening <[^>]*>: ", "", str(error).strip())
    return text or type(error).__name__


def _check_rate(rate, name: str) -> None:
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise InputError(f"{name}: sample rate of {rate} Hz is outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz "
                         "(a corrupt header?)")


def _check_samples(data: np.ndarray, name: str) -> None:
    """NaN, infinite and absurdly large samples (1e30 overflows the features) are refused."""
    if not np.isfinite(data).all():
        raise InputError(f"{name}: audio holds NaN or infinite samples")
    peak = float(np.abs(data).max(initial=0.0))
    if peak > MAX_PEAK:
        raise InputError(f"{name}: audio samples reach {peak:.3g}, far outside [-1, 1] (at most {MAX_PEAK:g})")


def load_audio(path, sample_rate: int | None = None, isolate: bool = False,
               max_seconds: float = MAX_AUDIO_SECONDS) -> torch.Tensor:
    """Read an audio file as a mono float32 waveform ``(samples,)``, resampled to ``sample_rate``.

    Stereo is averaged to mono; an :class:`AudioSpan` reads only its part of the file (and its
    channels). Raises :class:`InputError` naming the file when it is missing, not a regular file (a
    folder, a FIFO, a device), empty, unreadable, has a sample rate outside
    [:data:`MIN_SAMPLE_RATE`, :data:`MAX_SAMPLE_RATE`], lasts longer than ``max_seconds``, or holds
    non-finite or absurdly large samples. File names need not be UTF-8.

    ``isolate``: decode in a forked child process, so that a file which crashes libsndfile itself
    (a C library: a crash would end this process) becomes an :class:`InputError` too. It costs a
    fork per file (milliseconds); meant for files from untrusted sources and for fuzzing.
    """
    path = os.fspath(path)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    check_regular(path, "audio file")
    read = _read_in_child if isolate and hasattr(os, "fork") else _read
    data, rate = read(path, max_seconds)
    name = escape(path)
    if data.shape[0] == 0:
        raise InputError(f"{name}: audio file holds no samples")
    _check_samples(data, name)
    waveform = torch.from_numpy(np.ascontiguousarray(data.mean(1), dtype=np.float32))
    return resample(waveform, rate, sample_rate) if sample_rate else waveform


def _read(path: str, max_seconds: float = MAX_AUDIO_SECONDS) -> tuple[np.ndarray, int]:
    """``(samples (frames, channels) float32, sample rate)`` as soundfile reads them, once the
    header's rate and the real duration passed their limits (nothing is decoded before)."""
    import soundfile

    name = escape(path)
    # An open file object, not the name: soundfile encodes names as UTF-8, which fails for names
    # that are not (a FIFO cannot block here: open_regular refuses it first).
    with open_regular(path, "audio file") as raw:
        try:
            with soundfile.SoundFile(raw) as audio:
                rate, frames, channels = audio.samplerate, audio.frames, audio.channels
                _check_rate(rate, name)
                start, count = 0, frames
                if isinstance(path, AudioSpan):  # only the span's frames are decoded
                    start = _frames(path.offset, rate)
                    if start >= frames:
                        raise InputError(f"{name}: offset {path.offset} s is past the end of the audio "
                                         f"({frames / rate:.3f} s)")
                    count = frames - start if path.duration is None else min(frames - start,
                                                                                 _frames(path.duration, rate))
                if count / rate > max_seconds:
                    raise InputError(f"{name}: audio lasts {count / rate:.0f} s, longer than the limit of "
                                     f"{max_seconds:.0f} s")
                if channels > 64:
                    raise InputError(f"{name}: audio has {channels} channels (at most 64)")
                audio.seek(start)
                data = audio.read(count, dtype="float32", always_2d=True)
        except InputError:
            raise
        except Exception as error:  # soundfile raises several kinds for corrupt files
            raise InputError(f"{name}: cannot read audio ({_why(error)})") from None
    if isinstance(path, AudioSpan) and path.channels is not None:
        if max(path.channels) >= data.shape[1]:
            raise InputError(f"{name}: channel {max(path.channels)} asked for, the file has {data.shape[1]}")
        data = data[:, path.channels]
    return data, rate


def _frames(seconds: float, rate: int) -> int:
    """Seconds to samples as Lhotse counts them (half a sample rounds up, after rounding away
    float noise), so a cut's span is the very samples Lhotse would read."""
    return int(math.floor(round(seconds * rate, 8) + 0.5))


def audio_duration(path) -> float:
    """Seconds of audio in a file, from its header (nothing is decoded); :class:`InputError` naming
    it when it is not a regular file (a FIFO would block) or not audio libsndfile reads."""
    import soundfile

    path = os.fsdecode(os.fspath(path))
    name = escape(path)
    with open_regular(path, "audio file") as raw:
        try:
            with soundfile.SoundFile(raw) as audio:
                return audio.frames / audio.samplerate
        except Exception as error:
            raise InputError(f"{name}: cannot read audio ({_why(error)})") from None


def _read_in_child(path: str, max_seconds: float = MAX_AUDIO_SECONDS) -> tuple[np.ndarray, int]:
    """:func:`_read` in a forked child; its answer comes back through a pipe as ``.npy`` arrays
    (no pickle): a message (``"ok"`` or the error), then the rate and the samples."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only reads, writes the answer and leaves without cleanup
        try:
            os.close(read_end)
            answer = io.BytesIO()  # np.save to a real file would write the samples past its buffer
            try:
                data, rate = _read(path, max_seconds)
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
        raise InputError(f"{escape(path)}: cannot read audio (the audio library crashed: {how})")
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
    if not isinstance(audio, (np.ndarray, torch.Tensor, list, tuple)):  # None, bytes, a dict: no waveform
        raise InputError(f"expected an audio path, array or tensor, got {type(audio).__name__}")
    try:
        waveform = torch.as_tensor(audio, dtype=torch.float32).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as error:
        raise InputError(f"cannot use this {type(audio).__name__} as a waveform ({error})") from None
    if waveform.dim() == 2:
        waveform = waveform.mean(0)
    if waveform.dim() != 1 or waveform.numel() == 0:
        raise InputError(f"expected a waveform of shape (samples,) or (channels, samples), got {tuple(waveform.shape)}")
    _check_samples(waveform.numpy(), "waveform")
    if waveform.numel() > MAX_AUDIO_SECONDS * (given_rate or sample_rate):
        raise InputError(f"waveform of {waveform.numel()} samples is longer than {MAX_AUDIO_SECONDS:.0f} s")
    return resample(waveform, given_rate or sample_rate, sample_rate)
