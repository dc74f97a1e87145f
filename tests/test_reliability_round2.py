"""Issue 15, classes 2 to 7: a table-driven test per class, as a hostile user would try them.

Each case asserts the exact kind of outcome: a one-line error of mmseq's own type naming the file
(and key, or manifest line), or a correct result. Counts are in docs/reliability.md ("Round two").
"""

from __future__ import annotations

import io
import json
import os
import random
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml
from PIL import Image

import mmseq
from conftest import TINY_DECODER, TINY_ENCODER, make_model, tone, write_speech_corpus
from mmseq import cli
from mmseq.config import load_config
from mmseq.data.audio import audio_duration, load_audio
from mmseq.data.files import check_output_folder, escape, read_regular_file
from mmseq.data.images import load_image
from mmseq.data.manifest import read_manifest
from mmseq.errors import CheckpointError, ConfigError, InputError, ManifestError, MmseqError

RATE = 16000
ROOT = Path(__file__).resolve().parents[1]


def one_line(error, *names) -> bool:
    """A one-line message naming every one of ``names`` (paths are shown escaped)."""
    text = str(error)
    return "\n" not in text and all(escape(os.fspath(n)) in text for n in names)


def write_wav(path, samples, rate=RATE, header_rate=None) -> Path:
    """A 16-bit WAV; ``header_rate`` rewrites the header's sample rate (and byte rate) afterwards."""
    soundfile.write(path, samples, rate, subtype="PCM_16")
    if header_rate is not None:
        data = bytearray(Path(path).read_bytes())
        data[24:28] = struct.pack("<I", header_rate)
        data[28:32] = struct.pack("<I", header_rate * 2)
        Path(path).write_bytes(bytes(data))
    return Path(path)


@pytest.fixture
def checkpoint(char_tokenizer, tmp_path) -> Path:
    return mmseq.save(make_model(char_tokenizer), tmp_path / "checkpoint")


# -- class 2: bounded cost for any input ------------------------------------------------------
# A 38 KB WAV (19,000 samples) whose header claims an odd rate: soxr resamples it in milliseconds
# (torchaudio built a (rate/gcd) x (16000/gcd) kernel: 4.8 GB for 16001 Hz).
ODD_RATES = [16001, 44101, 96001, 8001, 22051]


@pytest.mark.parametrize("header_rate", ODD_RATES)
def test_odd_header_rates_are_resampled_in_bounded_time(tmp_path, header_rate):
    path = write_wav(tmp_path / "odd.wav", tone(19000 / RATE), header_rate=header_rate)
    start = time.process_time()
    waveform = load_audio(path, RATE)
    assert time.process_time() - start < 2.0
    assert abs(len(waveform) - round(19000 * RATE / header_rate)) <= 2
    assert torch.isfinite(waveform).all() and waveform.abs().max() > 0.1


HEADER_CASES = {  # header rate -> words of the one-line error
    1: "sample rate of 1 Hz", 999: "sample rate of 999 Hz", 10_000_000: "sample rate of 10000000 Hz",
}


@pytest.mark.parametrize("header_rate", list(HEADER_CASES))
def test_absurd_header_rates_are_refused_before_decoding(tmp_path, header_rate):
    path = write_wav(tmp_path / "absurd.wav", tone(1.2), header_rate=header_rate)
    with pytest.raises(InputError) as caught:
        load_audio(path, RATE)
    assert one_line(caught.value, path) and HEADER_CASES[header_rate] in str(caught.value)


def sparse_wav(path: Path, hours: float, rate: int = RATE) -> Path:
    """A WAV whose header and size say ``hours`` of 16-bit mono, written as a sparse file (holes)."""
    size = int(hours * 3600 * rate) * 2
    header = (b"RIFF" + struct.pack("<I", 36 + size) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
              + b"data" + struct.pack("<I", size))
    with open(path, "wb") as file:
        file.write(header)
        file.truncate(len(header) + size)
    return path


def test_a_sparse_twelve_hour_wav_is_refused_from_its_header(tmp_path):
    path = sparse_wav(tmp_path / "long.wav", 12)
    start = time.monotonic()
    with pytest.raises(InputError) as caught:
        load_audio(path, RATE)
    assert one_line(caught.value, path) and "lasts 43200 s" in str(caught.value)
    assert time.monotonic() - start < 2.0
    assert audio_duration(path) == 43200.0  # the header alone, for batching


def test_duration_limit_is_a_setting(tmp_path):
    path = write_wav(tmp_path / "two.wav", tone(2.0))
    assert len(load_audio(path, RATE, max_seconds=3)) == 2 * RATE
    with pytest.raises(InputError, match="longer than the limit of 1 s"):
        load_audio(path, RATE, max_seconds=1)


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose IHDR says ``width`` x ``height`` (valid CRC) and whose data is one tiny IDAT."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0\0"))
                     + chunk(b"IEND", b""))
    return path


SHAPES = {  # (width, height) -> words of the error, or None: a correct image
    (80_000_000, 1): "degenerate shape", (1, 80_000_000): "degenerate shape", (70_000, 10): "degenerate shape",
    (5000, 2): "degenerate shape", (20_000, 20_000): "decompression bomb", (10_000, 9_000): "decompression bomb", (2000, 1): None, (1, 1): None,
}


@pytest.mark.parametrize("shape", list(SHAPES), ids=[f"{w}x{h}" for w, h in SHAPES])
def test_degenerate_image_shapes(tmp_path, shape):
    width, height = shape
    words = SHAPES[shape]
    if words is None:
        path = tmp_path / "ok.png"
        Image.new("L", shape, 128).save(path)
        image = load_image(path)
        assert image.mode == "RGB" and image.size == shape
        return
    path = png_header_only(tmp_path / "odd.png", width, height)
    with pytest.raises(InputError) as caught:
        load_image(path)
    assert one_line(caught.value, path) and words in str(caught.value)
    if words == "degenerate shape":  # arrays go through the same limits
        with pytest.raises(InputError, match=words):
            load_image(np.zeros((height, width), np.uint8))


# Formats PIL both writes and reads; every mutation must give an RGB image or load_image's InputError.
FUZZ_FORMATS = ["BLP", "BMP", "DDS", "GIF", "ICO", "IM", "JPEG", "MSP", "PCX", "PNG", "PPM", "QOI", "SGI",
                "SPIDER", "TGA", "TIFF", "WEBP", "XBM", "JPEG2000"]


@pytest.mark.parametrize("kind", FUZZ_FORMATS)
def test_mutated_images_raise_only_load_images_error(tmp_path, kind):
    Image.init()
    if kind not in Image.SAVE:
        pytest.skip(f"this PIL cannot write {kind}")
    mode = {"XBM": "1", "MSP": "1", "SPIDER": "F", "IM": "L", "BLP": "P"}.get(kind, "RGB")
    buffer = io.BytesIO()
    try:
        Image.new(mode, (17, 13), 90).save(buffer, kind)
    except (OSError, KeyError, ValueError) as error:  # a codec this PIL build lacks
        pytest.skip(f"cannot write {kind}: {error}")
    original = buffer.getvalue()
    rng = random.Random(kind)
    path = tmp_path / f"m.{kind.lower()}"
    outcomes = {"image": 0, "error": 0}
    for trial in range(40):
        data = bytearray(original)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if trial % 5 == 4:
            data = data[: rng.randrange(1, len(data))]
        path.write_bytes(bytes(data))
        try:
            assert load_image(path).mode == "RGB"
            outcomes["image"] += 1
        except InputError as error:
            assert one_line(error, path)
            outcomes["error"] += 1
    assert sum(outcomes.values()) == 40


# -- class 3: no hangs ------------------------------------------------------------------------
def finishes(function, seconds: float = 5.0):
    """``function()``'s result or exception, asserting that it came within ``seconds``."""
    box = {}

    def run():
        try:
            box["value"] = function()
        except BaseException as error:  # noqa: BLE001 - handed to the test
            box["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    start = time.monotonic()
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    box["seconds"] = time.monotonic() - start
    return box


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "pipe.wav"
    os.mkfifo(path)
    yield path
    try:  # a reader still blocked in open() (a failing test) is let go
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


SPECIAL = {  # what a path is -> words in the error
    "fifo": "FIFO", "urandom": "character device", "folder": "is a folder",
}


def special_path(kind, fifo, tmp_path):
    return {"fifo": fifo, "urandom": Path("/dev/urandom"), "folder": tmp_path}[kind]


READERS = {  # name -> (reader of a path, the error type it must raise)
    "load_audio": (lambda p: load_audio(p, RATE), InputError),
    "audio_duration": (audio_duration, InputError),
    "load_image": (load_image, InputError),
    "read_manifest": (read_manifest, ManifestError),
    "load_config": (load_config, ConfigError),
    "read_regular_file": (lambda p: read_regular_file(p, 1000), InputError),
}


@pytest.mark.parametrize("kind", list(SPECIAL))
@pytest.mark.parametrize("reader", list(READERS))
def test_no_reader_waits_on_a_fifo_or_a_device(reader, kind, fifo, tmp_path):
    path = special_path(kind, fifo, tmp_path)
    function, error_type = READERS[reader]
    box = finishes(lambda: function(path))
    assert isinstance(box.get("error"), error_type), box
    assert one_line(box["error"], path) and SPECIAL[kind] in str(box["error"])


CHECKPOINT_FILES = ["config.json", "model.safetensors", "tokenizer.model"]


@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_a_checkpoint_file_that_is_a_fifo_is_refused(checkpoint, name):
    target = checkpoint / name
    if target.exists():
        target.unlink()
    os.mkfifo(target)
    try:
        box = finishes(lambda: mmseq.load(checkpoint))
        assert isinstance(box.get("error"), CheckpointError), box
        assert one_line(box["error"], target) and "FIFO" in str(box["error"])
    finally:
        try:
            os.close(os.open(target, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass


def test_transcribe_and_eval_with_a_fifo_return(checkpoint, fifo, tmp_path, capsys):
    good = write_wav(tmp_path / "good.wav", tone(0.5))
    box = finishes(lambda: cli.main(["transcribe", str(checkpoint), str(fifo), str(good)]))
    assert box.get("value") == 1, box  # one input failed, the other printed
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{good}\t") and "FIFO" in captured.err
    manifest = tmp_path / "test.jsonl"
    manifest.write_text(json.dumps({"audio": str(fifo), "text": "a"}) + "\n" + json.dumps({"audio": str(good), "text": "a"}) + "\n")
    box = finishes(lambda: cli.main(["eval", str(checkpoint), str(manifest), "--out", str(tmp_path / "ev"),
                                     "--device", "cpu"]), 30)
    assert box.get("value") == 0, box
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["examples"] == 1 and metrics["skipped"] == 1


BOMB = "\n".join(["a: &a [" + ",".join(['"lol"'] * 9) + "]"]
                 + [f"{b}: &{b} [" + ",".join([f"*{a}"] * 9) + "]" for a, b in zip("abcdefgh", "bcdefghi")])


def test_the_yaml_alias_bomb_is_refused_in_under_a_second(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    start = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert time.monotonic() - start < 1.0
    assert one_line(caught.value, path) and "aliases" in str(caught.value)


# -- class 4: options and settings checked where they enter ----------------------------------
YAML_CASES = {  # override -> key named in the error
    "trainer.lr=-1": "trainer.lr", "trainer.lr=0": "trainer.lr", "trainer.lr=nan": "trainer.lr",
    "trainer.lr=.inf": "trainer.lr", "trainer.schedule=linear": "trainer.schedule",
    "trainer.max_steps=-1": "trainer.max_steps", "trainer.max_steps=0": "trainer.max_steps",
    "trainer.max_epochs=0": "trainer.max_epochs", "trainer.val_beam_size=0": "trainer.val_beam_size",
    "trainer.warmup_steps=-5": "trainer.warmup_steps", "trainer.accumulate=0": "trainer.accumulate",
    "trainer.min_lr_ratio=2": "trainer.min_lr_ratio", "trainer.grad_clip=0": "trainer.grad_clip",
    "trainer.ema=1.5": "trainer.ema", "trainer.keep_last=0": "trainer.keep_last",
    "trainer.log_every=0": "trainer.log_every", "trainer.device=gpu:x": "trainer.device",
    "data.batch_size=0": "data.batch_size", "data.batch_size=-1": "data.batch_size",
    "data.max_batch_examples=0": "data.max_batch_examples", "data.num_workers=-1": "data.num_workers",
    "tokenizer.type=bpe": "tokenizer.type", "tokenizer.vocab_size=0": "tokenizer.vocab_size",
    "model.decoder.heads=3": "model.decoder.heads", "model.encoder.heads=5": "model.encoder.heads",
    "model.decoder.dim=0": "model.decoder.dim", "model.decoder.dropout=1.5": "model.decoder.dropout",
    "model.encoder.sample_rate=1": "model.encoder.sample_rate", "model.ctc_weight=2": "model.ctc_weight",
    "decoding.beam_size=0": "decoding.beam_size", "decoding.beam_size=1000000": "decoding.beam_size",
    "decoding.ctc_weight=nan": "decoding.ctc_weight", "decoding.nbest=5": "decoding.nbest",
    "decoding.temperature=0": "decoding.temperature",
}


@pytest.mark.parametrize("override", list(YAML_CASES))
def test_training_yaml_values_out_of_range(tmp_path, override):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"model": {"encoder": dict(TINY_ENCODER), "decoder": dict(TINY_DECODER)}}))
    with pytest.raises(ConfigError) as caught:
        load_config(path, [override])
    assert one_line(caught.value, path) and YAML_CASES[override] in str(caught.value)


def edit_config(folder: Path, change) -> Path:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))
    return path


CONFIG_JSON_CASES = {  # change -> (error type, words); every message names config.json
    "heads-not-dividing": (lambda c: c["model"]["decoder"].update(heads=3), ConfigError, "model.decoder.heads=3"),
    "encoder-heads": (lambda c: c["model"]["tasks"]["asr"]["encoder"].update(heads=5), ConfigError,
                      "model.tasks.asr.encoder.heads=5"),
    "beam-a-million": (lambda c: c.update(decoding={"beam_size": 1_000_000}), ConfigError, "decoding.beam_size"),
    "beam-a-string": (lambda c: c.update(decoding={"beam_size": "5"}), ConfigError, "decoding.beam_size"),
    "ctc-weight-a-list": (lambda c: c.update(decoding={"ctc_weight": [1]}), ConfigError, "decoding.ctc_weight"),
    "max-length-float": (lambda c: c.update(decoding={"max_length": 2.5}), ConfigError, "decoding.max_length"),
    "decoding-a-list": (lambda c: c.update(decoding=[1, 2]), ConfigError, "decoding: expected a mapping"),
    "bad-endings-a-number": (lambda c: c.update(decoding={"bad_endings": 3}), ConfigError, "decoding.bad_endings"),
    "lm-over-speech": (lambda c: c["model"]["tasks"]["asr"].update(task="lm"), ConfigError, "task 'lm' reads none input"),
    "caption-over-speech": (lambda c: c["model"]["tasks"]["asr"].update(task="caption"), ConfigError,
                            "task 'caption' reads image input"),
}


@pytest.mark.parametrize("name", list(CONFIG_JSON_CASES))
def test_checkpoint_config_values_out_of_range(checkpoint, name):
    change, error_type, words = CONFIG_JSON_CASES[name]
    path = edit_config(checkpoint, change)
    with pytest.raises(error_type) as caught:
        mmseq.load(checkpoint)
    assert one_line(caught.value, path) and words in str(caught.value)


TENSOR_CASES = {  # how a weight is spoiled -> words
    "int64": (lambda t: t.to(torch.int64), "is int64"), "bool": (lambda t: t > 0, "is bool"),
    "nan": (lambda t: t.clone().fill_(float("nan")), "NaN or infinite"),
    "inf": (lambda t: t.clone().fill_(float("inf")), "NaN or infinite"),
}


@pytest.mark.parametrize("name", list(TENSOR_CASES))
def test_checkpoint_tensors_of_the_wrong_kind(checkpoint, name):
    from safetensors.torch import load_file, save_file

    spoil, words = TENSOR_CASES[name]
    path = checkpoint / "model.safetensors"
    weights = load_file(str(path))
    key = next(k for k, v in weights.items() if v.is_floating_point() and v.dim() == 2)
    weights[key] = spoil(weights[key])
    save_file(weights, str(path))
    with pytest.raises(CheckpointError) as caught:
        mmseq.load(checkpoint)
    assert one_line(caught.value, path, key) and words in str(caught.value)


CLI_CASES = {  # arguments after `transcribe CHECKPOINT a.wav` -> words of the one-line error
    ("--beam-size", "100000"): "--beam-size 100000", ("--beam-size", "0"): "--beam-size 0",
    ("--batch-size", "0"): "--batch-size 0", ("--batch-size", "-1"): "--batch-size -1",
    ("--ctc-weight", "nan"): "--ctc-weight nan", ("--ctc-weight", "inf"): "--ctc-weight inf",
    ("--lm-weight", "-1"): "--lm-weight -1", ("--length-penalty", "nan"): "--length-penalty nan",
    ("--device", "gpu:x"): "device 'gpu:x'", ("--device", "cuda:abc"): "device 'cuda:abc'",
    ("--device", "cuda:99"): "device 'cuda:99'", ("--device", "tpu"): "device 'tpu'",
    ("--window", "0"): "--window 0", ("--window", "nan"): "--window nan",
}


@pytest.mark.parametrize("arguments", list(CLI_CASES), ids=[" ".join(a) for a in CLI_CASES])
def test_command_line_options_out_of_range(checkpoint, tmp_path, capsys, arguments):
    good = write_wav(tmp_path / "a.wav", tone(0.5))
    code = cli.main(["transcribe", str(checkpoint), str(good), *arguments])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mmseq: error: ") and CLI_CASES[arguments] in lines[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_a_machine_without_it(checkpoint, tmp_path, capsys):
    good = write_wav(tmp_path / "a.wav", tone(0.5))
    assert cli.main(["transcribe", str(checkpoint), str(good), "--device", "cuda"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def tiny_training(folder: Path, **extra) -> Path:
    train = write_speech_corpus(folder / "corpus", count=4)
    config = {"task": "asr", "output_dir": str(folder / "exp"),
              "data": {"train": str(train), "batch_size": 100.0, "max_batch_examples": 2, "num_workers": 0},
              "model": {"encoder": dict(TINY_ENCODER), "decoder": dict(TINY_DECODER)},
              "trainer": {"max_steps": 1, "warmup_steps": 1, "log_every": 1}}
    for key, value in extra.items():
        section, name = key.split("__")
        config.setdefault(section, {})[name] = value
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_resuming_with_another_model_size_is_refused(tmp_path, capsys):
    from mmseq.training.trainer import Trainer

    path = tiny_training(tmp_path)
    assert cli.main(["train", str(path)]) == 0
    capsys.readouterr()
    with pytest.raises(ConfigError) as caught:
        Trainer(load_config(path, ["model.decoder.dim=48", "trainer.max_steps=2"])).setup()
    assert one_line(caught.value) and "model.decoder.dim=48" in str(caught.value) and "32" in str(caught.value)
    del caught  # its traceback holds the refused trainer, and so the output folder's lock
    import gc
    gc.collect()
    assert cli.main(["train", str(path), "trainer.max_steps=2"]) == 0  # the same size resumes
    assert "resumed from" in (tmp_path / "exp" / "train.log").read_text() if (tmp_path / "exp" / "train.log").exists() else True


# -- class 5: work thrown away at the last step ---------------------------------------------
def test_eval_out_that_cannot_be_written_fails_before_decoding(checkpoint, tmp_path, capsys, monkeypatch):
    manifest = write_speech_corpus(tmp_path / "corpus", count=2)
    taken = tmp_path / "taken"
    taken.write_text("keep me")
    decoded = []
    monkeypatch.setattr(mmseq.model.Seq2Seq, "decode_texts", lambda self, *a, **k: decoded.append(1) or [])
    for out, words in [(taken, "is not a folder"), (taken / "sub", "is a file")]:
        code = cli.main(["eval", str(checkpoint), str(manifest), "--out", str(out)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and escape(str(out)) in err and words in err
    assert not decoded and taken.read_text() == "keep me"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_output_folder(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(InputError, match="cannot be created"):
        check_output_folder(locked / "eval")


def test_train_output_dir_that_is_a_file(tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("keep me")
    path = tiny_training(tmp_path)
    for out in (taken, taken / "exp"):
        assert cli.main(["train", str(path), f"output_dir={out}"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and escape(str(out)) in err and "output_dir" in err
    assert taken.read_text() == "keep me"


# -- class 6: the Python API's input types -----------------------------------------------------
def test_a_string_is_one_input_and_odd_types_are_each_their_own_error(char_tokenizer, tmp_path):
    model = make_model(char_tokenizer)
    a, b = write_wav(tmp_path / "a.wav", tone(0.4, 300)), write_wav(tmp_path / "b.wav", tone(0.6, 500, seed=1))
    alone = model.transcribe([str(a)])
    assert model.transcribe(str(a)) == alone and len(alone) == 1  # not one input per letter
    assert model.transcribe(a) == alone  # a Path too
    waveform = load_audio(a, RATE)
    assert model.transcribe(waveform) == model.transcribe([waveform])  # a waveform is one input, not samples
    sources = [None, str(a), b"b.wav", {"audio": str(b)}, str(b), 3, [None]]
    results = model.transcribe(sources, errors="report")
    assert results[1] == alone[0] and results[4] == model.transcribe([str(b)])[0]
    for index in (0, 2, 3, 5, 6):
        assert isinstance(results[index], InputError) and str(results[index]).count("\n") == 0, results[index]
    for batch_size in (0, -1, 2.5):  # the API's own options are checked too
        with pytest.raises(ConfigError, match="batch_size"):
            model.transcribe([str(a)], batch_size=batch_size)
    with pytest.raises(ConfigError, match="decoding.beam_size"):
        model.transcribe([str(a)], beam_size=100_000)
    with pytest.raises(InputError) as caught:  # errors="raise": raised after the others, texts kept
        model.transcribe(sources)
    assert caught.value.results[1] == alone[0]


# -- class 7: inputs that deserve better ------------------------------------------------------
def test_a_wav_whose_name_is_not_utf8(char_tokenizer, tmp_path, capsys, checkpoint):
    target = tmp_path / os.fsdecode(b"caf\xe9.wav")  # Latin-1: not UTF-8
    os.rename(write_wav(tmp_path / "plain.wav", tone(0.5)), target)
    assert torch.equal(load_audio(target, RATE), torch.from_numpy(soundfile.read(io.BytesIO(target.read_bytes()),
                                                                                   dtype="float32")[0]))
    other = write_wav(tmp_path / "b.wav", tone(0.5))
    assert cli.main(["transcribe", str(checkpoint), str(target), str(other)]) == 0
    out = capsys.readouterr().out
    assert out.encode("utf-8") and "caf\\xe9.wav\t" in out


def test_a_newline_in_a_file_name_does_not_split_output_lines(checkpoint, tmp_path, capsys):
    odd = write_wav(tmp_path / "two\nlines\t.wav", tone(0.5))
    other = write_wav(tmp_path / "b.wav", tone(0.5))
    assert cli.main(["transcribe", str(checkpoint), str(odd), str(other), "--ordered"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith(escape(str(odd)) + "\t") and "two\\nlines\\t.wav" in lines[0]


def test_invalid_utf8_in_a_manifest_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"audio": "a.wav", "text": "ok"}\n{"audio": "b.wav", "text": "caf\xe9"}\n')
    with pytest.raises(ManifestError) as caught:
        read_manifest(path, ("audio", "text"))
    assert str(caught.value).startswith(f"{path}:2: not valid UTF-8")
    examples, errors = read_manifest(path, ("audio", "text"), skip_errors=True)
    assert [e["text"] for e in examples] == ["ok"] and len(errors) == 1


SAMPLE_CASES = {  # samples -> words of the error, or "" for the text that must come out
    "1e30": (np.full(8000, 1e30, np.float32), "far outside [-1, 1]"),
    "-1e20": (np.concatenate([tone(0.4), [-1e20]]).astype(np.float32), "far outside [-1, 1]"),
    "int16-range": ((tone(0.5) * 32767).astype(np.float32), None),  # a correct (string) result
    "ten-minutes-of-zeros": (np.zeros(600 * RATE, np.float32), ""),
    "dithered-silence": (np.random.default_rng(0).integers(-1, 2, 60 * RATE).astype(np.float32) / 32768, ""),
}


@pytest.mark.parametrize("name", list(SAMPLE_CASES))
def test_sample_values(char_tokenizer, tmp_path, name):
    model = make_model(char_tokenizer)
    samples, want = SAMPLE_CASES[name]
    path = tmp_path / f"{name}.wav"
    soundfile.write(path, samples, RATE, subtype="FLOAT")
    if want:  # an error
        with pytest.raises(InputError) as caught:
            model.transcribe([str(path)])
        assert one_line(caught.value, path) and want in str(caught.value)
        with pytest.raises(InputError, match="far outside"):
            model.transcribe([torch.from_numpy(samples)])
    elif want == "":
        assert model.transcribe([str(path)]) == [""]
    else:
        assert isinstance(model.transcribe([torch.from_numpy(samples)])[0], str)


def test_image_fifo_and_urandom_say_what_they_are(fifo):
    for path, words in ((fifo, "FIFO"), (Path("/dev/urandom"), "character device")):
        box = finishes(lambda: load_image(path))
        assert isinstance(box.get("error"), InputError) and words in str(box["error"]) and "0 bytes" not in str(box["error"])


def test_an_empty_training_manifest_with_sentencepiece(tmp_path):
    from mmseq.errors import TrainingError
    from mmseq.training.trainer import Trainer

    path = tiny_training(tmp_path, tokenizer__type="sentencepiece", tokenizer__vocab_size=20)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(TrainingError) as caught:
        Trainer(load_config(path, [f"data.train={empty}"])).setup()
    assert one_line(caught.value, empty) and "no usable examples" in str(caught.value)


# -- the resource test: odd header rates decoded under a memory cap --------------------------
CAPPED = r"""
import resource, sys, time
import torch, mmseq
from mmseq.data.audio import load_audio
model = mmseq.load(sys.argv[1])
used = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (used + (1 << 30), resource.RLIM_INFINITY))  # 1 GiB above now
for path in sys.argv[2:]:
    start = time.process_time()
    text = model.transcribe([path])[0]
    print(path, round(time.process_time() - start, 2), repr(text))
"""


def test_odd_header_rates_decode_under_a_memory_cap(checkpoint, tmp_path):
    paths = [str(write_wav(tmp_path / f"r{rate}.wav", tone(19000 / RATE), header_rate=rate))
             for rate in (16001, 44101, 96001)]
    one_hz = str(write_wav(tmp_path / "r1.wav", tone(19000 / RATE), header_rate=1))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", CAPPED, str(checkpoint), *paths], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert len(lines) == 3 and all(float(line.split()[1]) < 5 for line in lines)
    done = subprocess.run([sys.executable, "-c", CAPPED, str(checkpoint), one_hz], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode != 0 and "sample rate of 1 Hz" in done.stderr.strip().splitlines()[-1]
