"""``mmseq export --format onnx`` and the onnxruntime runner: a tiny ASR model trained a few
epochs inside mmseq, exported, decodes held-out audio to the same hypotheses as PyTorch
(greedy and beam, n-best with scores)."""

from __future__ import annotations

import mmseq
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from conftest import TINY_DECODER, TINY_ENCODER, write_speech_corpus  # noqa: E402
from mmseq.errors import CheckpointError, ConfigError  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(PyTorch model, ONNX runner, held-out batch) for a tiny model trained 8 epochs."""
    from mmseq.config import load_config
    from mmseq.checkpoint import load
    from mmseq.inference.onnx_runner import OnnxModel
    from mmseq.training.trainer import train

    folder = tmp_path_factory.mktemp("onnx")
    manifest = write_speech_corpus(folder / "corpus", count=16)
    settings = [f"data.train={manifest}", f"output_dir={folder / 'exp'}", "trainer.max_epochs=8",
                "data.batch_size=4", "data.num_workers=0", "trainer.warmup_steps=4", "trainer.log_every=1",
                "trainer.device=cpu", "trainer.lr=0.005", "model.encoder=" + json.dumps(TINY_ENCODER),
                "model.decoder=" + json.dumps(TINY_DECODER), "model.ctc_weight=0.3",
                "decoding.max_length_ratio=1.0"]
    train(load_config(None, settings))
    checkpoint = folder / "exp" / "last"
    # Through the command line, as a user runs it.
    result = subprocess.run([sys.executable, "-m", "mmseq", "export", str(checkpoint), "--format", "onnx",
                             "--out", str(folder / "onnx")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    model = load(checkpoint)
    held_out = write_speech_corpus(folder / "test", count=6, seed=5)
    import soundfile

    waveforms = [soundfile.read(str(held_out.parent / json.loads(line)["audio"]), dtype="float32")[0]
                 for line in held_out.read_text().splitlines()]
    lengths = torch.tensor([len(w) for w in waveforms])
    inputs = torch.zeros(len(waveforms), int(lengths.max()))
    for row, w in enumerate(waveforms):
        inputs[row, : len(w)] = torch.as_tensor(w)
    return model, OnnxModel(folder / "onnx", threads=1), {"inputs": inputs, "lengths": lengths}


@pytest.mark.parametrize("options", [dict(beam_size=1), dict(beam_size=3, nbest=3), dict(beam_size=4, length_penalty=0.0),
                                     dict(beam_size=2, early_stopping="exact", min_length=2)])
def test_onnx_hypotheses_equal_pytorch(exported, options):
    model, runner, batch = exported
    theirs = model.generate(batch, ctc_weight=0.0, **options)  # the export decodes with attention alone
    ours = runner.generate(batch["inputs"].numpy(), batch["lengths"].numpy(), **options)
    assert [[h.tokens for h in hyps] for hyps in ours] == [[h.tokens for h in hyps] for hyps in theirs]
    for mine, reference in zip(ours, theirs):
        np.testing.assert_allclose([h.score for h in mine], [h.score for h in reference], rtol=1e-4, atol=1e-4)
    texts = [model.tokenizer.decode(hyps[0].output) for hyps in theirs]
    assert runner.decode_texts(batch["inputs"].numpy(), batch["lengths"].numpy(), **options) == texts
    if options.get("length_penalty", 1.0) > 0:  # without length normalisation the empty output wins
        assert len(set(texts)) > 1  # a trained model: the outputs depend on the input


def test_runner_transcribes_in_input_order(exported):
    model, runner, batch = exported
    waveforms = [batch["inputs"][i, : int(n)].numpy() for i, n in enumerate(batch["lengths"])]
    reference = model.decode_texts(batch, ctc_weight=0.0, beam_size=2)
    assert runner.transcribe(waveforms, batch_size=4, beam_size=2) == reference


def test_real_spectrogram_equals_torchaudio():
    import torchaudio

    from mmseq.exporters.onnx import RealSpectrogram

    waveforms = torch.randn(2, 4000)
    for settings in (dict(n_fft=400, hop_length=160, center=False), dict(n_fft=512, win_length=400, hop_length=160),
                     dict(n_fft=256, hop_length=100, power=1.0)):
        reference = torchaudio.transforms.Spectrogram(**settings)
        torch.testing.assert_close(RealSpectrogram(reference)(waveforms), reference(waveforms), rtol=1e-4, atol=1e-3)


def test_runner_refuses_what_it_cannot_do(exported, tmp_path):
    from mmseq.inference.onnx_runner import OnnxModel

    _, runner, batch = exported
    with pytest.raises(ConfigError, match="does not support 'ctc_weight'"):
        runner.generate(batch["inputs"].numpy(), batch["lengths"].numpy(), ctc_weight=0.3)
    with pytest.raises(CheckpointError, match="not an ONNX export"):
        OnnxModel(tmp_path)


def test_export_of_a_missing_checkpoint_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mmseq", "export", str(tmp_path / "nothing"), "--out",
                             str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 2 and "not a checkpoint folder" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("kind", ["wav2vec2", "whisper"])
def test_hf_audio_models_export(tmp_path, kind, char_tokenizer):
    """A transformers encoder goes through the export too (traced at 1 s, run at other lengths)."""
    pytest.importorskip("transformers")
    from conftest import make_model, waveform_batch
    from mmseq.exporters.onnx import export_onnx
    from mmseq.inference.onnx_runner import OnnxModel
    from test_hf_audio import WAV2VEC2, WHISPER

    encoder = dict(name="hf_audio", hf_config=WAV2VEC2 if kind == "wav2vec2" else WHISPER, pretrained=False,
                   downsample=2)
    model = make_model(char_tokenizer, encoder=encoder, seed=3)
    mmseq.save(model, tmp_path / "checkpoint")
    runner = OnnxModel(export_onnx(tmp_path / "checkpoint", tmp_path / "onnx"))
    batch = waveform_batch([0.5, 0.8, 0.35], 0)
    for beam in (1, 3):
        theirs = model.generate(batch, beam_size=beam, ctc_weight=0.0)
        ours = runner.generate(batch["inputs"].numpy(), batch["lengths"].numpy(), beam_size=beam)
        assert [h[0].tokens for h in ours] == [h[0].tokens for h in theirs]
