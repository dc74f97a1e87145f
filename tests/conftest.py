"""Shared fixtures: tiny tokenizers, a tiny speech model, and a tiny synthetic audio corpus.

Everything here is small enough that a test using it runs in well under a second on one CPU core.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

# Tiny models run fastest on one thread, and the suite runs as two processes on two cores.
torch.set_num_threads(1)

SAMPLE_RATE = 16000
WORDS = ["red", "blue", "green", "cat", "dog", "runs", "sits", "the", "a", "big", "small", "bird", "sings", "now"]

# Tiny speech encoder and decoder: a few thousand parameters, same code paths as the real ones.
TINY_ENCODER = dict(name="conformer", n_mels=16, dim=32, layers=1, heads=2, ffn_dim=64, conv_kernel=3,
                    subsampling=4, subsampling_channels=8, dropout=0.0, specaugment=None)
TINY_DECODER = dict(dim=32, layers=2, heads=2, ffn_dim=64, dropout=0.0, max_length=64)


def sentences(count: int, seed: int = 0) -> list[str]:
    """``count`` short random sentences over :data:`WORDS`."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6))) for _ in range(count)]


def tone(seconds: float, frequency: float = 440.0, seed: int = 0, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A sine plus a little noise, float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    return (0.5 * np.sin(2 * np.pi * frequency * t) + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)


def write_speech_corpus(folder: Path, count: int = 16, seed: int = 0, name: str = "train.jsonl") -> Path:
    """``count`` wav files (0.3 to 0.8 s, a tone whose pitch follows the text) under ``folder/wav``
    and a manifest with relative paths; returns the manifest path."""
    import soundfile

    folder = Path(folder)
    (folder / "wav").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    lines = []
    for i, text in enumerate(sentences(count, seed)):
        seconds = rng.uniform(0.3, 0.8)
        soundfile.write(folder / "wav" / f"u{i}.wav", tone(seconds, 200 + 40 * len(text), seed + i), SAMPLE_RATE)
        lines.append(json.dumps({"id": f"u{i}", "audio": f"wav/u{i}.wav", "text": text}))
    manifest = folder / name
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


@pytest.fixture
def texts() -> list[str]:
    return sentences(200)


@pytest.fixture
def char_tokenizer(texts):
    from mmseq.tokenizer import CharTokenizer

    return CharTokenizer.train(texts, prompt_tokens=["<|asr|>", "<|caption|>", "<|text|>", "<|short|>"])


def make_model(tokenizer, ctc_weight: float = 0.3, seed: int = 0, encoder: dict | None = None,
               decoder: dict | None = None):
    """A tiny random ASR model in eval mode."""
    from mmseq.model import ModelConfig, Seq2Seq

    torch.manual_seed(seed)
    config = ModelConfig(encoder=dict(encoder or TINY_ENCODER), decoder=dict(decoder or TINY_DECODER),
                         ctc_weight=ctc_weight, label_smoothing=0.0)
    return Seq2Seq(config, tokenizer, "asr").eval()


@pytest.fixture
def tiny_model(char_tokenizer):
    return make_model(char_tokenizer)


def waveform_batch(seconds: list[float], seed: int = 0) -> dict:
    """A padded batch of random tones: ``inputs (batch, samples)`` and ``lengths``."""
    waves = [torch.from_numpy(tone(s, 300 + 50 * i, seed + i)) for i, s in enumerate(seconds)]
    lengths = torch.tensor([len(w) for w in waves])
    inputs = torch.zeros(len(waves), int(lengths.max()))
    for row, wave in enumerate(waves):
        inputs[row, : len(wave)] = wave
    return {"inputs": inputs, "lengths": lengths}


@pytest.fixture
def speech_corpus(tmp_path) -> Path:
    return write_speech_corpus(tmp_path / "corpus")


def write_train_config(folder: Path, train: Path, valid: Path | None = None, **trainer) -> Path:
    """A YAML config that trains the tiny model on ``train`` in seconds; returns its path."""
    import yaml

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "task": "asr",
        "output_dir": str(folder / "out"),
        "data": {"train": str(train), "valid": str(valid or train), "batch_size": 2.0, "num_workers": 0},
        "tokenizer": {"type": "char"},
        "model": {"encoder": {**TINY_ENCODER, "dropout": 0.1,
                              "specaugment": {"freq_masks": 1, "freq_width": 4, "time_masks": 1, "time_width": 0.1}},
                  "decoder": {**TINY_DECODER, "dropout": 0.1}, "ctc_weight": 0.3},
        # A schedule that depends on the step only, so a run extended by an epoch matches one
        # planned that long from the start.
        "trainer": {"max_epochs": 2, "lr": 0.003, "warmup_steps": 3, "schedule": "noam", "log_every": 1,
                    "device": "cpu", **trainer},
        "decoding": {"beam_size": 1, "max_length_ratio": 1.0},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A tiny ASR model trained for two epochs: ``(config_path, output_dir, train_manifest)``."""
    from mmseq.config import load_config
    from mmseq.training.trainer import train

    root = tmp_path_factory.mktemp("trained")
    manifest = write_speech_corpus(root / "corpus")
    config = write_train_config(root / "run", manifest)
    train(load_config(config))
    return config, root / "run" / "out", manifest
