"""The plugin example (examples/plugin_encoder), seen the way an installed package is seen: through
its entry-point metadata. `mmseq encoders` lists it; `mmseq train`, `transcribe` and `eval` use it
unchanged; a checkpoint that needs it says so where it is missing."""

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY_DECODER, waveform_batch, write_speech_corpus

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "examples" / "plugin_encoder"
SMALL = dict(channels=16, dim=32, layers=1, heads=2, ffn_dim=64, dropout=0.0)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """What ``pip install examples/plugin_encoder`` puts on ``sys.path``: the package, and a
    dist-info folder whose entry_points.txt is written from the example's own pyproject.toml."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((PLUGIN / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["mmseq.encoders"] == {"waveform": "mmseq_waveform"}
    folder = tmp_path_factory.mktemp("site")
    info = folder / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    lines = []
    for group, entries in project["entry-points"].items():
        lines += [f"[{group}]"] + [f"{name} = {value}" for name, value in entries.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    shutil.copytree(PLUGIN / "mmseq_waveform", folder / "mmseq_waveform")
    return folder


def mmseq_command(site: Path, *arguments: str) -> subprocess.CompletedProcess:
    """``python -m mmseq ...`` in a fresh process that has the plugin installed."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "mmseq", *arguments], capture_output=True, text=True, env=env,
                          timeout=900)  # generous: the suite may share a busy machine


@pytest.fixture
def waveform_encoder(site, monkeypatch):
    """The plugin's encoder class, imported in this process; unregistered again afterwards."""
    from mmseq.encoders import ENCODERS

    monkeypatch.syspath_prepend(str(site))
    module = importlib.import_module("mmseq_waveform")
    yield module.WaveformEncoder
    ENCODERS._items.pop("waveform", None)
    ENCODERS._origin.pop("waveform", None)
    sys.modules.pop("mmseq_waveform", None)


def test_entry_point_lists_the_encoder(site):
    listed = mmseq_command(site, "encoders")
    assert listed.returncode == 0, listed.stderr
    rows = dict(line.split(None, 1) for line in listed.stdout.splitlines())
    assert rows["waveform"].strip() == "mmseq_waveform"
    assert {"conformer", "text", "timm"} <= set(rows)  # the built-in ones stay


def test_waveform_encoder_gradients_padding_and_frame_rate(waveform_encoder):
    from mmseq.encoders import create_encoder

    torch.manual_seed(0)
    encoder = create_encoder("waveform", **SMALL)
    assert isinstance(encoder, waveform_encoder) and encoder.frame_rate == 50.0
    batch = waveform_batch([0.5, 0.3, 0.02])  # the last is shorter than one 400-sample frame
    memory, mask = encoder.train()(batch["inputs"], batch["lengths"])
    assert memory.shape == (3, 24, 32) and mask.sum(1).tolist() == [24, 14, 1]
    (memory * torch.randn_like(memory) * mask[..., None]).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in encoder.parameters())
    encoder.eval()
    with torch.no_grad():
        memory, mask = encoder(batch["inputs"], batch["lengths"])
        for row in range(3):
            length = int(batch["lengths"][row])
            alone, alone_mask = encoder(batch["inputs"][row:row + 1, :length], batch["lengths"][row:row + 1])
            frames = int(alone_mask.sum())
            torch.testing.assert_close(memory[row, :frames], alone[0, :frames], atol=1e-4, rtol=1e-4)


def test_train_transcribe_and_eval_through_the_commands(site, tmp_path):
    import yaml

    import mmseq
    from mmseq.errors import ConfigError

    manifest = write_speech_corpus(tmp_path / "corpus", count=12)
    config = {"task": "asr", "output_dir": str(tmp_path / "out"),
              "data": {"train": str(manifest), "valid": str(manifest), "batch_size": 3.0, "num_workers": 0},
              "tokenizer": {"type": "char"},
              "model": {"encoder": {"name": "waveform", **SMALL}, "decoder": dict(TINY_DECODER), "ctc_weight": 0.3},
              "trainer": {"max_epochs": 2, "warmup_steps": 2, "lr": 0.003, "device": "cpu", "log_every": 1},
              "decoding": {"beam_size": 2, "ctc_weight": 0.3, "max_length_ratio": 1.0}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))

    trained = mmseq_command(site, "train", str(path))
    assert trained.returncode == 0, trained.stderr[-2000:]
    best = tmp_path / "out" / "best"
    assert json.loads((best / "config.json").read_text())["model"]["tasks"]["asr"]["encoder"]["name"] == "waveform"
    log = (tmp_path / "out" / "log.csv").read_text().splitlines()
    assert sum(",train," in line for line in log) >= 2  # optimizer steps were taken and logged

    wav = str(tmp_path / "corpus" / "wav" / "u0.wav")
    transcribed = mmseq_command(site, "transcribe", str(best), wav)
    assert transcribed.returncode == 0, transcribed.stderr[-2000:]
    assert len(transcribed.stdout.splitlines()) == 1
    scored = mmseq_command(site, "eval", str(best), str(manifest), "--out", str(tmp_path / "eval"))
    assert scored.returncode == 0, scored.stderr[-2000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["examples"] == 12 and metrics["wer"] >= 0

    # Without the plugin installed, the checkpoint says what it needs rather than failing obscurely.
    with pytest.raises(ConfigError, match="unknown encoder 'waveform'"):
        mmseq.load(best)
