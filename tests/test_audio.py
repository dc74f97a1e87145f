"""Audio reading: formats, channels and rates to one mono float waveform; clear errors naming the file."""

import numpy as np
import pytest
import soundfile
import torch

from conftest import tone
from mmseq.data.audio import as_waveform, load_audio
from mmseq.errors import InputError


def test_wav_16_bit_pcm(tmp_path):
    samples = tone(0.5)
    path = tmp_path / "a.wav"
    soundfile.write(path, samples, 16000, subtype="PCM_16")
    waveform = load_audio(path, 16000)
    assert waveform.dtype == torch.float32 and waveform.shape == (8000,)
    np.testing.assert_allclose(waveform.numpy(), samples, atol=1 / 2 ** 15 + 1e-6)  # 16-bit quantisation


@pytest.mark.parametrize("extension, subtype", [("wav", "FLOAT"), ("flac", "PCM_24"), ("wav", "PCM_U8")])
def test_other_sample_formats(tmp_path, extension, subtype):
    samples = tone(0.25)
    path = tmp_path / f"a.{extension}"
    soundfile.write(path, samples, 16000, subtype=subtype)
    waveform = load_audio(path)
    tolerance = 1e-6 if subtype == "FLOAT" else 1 / 2 ** 7
    np.testing.assert_allclose(waveform.numpy(), samples, atol=tolerance)


def test_stereo_is_averaged_to_mono(tmp_path):
    left, right = tone(0.2, 300), tone(0.2, 500, seed=1)
    path = tmp_path / "stereo.wav"
    soundfile.write(path, np.stack([left, right], 1), 16000, subtype="FLOAT")
    waveform = load_audio(path, 16000)
    assert waveform.shape == (3200,)
    np.testing.assert_allclose(waveform.numpy(), (left + right) / 2, atol=1e-6)


def test_other_sample_rates_are_resampled(tmp_path):
    path = tmp_path / "8k.wav"
    seconds, frequency = 0.5, 440.0
    soundfile.write(path, tone(seconds, frequency, sample_rate=8000), 8000, subtype="FLOAT")
    waveform = load_audio(path, 16000)
    assert waveform.shape == (16000 * seconds,)
    # Same pitch after resampling: the spectrum peaks at 440 Hz.
    spectrum = np.abs(np.fft.rfft(waveform.numpy()))
    peak = np.fft.rfftfreq(len(waveform), 1 / 16000)[spectrum.argmax()]
    assert abs(peak - frequency) < 5
    assert load_audio(path).shape == (8000 * seconds,)  # no rate asked: the file's own


@pytest.mark.parametrize("case", ["missing", "folder", "empty", "corrupt", "no samples", "nan", "text"])
def test_unreadable_audio_names_the_file(tmp_path, case):
    path = tmp_path / f"{case.replace(' ', '_')}.wav"
    if case == "folder":
        path.mkdir()
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "corrupt":
        path.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(200)))
    elif case == "no samples":
        soundfile.write(path, np.zeros(0, dtype=np.float32), 16000)
    elif case == "nan":
        soundfile.write(path, np.array([0.1, np.nan, 0.2], dtype=np.float32), 16000, subtype="FLOAT")
    elif case == "text":
        path.write_text("this is not audio\n" * 20)
    with pytest.raises(InputError) as caught:
        load_audio(path, 16000)
    message = str(caught.value)
    assert str(path) in message
    assert "\n" not in message.strip()  # one line


def test_as_waveform_takes_arrays_and_tensors():
    samples = tone(0.1)
    np.testing.assert_allclose(as_waveform(samples, 16000).numpy(), samples)
    stereo = torch.from_numpy(np.stack([samples, -samples]))
    assert torch.allclose(as_waveform(stereo, 16000), torch.zeros(1600), atol=1e-7)  # (channels, samples)
    assert as_waveform(torch.from_numpy(samples), 16000, given_rate=8000).shape == (3200,)
    for bad in (np.zeros(0), np.zeros((2, 3, 4)), np.array([0.0, np.inf])):
        with pytest.raises(InputError):
            as_waveform(bad, 16000)


def test_as_waveform_reads_paths(tmp_path):
    path = tmp_path / "a.wav"
    soundfile.write(path, tone(0.1), 16000)
    assert as_waveform(path, 16000).shape == (1600,)
    assert as_waveform(str(path), 16000).shape == (1600,)
