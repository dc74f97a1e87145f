"""Pretrained speech encoders from Hugging Face transformers: wav2vec2, HuBERT, WavLM and Whisper's
encoder.

``hf_audio`` wraps one such model. Its front end (the feature extractor: wav2vec2's per-utterance
normalisation of the waveform, Whisper's log-mel spectrogram) runs inside the model in torch, on
the model's device, like the built-in speech encoders' log-mels; its settings come from the
pretrained folder's ``preprocessor_config.json`` and, with the architecture (``hf_config``), are
written into the checkpoint's ``config.json``. A checkpoint therefore rebuilds the encoder with no
access to the hub or to the original folder: :func:`mmseq.model.load` sets ``pretrained: false``
and the architecture comes from ``hf_config``, the weights from ``model.safetensors``.

``trainable``: ``"all"``, ``"none"`` (the backbone frozen, in eval mode, run without a graph) or
``"last:N"`` (the last N transformer layers; the convolutional front end, positional convolution
and earlier layers frozen and in eval mode). ``last:12`` on a 12-layer wav2vec2 is the usual
fine-tuning recipe (feature encoder frozen).

``downsample``: an optional adapter, a strided ``Conv1d`` (kernel = stride = ``downsample``) then
``LayerNorm``, that cuts the frame rate the decoder attends to (wav2vec2's 50 Hz to 25 Hz with 2).
``dim`` projects the memory to another width (through the adapter, or a ``Linear``).

Padding: for models whose feature encoder normalises over time with GroupNorm
(``feat_extract_norm: group``, e.g. wav2vec2-base, HuBERT-base) the padding of a batch changes the
first convolution's statistics, as it does in transformers itself; models with LayerNorm there
(``feat_extract_norm: layer``: the large ones, WavLM) and Whisper (always padded to its fixed
window) give the same real frames whatever the padding.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torchaudio
from torch import nn

from ..errors import ConfigError, InputError
from .base import Encoder, lengths_to_mask, register_encoder
from .image import trainable_group_count

WAVEFORM_FAMILY = ("wav2vec2", "hubert", "wavlm")  # the ones tested; others of the family may need their own groups
WHISPER_FEATURES = ("feature_size", "sampling_rate", "hop_length", "n_fft", "dither", "padding_value")
WAVEFORM_FEATURES = ("feature_size", "sampling_rate", "do_normalize", "padding_value", "return_attention_mask")


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ConfigError("encoder hf_audio needs transformers: pip install 'mmseq[hf]'") from None
    return transformers


def _jsonable(settings: dict) -> dict:
    """Settings as plain JSON values (transformers' dicts carry dtypes, numpy arrays ...)."""
    import json

    out = {}
    for key, value in settings.items():
        try:
            json.dumps(value)
        except TypeError:
            continue
        out[key] = value
    return out


class HFAudioEncoder(Encoder):
    """A transformers speech model as an mmseq encoder.

    Args:
        model: hub name (``facebook/wav2vec2-base``) or local folder of a saved model; where the
            pretrained weights, architecture and feature-extractor settings come from.
        pretrained: load the weights of ``model``; False builds the architecture with random
            weights from ``hf_config`` (what loading a checkpoint does).
        hf_config: the transformers config as a dict (``model_type`` + settings); filled from
            ``model`` when not given, and stored in the checkpoint.
        config_overrides: settings applied over the pretrained config (``layerdrop``,
            ``mask_time_prob``, dropouts ...), e.g. to tune fine-tuning regularisation.
        feature_extractor: the preprocessor settings (``sampling_rate``, ``do_normalize`` for the
            wav2vec2 family; ``feature_size``, ``n_fft``, ``hop_length`` for Whisper); filled from
            ``model``'s ``preprocessor_config.json`` (or the defaults) when not given.
        trainable: ``"all"``, ``"none"`` or ``"last:N"`` (see the module docstring).
        dim: width of the memory (default: the model's hidden size).
        downsample: stride of the adapter convolution (1: no adapter).

    ``forward(waveforms (batch, samples), lengths (batch,))`` returns memory
    ``(batch, frames, dim)`` and its mask ``(batch, frames)``.
    """

    modality = "speech"

    def __init__(self, model: str | None = None, pretrained: bool = True, hf_config: dict | None = None,
                 config_overrides: dict | None = None, feature_extractor: dict | None = None,
                 trainable: str = "all", dim: int | None = None, downsample: int = 1):
        super().__init__()
        transformers = _transformers()
        if hf_config is None and model is None:
            raise ConfigError("encoder hf_audio needs 'model' (a hub name or a folder) or 'hf_config'")
        if pretrained and model is None:
            raise ConfigError("encoder hf_audio: pretrained: true needs 'model' (a hub name or a folder)")
        if model is not None and not pretrained and hf_config is None and not Path(model).is_dir():
            raise ConfigError(f"encoder hf_audio: {model}: no such folder, and no hf_config to build from")
        if hf_config is not None:
            settings = dict(hf_config)
            model_type = settings.pop("model_type", None)
            if model_type is None:
                raise ConfigError("encoder hf_audio: hf_config needs a 'model_type' (wav2vec2, hubert, wavlm, whisper ...)")
            config = transformers.AutoConfig.for_model(model_type, **settings)
        else:
            config = transformers.AutoConfig.from_pretrained(model)
        for key, value in (config_overrides or {}).items():
            if not hasattr(config, key):
                raise ConfigError(f"encoder hf_audio: config_overrides: {config.model_type} has no setting {key!r}")
            setattr(config, key, value)
        self.is_whisper = config.model_type == "whisper"
        if not self.is_whisper and config.model_type not in WAVEFORM_FAMILY:
            raise ConfigError(f"encoder hf_audio: model_type {config.model_type!r} is not supported; "
                              f"known: whisper, {', '.join(WAVEFORM_FAMILY)}")
        self.model_name, self.pretrained, self.config_overrides = model, pretrained, config_overrides
        self.trainable, self.downsample = trainable, downsample
        self.backbone = self._build_backbone(transformers, config, model if pretrained else None)
        self.hf_config = _jsonable({"model_type": config.model_type, **config.to_diff_dict()})
        self.hf_config.pop("transformers_version", None)
        self.feature_settings = self._feature_settings(transformers, config, model, feature_extractor)
        self.sample_rate = int(self.feature_settings["sampling_rate"])

        hidden = config.d_model if self.is_whisper else config.hidden_size
        self.output_dim = dim or hidden
        if downsample < 1:
            raise ConfigError(f"encoder hf_audio: downsample must be >= 1, got {downsample}")
        if downsample > 1:
            self.adapter = nn.Sequential(nn.Conv1d(hidden, self.output_dim, downsample, downsample))
            self.adapter_norm = nn.LayerNorm(self.output_dim)
        self.projection = nn.Linear(hidden, self.output_dim) if downsample == 1 and self.output_dim != hidden else None
        if self.is_whisper:
            self.frame_rate = self.sample_rate / self.feature_settings["hop_length"] / 2 / downsample
            extractor = transformers.WhisperFeatureExtractor(**self.feature_settings)
            self.register_buffer("mel_filters", torch.tensor(extractor.mel_filters, dtype=torch.float32).T,
                                 persistent=False)  # (mels, n_fft // 2 + 1), rebuilt from the settings
            # torchaudio's module (torch.stft underneath, as the feature extractor): the ONNX
            # export knows how to swap it for a real-valued one.
            self.spectrogram = torchaudio.transforms.Spectrogram(
                self.feature_settings["n_fft"], hop_length=self.feature_settings["hop_length"], power=2.0)
        else:
            stride = 1
            for s in config.conv_stride:
                stride *= s
            self.frame_rate = self.sample_rate / stride / downsample
        self._freeze()

    # -- building ---------------------------------------------------------------------------
    @staticmethod
    def _build_backbone(transformers, config, weights_from: str | None) -> nn.Module:
        if config.model_type == "whisper":
            if weights_from is not None:  # a full Whisper checkpoint: keep its encoder only
                whole = transformers.WhisperModel.from_pretrained(weights_from, config=config)
                return whole.get_encoder().float()
            from transformers.models.whisper.modeling_whisper import WhisperEncoder

            return WhisperEncoder(config)
        if weights_from is not None:
            return transformers.AutoModel.from_pretrained(weights_from, config=config).float()
        return transformers.AutoModel.from_config(config)

    def _feature_settings(self, transformers, config, model: str | None, given: dict | None) -> dict:
        """The front end's settings: those given (a checkpoint's), else the model's
        ``preprocessor_config.json``, else the defaults of its feature extractor."""
        keys = WHISPER_FEATURES if self.is_whisper else WAVEFORM_FEATURES
        if given is None:
            cls = transformers.WhisperFeatureExtractor if self.is_whisper else transformers.Wav2Vec2FeatureExtractor
            extractor = None
            if model is not None and (not Path(model).is_dir() or (Path(model) / "preprocessor_config.json").is_file()):
                extractor = cls.from_pretrained(model)
            if extractor is None:
                extractor = cls(feature_size=config.num_mel_bins) if self.is_whisper else cls()
            given = extractor.to_dict()
        settings = {k: given[k] for k in keys if k in given}
        if self.is_whisper and settings.get("feature_size") != config.num_mel_bins:
            raise ConfigError(f"encoder hf_audio: feature_extractor.feature_size {settings.get('feature_size')} "
                              f"!= the model's num_mel_bins {config.num_mel_bins}")
        if "sampling_rate" not in settings:
            raise ConfigError("encoder hf_audio: feature_extractor needs 'sampling_rate'")
        return settings

    def parameter_groups(self) -> list[list[str]]:
        """Backbone parameter names from the front end (group 0) to the last layer; a final
        LayerNorm after the layers belongs to the last layer's group."""
        names = [n for n, p in self.backbone.named_parameters()]
        final = ("layer_norm.",) if self.is_whisper else (
            ("encoder.layer_norm.",) if getattr(self.backbone.config, "do_stable_layer_norm", False) else ())
        layer_count = self.backbone.config.encoder_layers if self.is_whisper else self.backbone.config.num_hidden_layers
        groups: list[list[str]] = [[] for _ in range(layer_count + 1)]
        for name in names:
            match = re.match(r"(?:encoder\.)?layers\.(\d+)\.", name)
            if match:
                groups[int(match.group(1)) + 1].append(name)
            elif name.startswith(final):
                groups[-1].append(name)
            else:
                groups[0].append(name)
        return groups

    def _freeze(self) -> None:
        groups = self.parameter_groups()
        trained = groups[len(groups) - trainable_group_count(self.trainable, len(groups)):]
        trained_names = {name for group in trained for name in group}
        for name, parameter in self.backbone.named_parameters():
            # Parameters transformers keeps frozen (Whisper's sinusoidal positions) stay frozen.
            parameter.requires_grad_(parameter.requires_grad and name in trained_names)
        self.backbone_trains = any(p.requires_grad for p in self.backbone.parameters())
        self.frozen_modules = [module for name, module in self.backbone.named_modules()
                               if name and not any(p.requires_grad for p in module.parameters())
                               and any(True for _ in module.parameters())]
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and hasattr(self, "backbone_trains"):
            # Frozen parts run as at inference (no dropout): their output is then a fixed feature.
            if not self.backbone_trains:
                self.backbone.eval()
            for module in self.frozen_modules:
                module.eval()
        return self

    def checkpoint_settings(self) -> dict:
        """All that rebuilds this encoder without the pretrained folder or the hub."""
        return {"model": self.model_name, "pretrained": self.pretrained, "hf_config": self.hf_config,
                "config_overrides": self.config_overrides, "feature_extractor": self.feature_settings,
                "trainable": self.trainable, "dim": self.output_dim, "downsample": self.downsample}

    # -- forward ----------------------------------------------------------------------------
    def _whisper_features(self, waveforms: torch.Tensor) -> torch.Tensor:
        """``(batch, samples)`` zero-padded to Whisper's window -> log-mels ``(batch, mels, frames)``,
        as ``WhisperFeatureExtractor`` computes them (per-utterance max - 8 floor, then scaled)."""
        settings = self.feature_settings
        hop = settings["hop_length"]
        frames = self.backbone.config.max_source_positions * 2
        if waveforms.shape[1] > frames * hop:
            raise InputError(f"Whisper's encoder takes at most {frames * hop / self.sample_rate:.1f} s of audio; "
                             f"got {waveforms.shape[1] / self.sample_rate:.1f} s (cut long audio into windows)")
        waveforms = nn.functional.pad(waveforms.float(), (0, frames * hop - waveforms.shape[1]))
        power = self.spectrogram(waveforms)[..., :-1]  # (batch, freqs, frames)
        log_spec = (self.mel_filters @ power).clamp(min=1e-10).log10()
        floor = log_spec.amax(dim=(1, 2), keepdim=True) - 8.0
        return (torch.maximum(log_spec, floor) + 4.0) / 4.0

    def _normalise(self, waveforms: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Zero mean, unit variance over each waveform's real samples (Wav2Vec2FeatureExtractor's)."""
        count = mask.sum(1, keepdim=True).clamp(min=1)
        mean = (waveforms * mask).sum(1, keepdim=True) / count
        var = (((waveforms - mean) * mask) ** 2).sum(1, keepdim=True) / count
        return ((waveforms - mean) / (var + 1e-7).sqrt()) * mask

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if lengths is None:
            lengths = torch.full(waveforms.shape[:1], waveforms.shape[1], device=waveforms.device)
        sample_mask = lengths_to_mask(lengths, waveforms.shape[1])
        waveforms = waveforms.float() * sample_mask  # whatever the padding held, the model sees zeros
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.backbone_trains):
            if self.is_whisper:
                with torch.autocast(waveforms.device.type, enabled=False):
                    features = self._whisper_features(waveforms)
                memory = self.backbone(features).last_hidden_state
                frames = (torch.div(lengths, self.feature_settings["hop_length"], rounding_mode="floor") + 1) // 2
            else:
                if self.feature_settings.get("do_normalize", True):
                    waveforms = self._normalise(waveforms, sample_mask)
                minimum = 400  # the conv front end's receptive field: shorter inputs give no frame
                if waveforms.shape[1] < minimum:
                    waveforms = nn.functional.pad(waveforms, (0, minimum - waveforms.shape[1]))
                    sample_mask = lengths_to_mask(lengths.clamp(min=minimum), minimum)
                memory = self.backbone(waveforms, attention_mask=sample_mask.long()).last_hidden_state
                frames = self.backbone._get_feat_extract_output_lengths(sample_mask.sum(1))
        frames = frames.clamp(min=1, max=memory.shape[1]).long()
        if not torch.jit.is_tracing():  # (an export keeps the whole window: the mask covers it)
            memory = memory[:, : int(frames.max())]  # Whisper's fixed window: keep only what any row uses
        mask = lengths_to_mask(frames, memory.shape[1])
        if self.downsample > 1:
            step = self.downsample
            x = memory.masked_fill(~mask[..., None], 0.0)
            x = nn.functional.pad(x, (0, 0, 0, (-x.shape[1]) % step))
            memory = self.adapter_norm(self.adapter(x.transpose(1, 2)).transpose(1, 2))
            frames = torch.div(frames + step - 1, step, rounding_mode="floor")
            mask = lengths_to_mask(frames, memory.shape[1])
        elif self.projection is not None:
            memory = self.projection(memory)
        return memory * mask[..., None], mask


@register_encoder("hf_audio")
def hf_audio(**settings) -> HFAudioEncoder:
    """A pretrained transformers speech model (wav2vec2, HuBERT, WavLM, Whisper's encoder)."""
    return HFAudioEncoder(**settings)
