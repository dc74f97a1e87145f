"""The bad-input matrix: every kind of odd or broken audio file, image and manifest line a user may
have, each given either a correct result or a one-line error naming the file (and line).

"Correct" for an unusual but valid file means: the audio loaded equals the expected mono 16 kHz
signal within the format's precision (the image: an RGB image of the same size), and
``transcribe`` / ``caption`` return a string. Bad files raise :class:`InputError` naming the path;
bad manifest lines raise :class:`ManifestError` naming ``path:line``. Streamed decoding and
evaluation report a bad input and keep every other result; training skips and counts it, and
stops with a clear error once ``data.max_bad_examples`` is passed.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from conftest import TINY_DECODER, TINY_ENCODER, make_model, sentences, write_speech_corpus
from mmseq.data.audio import load_audio
from mmseq.data.images import load_image
from mmseq.errors import InputError, ManifestError
from mmseq.inference.run import iter_results
from mmseq.model import ModelConfig, Seq2Seq
from mmseq.tasks import ExampleDataset
from mmseq.tokenizer import CharTokenizer

RATE = 16000
FAST = dict(beam_size=1, ctc_weight=0.0)  # greedy: the text is not the point here


def sine(seconds: float, rate: int, frequency: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def one_line_naming(error: Exception, *names) -> bool:
    message = str(error)
    return "\n" not in message and all(str(name) in message for name in names)


@pytest.fixture(scope="module")
def tokenizer():
    return CharTokenizer.train(sentences(100), prompt_tokens=["<|asr|>", "<|caption|>", "<|text|>"])


@pytest.fixture(scope="module")
def speech_model(tokenizer):
    return make_model(tokenizer)


@pytest.fixture(scope="module")
def caption_model(tokenizer):
    torch.manual_seed(0)
    encoder = dict(name="timm", model_name="test_convnext", dim=32, image_size=64)
    config = ModelConfig(encoder=encoder, decoder=dict(TINY_DECODER), ctc_weight=0.0, label_smoothing=0.0)
    return Seq2Seq(config, tokenizer, "caption").eval()


# ---------------------------------------------------------------------------------------------
# Audio
# ---------------------------------------------------------------------------------------------

def _wav(subtype, fmt=None):
    def write(path):
        soundfile.write(path, sine(0.5, RATE), RATE, subtype=subtype, format=fmt)
        return sine(0.5, RATE)
    return write


def _rate(rate):
    def write(path):
        soundfile.write(path, sine(0.5, rate), rate, subtype="FLOAT")
        return sine(0.5, RATE)
    return write


def _channels(count):
    def write(path):
        channels = np.stack([sine(0.5, RATE, 220.0 * (c + 1)) for c in range(count)], axis=1)
        soundfile.write(path, channels, RATE, subtype="FLOAT")
        return channels.mean(1)
    return write


def _wav_truncated_in_data(path):
    soundfile.write(path, sine(0.5, RATE), RATE, subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[: 44 + 2 * 3000])  # header says 8000 samples, 3000 are there
    return sine(0.5, RATE)[:3000]


def _silent(path):
    soundfile.write(path, np.zeros(RATE // 2, np.float32), RATE)
    return np.zeros(RATE // 2, np.float32)


def _short(samples):
    def write(path):
        soundfile.write(path, sine(0.5, RATE)[:samples], RATE, subtype="FLOAT")
        return sine(0.5, RATE)[:samples]
    return write


# name -> (file suffix, writer returning the expected 16 kHz mono waveform, tolerance; None: lossy)
GOOD_AUDIO = {
    "wav-8bit-unsigned": (".wav", _wav("PCM_U8"), 1 / 120),
    "wav-16bit": (".wav", _wav("PCM_16"), 1e-4),
    "wav-24bit": (".wav", _wav("PCM_24"), 1e-6),
    "wav-32bit": (".wav", _wav("PCM_32"), 1e-6),
    "wav-float32": (".wav", _wav("FLOAT"), 0.0),
    "wav-float64": (".wav", _wav("DOUBLE"), 1e-7),
    "wavex-16bit": (".wav", _wav("PCM_16", "WAVEX"), 1e-4),
    "flac-16bit": (".flac", _wav("PCM_16"), 1e-4),
    "flac-24bit": (".flac", _wav("PCM_24"), 1e-6),
    "aiff-16bit": (".aiff", _wav("PCM_16"), 1e-4),
    "ogg-vorbis": (".ogg", _wav("VORBIS"), None),
    "ogg-opus": (".opus", _wav("OPUS", "OGG"), None),
    "mp3": (".mp3", _wav("MPEG_LAYER_III", "MP3"), None),
    "stereo": (".wav", _channels(2), 1e-6),
    "six-channels": (".wav", _channels(6), 1e-6),
    "rate-8000": (".wav", _rate(8000), 0.02),
    "rate-22050": (".wav", _rate(22050), 0.02),
    "rate-44100": (".wav", _rate(44100), 0.02),
    "rate-48000": (".wav", _rate(48000), 0.02),
    "wav-truncated-in-data": (".wav", _wav_truncated_in_data, 1e-4),
    "silent": (".wav", _silent, 0.0),
    "one-sample": (".wav", _short(1), 0.0),
    "ten-ms": (".wav", _short(160), 0.0),
}


def _close(loaded: np.ndarray, expected: np.ndarray, tolerance) -> bool:
    if tolerance is None:  # lossy codecs: the same signal, not the same samples
        if abs(len(loaded) - len(expected)) > 0.02 * len(expected):
            return False
        n = min(len(loaded), len(expected))
        a, b = loaded[:n], expected[:n]
        return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-9)) > 0.9
    if len(loaded) != len(expected):
        return False
    edge = 64 if tolerance >= 0.02 else 0  # a resampling filter rings at the ends
    middle = slice(edge, len(expected) - edge)
    return np.allclose(loaded[middle], expected[middle], atol=tolerance + 1e-7)


@pytest.mark.parametrize("name", list(GOOD_AUDIO))
def test_unusual_but_valid_audio_loads_as_the_expected_signal(name, tmp_path):
    suffix, write, tolerance = GOOD_AUDIO[name]
    path = tmp_path / f"{name}{suffix}"
    expected = write(path)
    loaded = load_audio(path, RATE)
    assert loaded.dtype == torch.float32 and loaded.dim() == 1
    assert _close(loaded.numpy(), expected, tolerance), f"{name}: {len(loaded)} samples, expected {len(expected)}"


def test_every_valid_audio_file_is_transcribed(speech_model, tmp_path):
    paths = []
    for name, (suffix, write, _) in GOOD_AUDIO.items():
        paths.append(tmp_path / f"{name}{suffix}")
        write(paths[-1])
    texts = speech_model.transcribe(paths, batch_size=8, **FAST)
    assert len(texts) == len(paths) and all(isinstance(t, str) for t in texts)


def _nan(path):
    soundfile.write(path, np.full(RATE // 2, np.nan, np.float32), RATE, subtype="FLOAT")


def _infinite(path):
    samples = sine(0.5, RATE)
    samples[100] = np.inf
    soundfile.write(path, samples, RATE, subtype="FLOAT")


def _truncated(suffix, keep):
    def write(path):
        soundfile.write(path.with_suffix(".full" + suffix), sine(0.5, RATE), RATE,
                        format={".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG"}[suffix])
        data = path.with_suffix(".full" + suffix).read_bytes()
        path.write_bytes(data[:keep(len(data))])
    return write


BAD_AUDIO = {
    "wav-truncated-in-header": (".wav", _truncated(".wav", lambda n: 30)),
    "flac-truncated": (".flac", _truncated(".flac", lambda n: n // 2)),
    "ogg-truncated": (".ogg", _truncated(".ogg", lambda n: n // 2)),
    "zero-bytes": (".wav", lambda p: p.write_bytes(b"")),
    "no-samples": (".wav", lambda p: soundfile.write(p, np.zeros(0, np.float32), RATE)),
    "all-nan": (".wav", _nan),
    "infinite-sample": (".wav", _infinite),
    "text-not-audio": (".wav", lambda p: p.write_text("hello, I am not a sound\n")),
    "random-bytes": (".flac", lambda p: p.write_bytes(np.random.default_rng(0).bytes(4000))),
    "does-not-exist": (".wav", lambda p: None),
    "directory": ("", lambda p: p.mkdir()),
}


@pytest.mark.parametrize("name", list(BAD_AUDIO))
def test_bad_audio_is_a_one_line_error_naming_the_file(name, speech_model, tmp_path):
    suffix, write = BAD_AUDIO[name]
    path = tmp_path / f"{name}{suffix}"
    write(path)
    with pytest.raises(InputError) as caught:
        load_audio(path, RATE)
    assert one_line_naming(caught.value, path), str(caught.value)
    with pytest.raises(InputError) as caught:
        speech_model.transcribe([path], **FAST)
    assert one_line_naming(caught.value, path)


def test_isolated_reading_turns_a_crash_of_the_audio_library_into_an_input_error(tmp_path, monkeypatch):
    """``load_audio(isolate=True)`` decodes in a forked child: the same waveform and errors, and a
    crash inside libsndfile (simulated: the child's reader kills itself with SIGSEGV) becomes an
    InputError naming the file instead of ending this process."""
    import faulthandler
    import os
    import signal

    from mmseq.data import audio

    path = tmp_path / "a.wav"
    soundfile.write(path, sine(0.5, 8000), 8000, subtype="FLOAT")
    assert torch.equal(load_audio(path, RATE, isolate=True), load_audio(path, RATE))
    (tmp_path / "text.wav").write_text("not audio")
    with pytest.raises(InputError, match="text.wav: cannot read audio .*Format not recognised"):
        load_audio(tmp_path / "text.wav", RATE, isolate=True)
    # (faulthandler off in the child, so that its deliberate crash prints no traceback into the log)
    monkeypatch.setattr(audio, "_read", lambda path, *limits: (faulthandler.disable(), os.kill(os.getpid(), signal.SIGSEGV)))
    with pytest.raises(InputError) as caught:
        load_audio(path, RATE, isolate=True)
    assert one_line_naming(caught.value, path) and "crashed: signal 11" in str(caught.value)


def test_bad_audio_among_good_loses_no_result(speech_model, tmp_path):
    """Streamed decoding: each bad file is reported at its index, every good one gets its text."""
    sources, bad = [], {}
    for name, (suffix, write) in BAD_AUDIO.items():
        good = tmp_path / f"good-{name}.wav"
        soundfile.write(good, sine(0.3, RATE, 300.0), RATE)
        path = tmp_path / f"{name}{suffix}"
        write(path)
        sources += [good, path]
        bad[len(sources) - 1] = path
    results = {r.index: r.text if r.error is None else r.error
               for r in iter_results(speech_model, sources, batch_size=4, chunk_size=5, **FAST)}
    assert sorted(results) == list(range(len(sources)))
    for index, result in results.items():
        if index in bad:
            assert isinstance(result, InputError) and one_line_naming(result, bad[index])
        else:
            assert isinstance(result, str)


def _good_and_bad_audio(tmp_path) -> tuple[list[Path], dict[int, Path]]:
    """Eight good WAVs of 1000, 2000, ... samples with three bad files among them (the middle
    and the end); returns the sources and ``{index: bad path}``."""
    sources = []
    for i in range(8):
        sources.append(tmp_path / f"good{i}.wav")
        soundfile.write(sources[-1], sine(1000 * (i + 1) / RATE, RATE, 300.0), RATE)
    (tmp_path / "broken.wav").write_text("broken")
    _nan(tmp_path / "nan.wav")
    bad = {3: tmp_path / "broken.wav", 6: tmp_path / "gone.wav", 10: tmp_path / "nan.wav"}
    for index, path in bad.items():
        sources.insert(index, path)
    return sources, bad


def _texts_name_lengths(model, monkeypatch):
    """Make each decoded text the input's length in samples, so the order of results shows."""
    monkeypatch.setattr(model, "decode_texts", lambda batch, **options: [str(int(n)) for n in batch["lengths"]])


def test_transcribe_reports_bad_files_and_keeps_every_other_text_in_order(speech_model, tmp_path, monkeypatch):
    """The Python API: ``errors="report"`` returns every good file's text in its place and the
    bad file's InputError in its; the default raises, naming each bad file, with every text kept."""
    from mmseq.inference.run import UnreadableInputsError

    sources, bad = _good_and_bad_audio(tmp_path)
    _texts_name_lengths(speech_model, monkeypatch)
    expected = [str(1000 * (i + 1)) for i in range(8)]
    results = speech_model.transcribe(sources, batch_size=3, errors="report")
    assert len(results) == len(sources)
    assert [r for i, r in enumerate(results) if i not in bad] == expected
    for index, path in bad.items():
        assert isinstance(results[index], InputError) and one_line_naming(results[index], path)

    with pytest.raises(InputError) as caught:
        speech_model.transcribe(sources, batch_size=3)
    error = caught.value
    assert isinstance(error, UnreadableInputsError) and one_line_naming(error, *bad.values())
    assert "3 of 11 inputs cannot be read" in str(error)
    assert [str(r) for r in error.results] == [str(r) for r in results] and sorted(error.errors) == sorted(bad)
    assert speech_model.transcribe(sources[:3], batch_size=3) == expected[:3]  # all good: plain texts
    with pytest.raises(ValueError, match="errors='ignore'"):
        speech_model.transcribe(sources, errors="ignore")


def test_transcribe_of_good_files_is_unchanged_by_bad_ones_among_them(speech_model, tmp_path):
    """The real model: the good files' texts are those of the good files decoded alone."""
    sources, bad = _good_and_bad_audio(tmp_path)
    good = [path for i, path in enumerate(sources) if i not in bad]
    results = speech_model.transcribe(sources, batch_size=4, errors="report", **FAST)
    assert [r for i, r in enumerate(results) if i not in bad] == speech_model.transcribe(good, batch_size=4, **FAST)
    assert all(isinstance(results[i], InputError) for i in bad)


def test_silent_audio_is_transcribed_but_skipped_in_training(speech_model, tmp_path):
    path = tmp_path / "silent.wav"
    _silent(path)
    assert isinstance(speech_model.transcribe([path], **FAST)[0], str)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"audio": "silent.wav", "text": "red cat"}) + "\n")
    examples, _ = speech_model.task.read(manifest, training=True)
    item = ExampleDataset(speech_model.task, examples, training=True)[0]
    assert item["error"].startswith(f"{manifest}:1: ") and "silent" in item["error"]


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------

def _picture(width=40, height=30) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8))


def _save(convert, suffix=".png", **options):
    def write(path):
        image = convert(_picture())
        image.save(path, **options)
        return image.size
    return write


def _sixteen_bit(path):
    values = (np.arange(30 * 40).reshape(30, 40) * 50).astype(np.uint16)
    Image.fromarray(values).save(path)
    return (40, 30)


def _float_tiff(path):
    Image.fromarray(np.linspace(0, 1, 30 * 40, dtype=np.float32).reshape(30, 40), "F").save(path)
    return (40, 30)


def _animation(path):
    frames = [Image.new("RGB", (40, 30), colour) for colour in ("red", "green", "blue")]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    return (40, 30)


def _palette_transparent(path):
    image = _picture().convert("P")
    image.info["transparency"] = 0
    image.save(path, transparency=0)
    return image.size


def _sized(width, height):
    def write(path):
        Image.new("RGB", (width, height), "blue").save(path)
        return (width, height)
    return write


# name -> (suffix, writer returning the image size)
GOOD_IMAGES = {
    "rgb-jpeg": (".jpg", _save(lambda i: i)),
    "rgb-png": (".png", _save(lambda i: i)),
    "grayscale": (".png", _save(lambda i: i.convert("L"))),
    "grayscale-alpha": (".png", _save(lambda i: i.convert("LA"))),
    "rgba": (".png", _save(lambda i: i.convert("RGBA"))),
    "palette": (".png", _save(lambda i: i.convert("P"))),
    "palette-transparent": (".png", _palette_transparent),
    "cmyk-jpeg": (".jpg", _save(lambda i: i.convert("CMYK"))),
    "one-bit": (".png", _save(lambda i: i.convert("1"))),
    "sixteen-bit": (".png", _sixteen_bit),
    "float-tiff": (".tif", _float_tiff),
    "webp": (".webp", _save(lambda i: i)),
    "bmp": (".bmp", _save(lambda i: i)),
    "animated-gif": (".gif", _animation),
    "one-pixel": (".png", _sized(1, 1)),
    "very-wide": (".png", _sized(2000, 1)),
    "wrong-extension": (".jpg", _save(lambda i: i, format="PNG")),
}


@pytest.mark.parametrize("name", list(GOOD_IMAGES))
def test_unusual_but_valid_images_load_as_rgb(name, tmp_path):
    suffix, write = GOOD_IMAGES[name]
    path = tmp_path / f"{name}{suffix}"
    size = write(path)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == size


def test_image_modes_keep_their_pixels(tmp_path):
    gray = _picture().convert("L")
    gray.save(tmp_path / "gray.png")
    assert np.array_equal(np.asarray(load_image(tmp_path / "gray.png"))[..., 1], np.asarray(gray))
    _sixteen_bit(tmp_path / "16.png")
    expected = np.round((np.arange(30 * 40).reshape(30, 40) * 50 % 65536) / 257.0)
    assert np.abs(np.asarray(load_image(tmp_path / "16.png"))[..., 0] - expected).max() <= 1


def test_every_valid_image_is_captioned(caption_model, tmp_path):
    paths = []
    for name, (suffix, write) in GOOD_IMAGES.items():
        paths.append(tmp_path / f"{name}{suffix}")
        write(paths[-1])
    texts = caption_model.caption(paths, batch_size=8, **FAST)
    assert len(texts) == len(paths) and all(isinstance(t, str) for t in texts)


def _png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares a huge canvas: a decompression bomb's shape."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) \
        + chunk(b"IEND", b"")


def _cut(suffix, fraction):
    def write(path):
        full = path.with_suffix(".full" + suffix)
        _picture(200, 150).save(full)
        data = full.read_bytes()
        path.write_bytes(data[: int(len(data) * fraction)])
    return write


BAD_IMAGES = {
    "jpeg-truncated": (".jpg", _cut(".jpg", 0.5)),
    "png-truncated": (".png", _cut(".png", 0.5)),
    "png-header-only": (".png", _cut(".png", 0.05)),
    "zero-bytes": (".jpg", lambda p: p.write_bytes(b"")),
    "decompression-bomb": (".png", lambda p: p.write_bytes(_png_declaring(100_000, 100_000))),
    "text-not-image": (".jpg", lambda p: p.write_text("not an image")),
    "random-bytes": (".png", lambda p: p.write_bytes(np.random.default_rng(1).bytes(3000))),
    "audio-not-image": (".jpg", lambda p: soundfile.write(p, sine(0.1, RATE), RATE, format="WAV")),
    "does-not-exist": (".jpg", lambda p: None),
    "directory": ("", lambda p: p.mkdir()),
}


@pytest.mark.parametrize("name", list(BAD_IMAGES))
def test_bad_image_is_a_one_line_error_naming_the_file(name, caption_model, tmp_path):
    suffix, write = BAD_IMAGES[name]
    path = tmp_path / f"{name}{suffix}"
    write(path)
    with pytest.raises(InputError) as caught:
        load_image(path)
    assert one_line_naming(caught.value, path), str(caught.value)
    with pytest.raises(InputError) as caught:
        caption_model.caption([path], **FAST)
    assert one_line_naming(caught.value, path)


def test_bad_images_among_good_lose_no_result(caption_model, tmp_path):
    sources, bad = [], {}
    for name, (suffix, write) in BAD_IMAGES.items():
        good = tmp_path / f"good-{name}.png"
        _picture().save(good)
        path = tmp_path / f"{name}{suffix}"
        write(path)
        sources += [good, path]
        bad[len(sources) - 1] = path
    results = {r.index: r.text if r.error is None else r.error
               for r in iter_results(caption_model, sources, batch_size=4, chunk_size=5, **FAST)}
    assert sorted(results) == list(range(len(sources)))
    for index, result in results.items():
        assert isinstance(result, InputError if index in bad else str)
        if index in bad:
            assert one_line_naming(result, bad[index])


def test_caption_reports_a_bad_image_among_good_ones(caption_model, tmp_path):
    """``caption([...])``: a truncated image in the middle of good ones is named; the good
    images' captions are those they get alone, in input order."""
    from mmseq.inference.run import UnreadableInputsError

    good = []
    for i in range(4):
        good.append(tmp_path / f"good{i}.png")
        _picture(20 + 10 * i, 30).save(good[-1])
    broken = tmp_path / "cut.jpg"
    _cut(".jpg", 0.5)(broken)
    sources = good[:2] + [broken] + good[2:]
    alone = caption_model.caption(good, batch_size=2, **FAST)
    results = caption_model.caption(sources, batch_size=2, errors="report", **FAST)
    assert results[:2] + results[3:] == alone
    assert isinstance(results[2], InputError) and one_line_naming(results[2], broken)
    with pytest.raises(UnreadableInputsError) as caught:
        caption_model.caption(sources, batch_size=2, **FAST)
    assert one_line_naming(caught.value, broken) and caught.value.results[:2] + caught.value.results[3:] == alone


# ---------------------------------------------------------------------------------------------
# Manifest lines
# ---------------------------------------------------------------------------------------------

DEEP = "[" * 100_000
# name -> (line, words the error must hold); every one is refused with path:line.
BAD_SPEECH_LINES = {
    "not-json": ("audio=a.wav text=hello", "not valid JSON"),
    "truncated-json": ('{"audio": "wav/u0.wav", "text": "red', "not valid JSON"),
    "json-array": ('["wav/u0.wav", "red"]', "JSON object"),
    "json-string": ('"wav/u0.wav"', "JSON object"),
    "nested-too-deep": (DEEP, "JSON"),
    "integer-too-long": ('{"audio": "wav/u0.wav", "text": "red", "duration": 1' + "0" * 5000 + "}", "JSON"),
    "missing-text": ('{"audio": "wav/u0.wav"}', "missing field 'text'"),
    "missing-audio": ('{"text": "red cat"}', "missing field 'audio'"),
    "text-is-number": ('{"audio": "wav/u0.wav", "text": 5}', "wrong type"),
    "text-is-list": ('{"audio": "wav/u0.wav", "text": ["red"]}', "wrong type"),
    "text-is-null": ('{"audio": "wav/u0.wav", "text": null}', "wrong type"),
    "audio-is-number": ('{"audio": 3, "text": "red"}', "path"),
    "audio-is-empty": ('{"audio": "", "text": "red"}', "path"),
    "id-is-float": ('{"id": 7.5, "audio": "wav/u0.wav", "text": "red"}', "wrong type"),
    "duration-is-text": ('{"audio": "wav/u0.wav", "text": "red", "duration": "1.5"}', "wrong type"),
    "duration-is-bool": ('{"audio": "wav/u0.wav", "text": "red", "duration": true}', "wrong type"),
    "duration-negative": ('{"audio": "wav/u0.wav", "text": "red", "duration": -1}', "duration"),
    "duration-nan": ('{"audio": "wav/u0.wav", "text": "red", "duration": NaN}', "duration"),
    "duration-infinite": ('{"audio": "wav/u0.wav", "text": "red", "duration": 1e999}', "duration"),
    "empty-text": ('{"audio": "wav/u0.wav", "text": ""}', "empty text"),
    "blank-text": ('{"audio": "wav/u0.wav", "text": " \\t "}', "empty text"),
    "lone-surrogate": ('{"audio": "wav/u0.wav", "text": "red \\ud800 cat"}', "surrogate"),
    "audio-unreadable": ('{"audio": "wav/broken.wav", "text": "red"}', "cannot read audio"),
    "audio-missing-no-duration": ('{"audio": "wav/none.wav", "text": "red"}', "cannot read audio"),
}
BAD_CAPTION_LINES = {
    "missing-captions": ('{"image": "i.png"}', "missing field 'captions'"),
    "captions-empty": ('{"image": "i.png", "captions": []}', "captions"),
    "captions-is-string": ('{"image": "i.png", "captions": "a dog"}', "wrong type"),
    "caption-not-string": ('{"image": "i.png", "captions": ["a dog", 3]}', "captions"),
    "caption-blank": ('{"image": "i.png", "captions": ["a dog", "  "]}', "captions"),
    "caption-lone-surrogate": ('{"image": "i.png", "captions": ["a \\udfff dog"]}', "surrogate"),
    "image-is-list": ('{"image": ["i.png"], "captions": ["a dog"]}', "path"),
}


def _speech_folder(tmp_path) -> Path:
    manifest = write_speech_corpus(tmp_path, 4)
    (tmp_path / "wav" / "broken.wav").write_text("broken")
    return manifest


@pytest.mark.parametrize("name", list(BAD_SPEECH_LINES))
def test_bad_speech_manifest_line_names_file_and_line(name, speech_model, tmp_path):
    manifest = _speech_folder(tmp_path)
    line, words = BAD_SPEECH_LINES[name]
    with open(manifest, "a") as file:  # the fifth line, after four good ones
        file.write(line + "\n" + json.dumps({"audio": "wav/u1.wav", "text": "red"}) + "\n")
    with pytest.raises(ManifestError) as caught:
        speech_model.task.read(manifest, training=True)
    assert caught.value.line == 5 and str(caught.value).startswith(f"{manifest}:5: ")
    assert words in str(caught.value) and "\n" not in str(caught.value)
    examples, errors = speech_model.task.read(manifest, training=True, skip_errors=True)
    assert len(examples) == 5 and [e.line for e in errors] == [5]


@pytest.mark.parametrize("name", list(BAD_CAPTION_LINES))
def test_bad_caption_manifest_line_names_file_and_line(name, caption_model, tmp_path):
    _picture().save(tmp_path / "i.png")
    good = json.dumps({"image": "i.png", "captions": ["a red dog", "a dog"]})
    line, words = BAD_CAPTION_LINES[name]
    manifest = tmp_path / "captions.jsonl"
    manifest.write_text(f"{good}\n\n{line}\n{good}\n")  # the blank line still counts
    with pytest.raises(ManifestError) as caught:
        caption_model.task.read(manifest, training=False)
    assert str(caught.value).startswith(f"{manifest}:3: ") and words in str(caught.value)
    examples, errors = caption_model.task.read(manifest, training=False, skip_errors=True)
    assert len(examples) == 2 and [e.line for e in errors] == [3]


def test_byte_order_mark_and_crlf_are_read(speech_model, tmp_path):
    manifest = _speech_folder(tmp_path)
    lines = manifest.read_text().splitlines()
    manifest.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")
    examples, errors = speech_model.task.read(manifest, training=True, skip_errors=True)
    assert len(examples) == 4 and not errors and examples[0]["text"] == json.loads(lines[0])["text"]


def test_integer_ids_are_read_as_strings(speech_model, tmp_path):
    manifest = _speech_folder(tmp_path)
    manifest.write_text(json.dumps({"id": 391895, "audio": "wav/u0.wav", "text": "red"}) + "\n")
    examples, _ = speech_model.task.read(manifest, training=False)
    assert examples[0]["id"] == "391895"


def test_characters_the_tokenizer_lacks_become_unknown(speech_model, tmp_path):
    manifest = _speech_folder(tmp_path)
    manifest.write_text(json.dumps({"audio": "wav/u0.wav", "text": "red Ω cat \U0001F600"}) + "\n")
    examples, _ = speech_model.task.read(manifest, training=True)
    item = ExampleDataset(speech_model.task, examples, training=True)[0]
    tokenizer = speech_model.tokenizer
    (tokens,) = item["tokens"]
    assert tokens.count(tokenizer.unk_id) == 2
    assert tokenizer.decode(tokens[2:]) == "red  cat "  # unknowns are dropped, not garbled


def test_text_longer_than_the_decoder_is_skipped_in_training_and_scored_in_evaluation(speech_model, tmp_path):
    manifest = _speech_folder(tmp_path)
    long_text = "red " * 40  # 160 characters; the tiny decoder holds 64 tokens
    manifest.write_text(json.dumps({"audio": "wav/u0.wav", "text": long_text}) + "\n")
    examples, _ = speech_model.task.read(manifest, training=True)
    item = ExampleDataset(speech_model.task, examples, training=True)[0]
    assert item["error"].startswith(f"{manifest}:1: ") and "longer than the decoder's limit 64" in item["error"]
    examples, _ = speech_model.task.read(manifest, training=False)
    item = ExampleDataset(speech_model.task, examples, training=False)[0]
    assert "error" not in item and item["references"] == [long_text] and len(item["tokens"][0]) == 64
    out = speech_model(speech_model.task.collate([item]))  # the validation loss still runs
    assert torch.isfinite(out["loss"])


def test_evaluation_reports_every_bad_line_and_file_and_keeps_the_rest(speech_model, tmp_path, capsys):
    from mmseq.inference.evaluate import evaluate

    manifest = _speech_folder(tmp_path)
    good = manifest.read_text().splitlines()
    bad_lines = [line for line, _ in BAD_SPEECH_LINES.values()]
    bad_files = [json.dumps({"audio": f"wav/{name}", "text": "red", "duration": 0.5})
                 for name in ("broken.wav", "gone.wav")]
    manifest.write_text("\n".join(good + bad_lines + bad_files + good) + "\n")
    metrics = evaluate(speech_model, manifest, tmp_path / "eval", batch_size=4, num_workers=0, **FAST)
    assert metrics["examples"] == 2 * len(good)
    assert metrics["skipped"] == len(bad_lines) + len(bad_files)
    reported = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mmseq: skipped: ")]
    expected_lines = range(len(good) + 1, len(good) + len(bad_lines) + len(bad_files) + 1)
    assert sorted(int(re.match(rf"mmseq: skipped: {re.escape(str(manifest))}:(\d+): ", line).group(1))
                  for line in reported) == list(expected_lines)
    rows = [json.loads(line) for line in (tmp_path / "eval" / "hypotheses.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * len(good)


# ---------------------------------------------------------------------------------------------
# Training: bad examples are skipped and counted, up to a limit
# ---------------------------------------------------------------------------------------------

def _training_corpus(tmp_path) -> tuple[Path, int]:
    """16 good utterances and the bad ones of the matrix: bad lines, then readable lines whose
    audio is broken, missing, NaN, silent, or whose text is too long. Returns the manifest and
    how many bad examples it holds."""
    manifest = write_speech_corpus(tmp_path, 16)
    wav = tmp_path / "wav"
    (wav / "broken.wav").write_text("broken")
    _nan(wav / "nan.wav")
    _silent(wav / "silent.wav")
    _truncated(".wav", lambda n: 30)(wav / "header.wav")
    bad = [line for line, _ in BAD_SPEECH_LINES.values()]
    bad += [json.dumps({"audio": f"wav/{name}", "text": "red cat", "duration": 0.5})
            for name in ("broken.wav", "gone.wav", "nan.wav", "silent.wav", "header.wav")]
    bad.append(json.dumps({"audio": "wav/u0.wav", "text": "red " * 40}))
    manifest.write_text(manifest.read_text() + "\n".join(bad) + "\n")
    return manifest, len(bad)


def _train(manifest, out, *overrides):
    from mmseq.config import load_config
    from mmseq.training.trainer import train

    settings = [f"data.train={manifest}", f"output_dir={out}", "trainer.max_epochs=2", "data.batch_size=3",
                "data.num_workers=0", "trainer.warmup_steps=1", "trainer.log_every=1", "trainer.device=cpu",
                "model.encoder=" + json.dumps(TINY_ENCODER), "model.decoder=" + json.dumps(TINY_DECODER),
                "decoding.beam_size=1", "decoding.ctc_weight=0.0", *overrides]
    return train(load_config(None, settings))


def test_training_skips_and_counts_bad_examples(tmp_path, capfd):
    manifest, bad = _training_corpus(tmp_path)
    best = _train(manifest, tmp_path / "out", "data.max_bad_examples=1000")
    assert (tmp_path / "out" / "last").exists()
    err = capfd.readouterr().err
    skipped = {int(n) for n in re.findall(rf"skipped: {re.escape(str(manifest))}:(\d+): ", err)}
    assert skipped == set(range(17, 17 + bad))  # every bad line, named by its line number
    assert best is None or best.exists()


def test_training_summarises_skipped_examples_at_the_end_of_each_epoch(tmp_path, capfd):
    manifest, bad = _training_corpus(tmp_path)
    _train(manifest, tmp_path / "out", "data.max_bad_examples=1000", "trainer.max_epochs=2")
    err = capfd.readouterr().err
    unreadable = bad - len(BAD_SPEECH_LINES)  # lines that parse, but whose example cannot be used
    for epoch in (1, 2):  # every epoch meets the unreadable ones again; the run's total grows
        assert (f"epoch {epoch}: skipped {unreadable} unreadable examples ({len(BAD_SPEECH_LINES) + epoch * unreadable} "
                f"in all, {len(BAD_SPEECH_LINES)} of them bad manifest lines; limit data.max_bad_examples=1000)"
                in err), err[-2000:]


def test_validation_names_and_counts_its_unreadable_examples(tmp_path, capfd):
    """Validation leaves out an unreadable example with a ``skipped: FILE:LINE: reason`` line and
    counts it, with the manifest's bad lines, as ``skipped=N`` in its summary."""
    train_manifest = write_speech_corpus(tmp_path / "train", 12)
    valid = write_speech_corpus(tmp_path / "valid", 6, seed=1, name="valid.jsonl")
    wav = tmp_path / "valid" / "wav"
    (wav / "broken.wav").write_text("broken")
    _nan(wav / "nan.wav")
    lines = [json.dumps({"audio": f"wav/{name}", "text": "red cat"}) for name in ("broken.wav", "nan.wav")]
    valid.write_text(valid.read_text() + "\n".join(lines) + "\n{not json\n")  # lines 7, 8, 9
    capfd.readouterr()
    _train(train_manifest, tmp_path / "out", f"data.valid={valid}", "trainer.max_epochs=1",
           "trainer.val_metric=loss")
    err = capfd.readouterr().err
    # broken.wav is found when durations are read; nan.wav only when validation loads it
    assert re.search(rf"skipped: {re.escape(str(valid))}:7: cannot read audio \S*broken.wav", err), err[-2000:]
    assert re.search(rf"skipped: {re.escape(str(valid))}:8: \S*nan.wav: audio holds NaN", err)
    assert f"skipped: {valid}:9: not valid JSON" in err
    assert re.search(r"epoch 1 valid: loss=\S+ accuracy=\S+ skipped=3\n", err), err[-2000:]


def test_training_stops_with_a_clear_error_past_the_limit(tmp_path):
    from mmseq.errors import TrainingError

    manifest, bad = _training_corpus(tmp_path)
    with pytest.raises(TrainingError, match=r"more than data.max_bad_examples=5"):
        _train(manifest, tmp_path / "out", "data.max_bad_examples=5")


def test_training_on_a_manifest_with_no_usable_line_is_a_clear_error(tmp_path):
    from mmseq.errors import MmseqError

    manifest = tmp_path / "bad.jsonl"
    manifest.write_text("\n".join(line for line, _ in BAD_SPEECH_LINES.values()) + "\n")
    with pytest.raises(MmseqError, match="no usable examples"):
        _train(manifest, tmp_path / "out")
