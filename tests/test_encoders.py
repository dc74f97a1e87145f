"""Every registered encoder, as timm tests every model: forward, backward, no NaN, every trainable
parameter gets a gradient, and (for variable-length inputs) padding does not change the real
outputs. Plus the registry itself."""

import warnings

import pytest
import torch

import mmseq.model  # noqa: F401  (imports every built-in part, so the list below is complete)
from conftest import waveform_batch
from mmseq.encoders import ENCODERS, Encoder, create_encoder, lengths_to_mask, list_encoders, register_encoder
from mmseq.errors import ConfigError

SPEECH = dict(n_mels=16, dim=32, layers=2, heads=2, ffn_dim=64, subsampling=4, subsampling_channels=8,
              dropout=0.1, specaugment=dict(freq_masks=1, freq_width=4, time_masks=1, time_width=0.1))

# Small settings per registered name; a name missing here is skipped with a reason, so a new
# encoder shows up in the test report until someone adds its settings.
SMALL = {
    "conformer": dict(SPEECH, conv_kernel=3),
    "transformer": dict(SPEECH),
    "timm": dict(model_name="test_vit", dim=32, image_size=64),
    "torchvision": dict(model_name="mobilenet_v3_small", dim=32, image_size=64),
    "text": dict(tokenizer={"type": "char", "vocab": "abcdefghijklmnopqrstuvwxyz "}, dim=32, layers=2, heads=2,
                 ffn_dim=64, dropout=0.1),
    "null": dict(dim=8),
    # A tiny random wav2vec2 built from its config alone (no hub, no folder); needs transformers.
    "hf_audio": dict(pretrained=False, downsample=2, hf_config=dict(
        model_type="wav2vec2", hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        conv_dim=[16, 16], conv_stride=[5, 4], conv_kernel=[10, 8], num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2, feat_extract_norm="layer", do_stable_layer_norm=True,
        mask_time_prob=0.0, layerdrop=0.0)),
}
OPTIONAL = {"hf_audio": "transformers"}  # encoders whose package is an optional extra


def example_inputs(encoder: Encoder, seed: int = 0):
    """A padded batch for the encoder's modality: ``(inputs, lengths)``."""
    torch.manual_seed(seed)
    if encoder.modality == "speech":
        batch = waveform_batch([0.5, 0.8, 0.35], seed)
        return batch["inputs"], batch["lengths"]
    if encoder.modality == "image":
        return torch.randn(2, 3, 64, 64), None
    if encoder.modality == "text":
        lengths = torch.tensor([7, 4, 9])
        vocab = encoder.embedding.num_embeddings if hasattr(encoder, "embedding") else 8
        return torch.randint(4, vocab, (3, 9)) * lengths_to_mask(lengths), lengths
    if encoder.modality == "none":  # no input at all (a text-only model)
        return torch.zeros(2, 1), None
    pytest.skip(f"no example inputs for modality {encoder.modality!r}")


def build(name):
    if name not in SMALL:
        pytest.skip(f"encoder {name!r} has no small test settings in tests/test_encoders.py: add them to SMALL")
    if name in OPTIONAL:
        pytest.importorskip(OPTIONAL[name])
    torch.manual_seed(0)
    return create_encoder(name, **SMALL[name])


@pytest.mark.parametrize("name", list_encoders())
def test_forward_backward_every_parameter_gets_a_gradient(name):
    encoder = build(name).train()
    inputs, lengths = example_inputs(encoder)
    memory, mask = encoder(inputs, lengths)
    assert memory.dim() == 3 and memory.shape[0] == inputs.shape[0] and memory.shape[2] == encoder.output_dim
    assert mask.shape == memory.shape[:2] and mask.dtype == torch.bool
    assert mask.any(1).all()  # every input has at least one real frame
    assert torch.isfinite(memory).all()
    if not any(p.requires_grad for p in encoder.parameters()):
        return  # nothing to train (the "null" encoder)
    # Only real frames count, as in the model; a random projection so every unit matters.
    (memory * torch.randn_like(memory) * mask[..., None]).sum().backward()
    missing = [n for n, p in encoder.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"
    for parameter_name, parameter in encoder.named_parameters():
        if parameter.grad is not None:
            assert torch.isfinite(parameter.grad).all(), parameter_name
    assert any(p.grad.abs().sum() > 0 for p in encoder.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", list_encoders())
def test_padding_does_not_change_real_outputs(name):
    encoder = build(name).eval()
    inputs, lengths = example_inputs(encoder)
    if lengths is None:
        pytest.skip(f"{name} takes fixed-size inputs (no lengths)")
    with torch.no_grad():
        memory, mask = encoder(inputs, lengths)
        for row in range(inputs.shape[0]):
            alone, alone_mask = encoder(inputs[row:row + 1, : int(lengths[row])], lengths[row:row + 1])
            frames = alone.shape[1]
            assert int(mask[row].sum()) == int(alone_mask.sum()) == frames
            assert not mask[row, frames:].any()
            torch.testing.assert_close(memory[row, :frames], alone[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", list_encoders())
def test_eval_mode_is_deterministic(name):
    encoder = build(name).eval()
    inputs, lengths = example_inputs(encoder)
    with torch.no_grad():
        first, _ = encoder(inputs, lengths)
        second, _ = encoder(inputs, lengths)
    torch.testing.assert_close(first, second)


@pytest.mark.parametrize("name", ["conformer", "transformer"])
def test_speech_frames_follow_the_subsampling(name):
    encoder = build(name).eval()
    batch = waveform_batch([1.0, 0.5])
    _, mask = encoder(batch["inputs"], batch["lengths"])
    # 10 ms hop, 25 ms window, subsampled by 4 with two 3x3 convolutions of stride 2.
    assert mask.sum(1).tolist() == [23, 11]  # 98 mel frames -> 48 -> 23; 48 -> 23 -> 11
    assert encoder.frame_rate == pytest.approx(25.0)


def test_speech_encoder_takes_short_and_unpadded_input():
    encoder = build("conformer").eval()
    for samples in (200, 400, 1000, 1500):  # shorter than one window, or than the subsampling needs
        memory, mask = encoder(torch.randn(2, samples), None)
        assert memory.shape == (2, 1, 32) and mask.all() and torch.isfinite(memory).all()


def test_registry_lists_creates_and_refuses():
    assert {"conformer", "transformer"} <= set(list_encoders())
    assert list_encoders("conf*") == ["conformer"]
    with pytest.raises(ConfigError, match="registered: .*conformer"):
        create_encoder("no-such-encoder")
    # Settings given as None are dropped, so the defaults apply.
    encoder = create_encoder("conformer", **{**SMALL["conformer"], "n_fft": None})
    assert encoder.features.n_fft == 400


def test_a_new_encoder_is_one_class_and_one_registration(char_tokenizer):
    from mmseq.model import ModelConfig, Seq2Seq

    @register_encoder("test-frames")
    class Frames(Encoder):
        """Inputs that are already frames ``(batch, frames, 8)``."""

        modality = "speech"

        def __init__(self, dim: int = 16):
            super().__init__()
            self.output_dim, self.sample_rate = dim, 16000
            self.project = torch.nn.Linear(8, dim)

        def forward(self, inputs, lengths):
            return self.project(inputs), lengths_to_mask(lengths, inputs.shape[1])

    try:
        assert "test-frames" in list_encoders() and ENCODERS.origin("test-frames") == __name__
        model = Seq2Seq(ModelConfig(encoder={"name": "test-frames", "dim": 16},
                                    decoder=dict(dim=16, layers=1, heads=2, ffn_dim=32)), char_tokenizer, "asr")
        tokens = torch.tensor([[1, char_tokenizer.token_id("<|asr|>")] + char_tokenizer.encode("cat") + [2]])
        out = model({"inputs": torch.randn(1, 6, 8), "lengths": torch.tensor([6]), "tokens": tokens,
                     "prefix_lengths": torch.tensor([2])})
        out["loss"].backward()
        assert model.encoder.project.weight.grad is not None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            register_encoder("test-frames")(type("Other", (Encoder,), {}))
        assert any("registered twice" in str(w.message) for w in caught)
    finally:
        ENCODERS._items.pop("test-frames", None)
        ENCODERS._origin.pop("test-frames", None)
