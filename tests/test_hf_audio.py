"""The ``hf_audio`` encoder on tiny random transformers models saved into a folder in the test
(no hub access): a wav2vec2 and a Whisper encoder, each trained a few steps inside mmseq frozen
and with ``last:1``, saved and reloaded with the pretrained folder gone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from conftest import TINY_DECODER, tone, write_speech_corpus  # noqa: E402
from mmseq.encoders import create_encoder  # noqa: E402
from mmseq.errors import ConfigError  # noqa: E402

# Tiny architectures, also used by tests/test_encoders.py (built from the config alone).
WAV2VEC2 = dict(model_type="wav2vec2", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64, conv_dim=[16, 16, 16], conv_stride=[5, 4, 4], conv_kernel=[10, 8, 4],
                num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, feat_extract_norm="layer",
                do_stable_layer_norm=True, mask_time_prob=0.0, layerdrop=0.0, hidden_dropout=0.0,
                attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0)
WHISPER = dict(model_type="whisper", d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
               decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64, num_mel_bins=16,
               max_source_positions=50, dropout=0.0)  # 50 frames: a 1 s window


def save_tiny(kind: str, folder: Path) -> Path:
    """A random tiny model and its feature extractor saved as transformers saves them."""
    torch.manual_seed(0)
    settings = dict(WAV2VEC2 if kind == "wav2vec2" else WHISPER)
    settings.pop("model_type")
    if kind == "wav2vec2":
        transformers.Wav2Vec2Model(transformers.Wav2Vec2Config(**settings)).save_pretrained(folder)
        # do_normalize off (as some checkpoints have it): the checkpoint must carry that setting.
        transformers.Wav2Vec2FeatureExtractor(do_normalize=False).save_pretrained(folder)
    else:
        transformers.WhisperModel(transformers.WhisperConfig(**settings)).save_pretrained(folder)
        transformers.WhisperFeatureExtractor(feature_size=16, chunk_length=1).save_pretrained(folder)
    return folder


def backbone_weights(folder: Path, prefix: str) -> dict:
    from safetensors.torch import load_file

    weights = load_file(str(folder / "model.safetensors"))
    return {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}


def train_tiny(tmp_path: Path, pretrained: Path, trainable: str, downsample: int = 2):
    from mmseq.config import load_config
    from mmseq.training.trainer import train

    manifest = write_speech_corpus(tmp_path / "corpus", count=6)
    encoder = {"name": "hf_audio", "model": str(pretrained), "trainable": trainable, "downsample": downsample}
    settings = [f"data.train={manifest}", f"output_dir={tmp_path / 'exp'}", "trainer.max_epochs=1",
                "data.batch_size=3", "data.num_workers=0", "trainer.warmup_steps=1", "trainer.log_every=1",
                "trainer.device=cpu", "trainer.lr=0.003", "model.encoder=" + json.dumps(encoder),
                "model.decoder=" + json.dumps(TINY_DECODER), "model.ctc_weight=0.3",
                "decoding.beam_size=1", "decoding.ctc_weight=0.0"]
    train(load_config(None, settings))
    return tmp_path / "exp" / "last"  # no validation set, so no "best"


@pytest.mark.parametrize("kind,trainable", [("wav2vec2", "none"), ("wav2vec2", "last:1"),
                                            ("whisper", "none"), ("whisper", "last:1")])
def test_trains_saves_and_reloads_without_the_pretrained_folder(tmp_path, kind, trainable):
    from mmseq.checkpoint import load

    pretrained = save_tiny(kind, tmp_path / "pretrained")
    before = backbone_weights(pretrained, "encoder." if kind == "whisper" else "")
    best = train_tiny(tmp_path, pretrained, trainable)
    config = json.loads((best / "config.json").read_text())["model"]["tasks"]["asr"]["encoder"]
    assert config["hf_config"]["model_type"] == kind and config["trainable"] == trainable
    if kind == "wav2vec2":
        assert config["feature_extractor"]["do_normalize"] is False  # from preprocessor_config.json
    else:
        assert config["feature_extractor"]["n_fft"] == 400 and config["feature_extractor"]["feature_size"] == 16

    after = backbone_weights(best, "encoders.asr.backbone.")
    assert set(after) == set(before)
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    last = "encoder.layers.1." if kind == "wav2vec2" else "layers.1."
    if trainable == "none":
        assert not changed
    else:  # only the last layer (and the final LayerNorm after it) moved
        assert changed and all(name.startswith(last) or "layer_norm." in name.split("layers")[0] for name in changed)
        assert any(name.startswith(last) for name in changed)

    model = load(best)
    shutil.rmtree(pretrained)  # a reload needs neither the folder nor the hub
    again = load(best)
    waveforms = torch.from_numpy(np.stack([tone(0.7, 300, 1), tone(0.7, 500, 2)]))
    batch = {"inputs": waveforms, "lengths": torch.tensor([11200, 8000])}
    with torch.no_grad():
        first, first_mask = model.encode(batch["inputs"], batch["lengths"])
        second, second_mask = again.encode(batch["inputs"], batch["lengths"])
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert torch.equal(first_mask, second_mask)
    assert model.decode_texts(batch) == again.decode_texts(batch)


def test_whisper_front_end_matches_the_feature_extractor(tmp_path):
    folder = save_tiny("whisper", tmp_path / "whisper")
    encoder = create_encoder("hf_audio", model=str(folder))
    extractor = transformers.WhisperFeatureExtractor.from_pretrained(folder)
    audio = tone(0.6, 330, 3)
    expected = extractor(audio, sampling_rate=16000, return_tensors="np")["input_features"]
    ours = encoder._whisper_features(torch.from_numpy(audio)[None])
    np.testing.assert_allclose(ours.numpy(), expected, atol=1e-4)


def test_pretrained_weights_are_loaded(tmp_path):
    folder = save_tiny("wav2vec2", tmp_path / "w2v")
    encoder = create_encoder("hf_audio", model=str(folder))
    saved = backbone_weights(folder, "")
    ours = encoder.backbone.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in saved.items())
    random = create_encoder("hf_audio", model=str(folder), pretrained=False)
    assert not torch.equal(random.backbone.state_dict()["encoder.layers.0.feed_forward.output_dense.weight"],
                           saved["encoder.layers.0.feed_forward.output_dense.weight"])


@pytest.mark.parametrize("trainable,trained_layers", [("all", {0, 1}), ("last:1", {1}), ("none", set())])
def test_trainable_selects_the_last_layers(trainable, trained_layers):
    encoder = create_encoder("hf_audio", hf_config=WAV2VEC2, pretrained=False, trainable=trainable).train()
    trains = {name for name, p in encoder.backbone.named_parameters() if p.requires_grad}
    layers = {int(name.split(".")[2]) for name in trains if name.startswith("encoder.layers.")}
    assert layers == trained_layers
    assert any(n.startswith("feature_extractor.") for n in trains) == (trainable == "all")
    assert ("encoder.layer_norm.weight" in trains) == (trainable != "none")  # after the layers (stable norm)
    # Frozen layers run as at inference: no dropout.
    assert encoder.backbone.encoder.layers[0].training == (trainable == "all")


def test_downsample_and_width():
    encoder = create_encoder("hf_audio", hf_config=WAV2VEC2, pretrained=False, downsample=2, dim=24).eval()
    plain = create_encoder("hf_audio", hf_config=WAV2VEC2, pretrained=False).eval()
    waveforms, lengths = torch.randn(2, 16000), torch.tensor([16000, 7000])
    memory, mask = encoder(waveforms, lengths)
    base, base_mask = plain(waveforms, lengths)
    assert memory.shape[2] == 24 and plain.output_dim == 32
    assert mask.sum(1).tolist() == [(n + 1) // 2 for n in base_mask.sum(1).tolist()]
    assert encoder.frame_rate == plain.frame_rate / 2 == 100.0  # 16 kHz / 80 (the conv strides) / 2


def test_bad_settings_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="needs 'model'"):
        create_encoder("hf_audio")
    with pytest.raises(ConfigError, match="model_type 'bert' is not supported"):
        create_encoder("hf_audio", hf_config={"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1,
                                              "num_attention_heads": 2, "intermediate_size": 64}, pretrained=False)
    with pytest.raises(ConfigError, match="no setting 'no_such'"):
        create_encoder("hf_audio", hf_config=WAV2VEC2, pretrained=False, config_overrides={"no_such": 1})
    with pytest.raises(ConfigError, match="trainable"):
        create_encoder("hf_audio", hf_config=WAV2VEC2, pretrained=False, trainable="last:9")
    with pytest.raises(ConfigError, match="no such folder"):
        create_encoder("hf_audio", model=str(tmp_path / "missing"), pretrained=False)


@pytest.mark.parametrize("model_type", ["wav2vec2", "hubert", "wavlm"])
def test_waveform_family_padding_and_groups(model_type):
    """HuBERT and WavLM share wav2vec2's layout: the same freezing groups, and (with LayerNorm in
    the feature encoder) padding that changes no real frame."""
    encoder = create_encoder("hf_audio", hf_config=dict(WAVEFORM_TINY, model_type=model_type), pretrained=False,
                             trainable="last:1").eval()
    trains = {name for name, p in encoder.backbone.named_parameters() if p.requires_grad}
    assert trains and all(n.startswith(("encoder.layers.1.", "encoder.layer_norm.")) for n in trains)
    waveforms, lengths = torch.randn(2, 16000), torch.tensor([16000, 9000])
    with torch.no_grad():
        memory, mask = encoder(waveforms, lengths)
        alone, alone_mask = encoder(waveforms[1:, :9000], lengths[1:])
    assert int(mask[1].sum()) == alone.shape[1] == int(alone_mask.sum())
    torch.testing.assert_close(memory[1, : alone.shape[1]], alone[0], atol=1e-4, rtol=1e-4)


WAVEFORM_TINY = {k: v for k, v in WAV2VEC2.items() if k != "model_type"}
