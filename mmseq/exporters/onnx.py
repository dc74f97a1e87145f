"""``mmseq export CHECKPOINT --format onnx --out DIR``: a checkpoint as two ONNX graphs that
decode outside PyTorch (:mod:`mmseq.inference.onnx_runner` runs them with onnxruntime).

- ``encoder.onnx``: ``inputs`` (waveforms ``(batch, samples)`` float32 for speech, token ids
  ``(batch, length)`` int64 for text, images ``(batch, 3, H, W)``) and ``lengths`` ``(batch,)``
  int64 (not for images) -> ``cross_kv`` ``(layers, 2, batch, heads, frames, head_dim)`` (every
  decoder layer's cross-attention keys and values, what ``TextDecoder.init_cache`` computes once
  per input), ``memory_mask`` ``(batch, frames)`` bool, and ``ctc_log_probs``
  ``(batch, frames, vocab)`` when the model has a CTC head.
- ``decoder_step.onnx``: ``tokens`` ``(rows, new)`` int64, ``self_kv`` ``(layers, 2, rows, heads,
  past, head_dim)`` (the self-attention cache so far; ``past`` may be 0), ``cross_kv`` and
  ``memory_mask`` of the ``inputs`` those rows continue (``rows = inputs * group``: each input's
  ``group`` consecutive rows, its beam, share them) -> ``log_probs`` ``(rows, vocab)`` of the last
  new token and ``self_kv_out`` ``(layers, 2, rows, heads, past + new, head_dim)``.

The step graph is :meth:`mmseq.decoder.TextDecoder.step` with the cache as explicit inputs and
outputs: the cache grows by concatenation instead of writes into a preallocated buffer, which ONNX
graphs cannot do in place. ``onnx_config.json`` beside them holds what the runner needs (special
ids, the task prompt, decoding options, sample rate); the checkpoint's ``config.json`` and
tokenizer files are copied too, so the folder decodes to text on its own.

Complex numbers do not export: torchaudio spectrograms are traced as :class:`RealSpectrogram`, and
a front end that takes ``torch.stft(...).abs()`` (Whisper's log-mel) through :func:`real_stft`.
An encoder of a fixed input window (``window_samples``, Whisper's 30 s) is traced on whole windows;
the runner pads every input to one (``input_samples``). The exported encoder is then run on inputs
of other sizes and compared with PyTorch's (:func:`check_encoder`), so a shape the trace froze
fails the export instead of the decoding.
"""

from __future__ import annotations

import json
import shutil
import warnings
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError

ONNX_CONFIG = "onnx_config.json"
OPSET = 18


class EncoderGraph(nn.Module):
    """The encoder, the decoder's memory projection and every layer's cross-attention keys and values."""

    def __init__(self, model, task: str | None = None):
        super().__init__()
        route = model.route(task)
        self.encoder, self.ctc_head = route.encoder, route.ctc_head
        self.decoder = model.decoder

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor | None = None):
        memory, memory_mask = self.encoder(inputs, lengths)
        projected = self.decoder.memory_proj(memory)
        cross_kv = torch.stack([layer.memory_kv(projected) for layer in self.decoder.layers])
        if self.ctc_head is None:
            return cross_kv, memory_mask
        return cross_kv, memory_mask, self.ctc_head(memory).float().log_softmax(-1)


class DecoderStepGraph(nn.Module):
    """:meth:`TextDecoder.step` with the self-attention cache passed in and returned."""

    def __init__(self, decoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, tokens, self_kv, cross_kv, memory_mask):
        decoder, config = self.decoder, self.decoder.config
        rows, new = tokens.shape[0], tokens.shape[1]
        past = self_kv.shape[4]
        inputs = cross_kv.shape[2]
        group = rows // inputs  # consecutive rows that share one input's memory
        heads, dim = config.heads, config.dim
        positions = torch.arange(new, device=tokens.device) + past
        scale = dim ** 0.5 if config.scale_embedding else 1.0  # Whisper's token vectors are not scaled
        x = decoder.embed(tokens) * scale + decoder.positions(positions)
        # Comparisons, not tril(past): a traced shape would become a constant diagonal.
        causal = torch.arange(past + new, device=tokens.device)[None, :] <= positions[:, None]
        mask = memory_mask[:, None, None, :]
        caches = []
        for i, layer in enumerate(decoder.layers):
            q, k, v = layer.self_qkv(layer.self_norm(x)).reshape(rows, new, 3, heads, -1).permute(2, 0, 3, 1, 4)
            k, v = torch.cat([self_kv[i, 0], k], 2), torch.cat([self_kv[i, 1], v], 2)
            caches.append(torch.stack([k, v]))
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=causal)
            x = x + layer.self_out(attended.transpose(1, 2).reshape(rows, new, dim))
            # The ``group`` rows of one input (its beam) attend to its memory together, as in
            # DecoderLayer with a shared cache: the keys and values are read once per input.
            q = layer.cross_q(layer.cross_norm(x)).reshape(inputs, group, new, heads, -1).permute(0, 3, 1, 2, 4)
            attended = F.scaled_dot_product_attention(q.reshape(inputs, heads, group * new, -1), cross_kv[i, 0],
                                                      cross_kv[i, 1], attn_mask=mask)
            attended = attended.reshape(inputs, heads, group, new, -1).permute(0, 2, 3, 1, 4)
            x = x + layer.cross_out(attended.reshape(rows, new, dim))
            x = x + layer.ffn(layer.ffn_norm(x))
        logits = decoder._logits(x[:, -1])
        return logits.float().log_softmax(-1), torch.stack(caches)


def dft_basis(window: torch.Tensor, n_fft: int) -> torch.Tensor:
    """The windowed one-sided DFT as convolution kernels ``(2 * (n_fft // 2 + 1), 1, n_fft)``:
    cosines, then negated sines (a ``window`` shorter than ``n_fft`` sits in its middle)."""
    window = window.double()
    left = (n_fft - window.shape[0]) // 2
    window = F.pad(window, (left, n_fft - window.shape[0] - left))
    time = torch.arange(n_fft, dtype=torch.float64)
    frequency = torch.arange(n_fft // 2 + 1, dtype=torch.float64)[:, None]
    angle = 2 * torch.pi * frequency * time / n_fft
    return torch.cat([angle.cos() * window, -angle.sin() * window]).float()[:, None, :]


class RealSpectrogram(nn.Module):
    """torchaudio's ``Spectrogram`` as a strided convolution with the windowed DFT basis: the same
    power spectrum without complex numbers, which the ONNX exporter cannot carry."""

    def __init__(self, spectrogram):
        super().__init__()
        self.hop, self.center, self.pad_mode, self.power = (spectrogram.hop_length, spectrogram.center,
                                                           spectrogram.pad_mode, spectrogram.power)
        if spectrogram.pad or spectrogram.normalized or not spectrogram.onesided or self.power not in (1.0, 2.0):
            raise ConfigError("export: only plain one-sided power or magnitude spectrograms can be exported")
        self.register_buffer("basis", dft_basis(spectrogram.window, spectrogram.n_fft), persistent=False)
        self.n_fft = spectrogram.n_fft

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        """``(batch, samples)`` -> ``(batch, freqs, frames)``."""
        x = waveforms[:, None]
        if self.center:
            x = F.pad(x, (self.n_fft // 2, self.n_fft // 2), mode=self.pad_mode)
        real, imaginary = F.conv1d(x, self.basis, stride=self.hop).chunk(2, dim=1)
        power = real ** 2 + imaginary ** 2
        return power if self.power == 2.0 else power.sqrt()


def magnitude_stft(input, n_fft, hop_length=None, win_length=None, window=None, center=True, pad_mode="reflect",
                   normalized=False, onesided=None, return_complex=None, align_to_window=None) -> torch.Tensor:
    """``torch.stft(...).abs()`` of ``input (batch, samples)`` as a real tensor ``(batch, freqs,
    frames)``, by a strided convolution with the windowed DFT basis (:func:`dft_basis`), which the
    ONNX exporter can carry (complex tensors it cannot). The window's values become constants."""
    if normalized or onesided is False or input.dim() != 2 or align_to_window:
        raise ConfigError("export: only one-sided, unnormalised STFTs of (batch, samples) waveforms can be exported")
    window = torch.ones(win_length or n_fft) if window is None else window
    basis = dft_basis(torch.tensor(window.tolist()), n_fft).to(input.device, input.dtype)
    x = input[:, None]
    if center:
        x = F.pad(x, (n_fft // 2, n_fft // 2), mode=pad_mode)
    real, imaginary = F.conv1d(x, basis, stride=hop_length or n_fft // 4).chunk(2, dim=1)
    return (real ** 2 + imaginary ** 2).sqrt()


@contextmanager
def real_stft():
    """Inside: ``torch.stft(..., return_complex=True)`` gives the STFT's magnitude as a real tensor
    (:func:`magnitude_stft`), so that an encoder whose front end takes ``torch.stft(...).abs()``
    (Whisper's log-mel) can be traced. An encoder that used the phase would get other features:
    :func:`export_onnx` compares the exported encoder with PyTorch's, so that does not pass unseen."""
    original = torch.stft

    def stft(input, n_fft, *args, **kwargs):
        names = ("hop_length", "win_length", "window", "center", "pad_mode", "normalized", "onesided",
                 "return_complex")
        settings = {**dict(zip(names, args)), **kwargs}
        if not settings.get("return_complex"):
            return original(input, n_fft, *args, **kwargs)
        return magnitude_stft(input, n_fft, **settings)

    torch.stft = stft
    try:
        yield
    finally:
        torch.stft = original


@contextmanager
def real_spectrograms(module: nn.Module):
    """Inside: every torchaudio ``Spectrogram`` of ``module`` computed by :class:`RealSpectrogram`."""
    import torchaudio

    swapped = []
    for name, child in list(module.named_modules()):
        for child_name, grandchild in list(child.named_children()):
            if isinstance(grandchild, torchaudio.transforms.Spectrogram):
                setattr(child, child_name, RealSpectrogram(grandchild))
                swapped.append((child, child_name, grandchild))
    try:
        yield
    finally:
        for parent, name, original in swapped:
            setattr(parent, name, original)


def example_inputs(model, encoder, other: bool = False) -> tuple[tuple, list[str], dict]:
    """Inputs to trace the encoder with, their names, and their dynamic axes; ``other``: inputs of
    other sizes, to check the traced graph on. An encoder with a fixed input window
    (``window_samples``: Whisper's 30 s) is traced on whole windows, and the runner pads every
    input to one."""
    modality = getattr(encoder, "modality", None)
    if modality == "speech":
        rate = int(getattr(encoder, "sample_rate", 16000))
        samples = getattr(encoder, "window_samples", None) or (rate * 3 // 4 if other else rate)
        lengths = torch.tensor([samples // 3] if other else [samples, samples * 3 // 4])
        inputs = torch.randn(len(lengths), samples) * (torch.arange(samples)[None] < lengths[:, None])  # zero padded
        return (inputs, lengths), ["inputs", "lengths"], {"inputs": {0: "batch", 1: "samples"}, "lengths": {0: "batch"}}
    if modality == "text":
        vocab = encoder.embedding.num_embeddings if hasattr(encoder, "embedding") else 8
        inputs = (torch.randint(4, vocab, (1, 7)), torch.tensor([7])) if other else \
            (torch.randint(4, vocab, (2, 12)), torch.tensor([12, 9]))
        return inputs, ["inputs", "lengths"], {"inputs": {0: "batch", 1: "length"}, "lengths": {0: "batch"}}
    if modality == "image":
        size = getattr(encoder, "data_config", lambda: {"input_size": (3, 224, 224)})()["input_size"]
        return (torch.randn(2, *size),), ["inputs"], {"inputs": {0: "batch"}}
    raise ConfigError(f"export: encoders of modality {modality!r} are not supported (speech, text, image are)")


def _export(module, args, path: Path, input_names, output_names, dynamic_axes) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on shape arithmetic are expected
        torch.onnx.export(module, args, str(path), input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic_axes, opset_version=OPSET, dynamo=False)


FRAMES_AXIS = {"cross_kv": 4, "memory_mask": 1, "ctc_log_probs": 1}  # the encoder graph's outputs


def check_encoder(graph: nn.Module, path: Path, inputs: tuple, input_names: list[str], outputs: list[str]) -> None:
    """Raise :class:`ConfigError` unless the exported encoder at ``path`` gives what PyTorch's
    ``graph`` gives on ``inputs`` (of other sizes than it was traced on): a shape the trace froze,
    or a front end that :func:`real_stft` cannot stand in for, shows here. The graph may give more
    frames than PyTorch (a fixed window it keeps whole) if its mask covers them. Skipped without
    onnxruntime."""
    try:
        import onnxruntime
    except ImportError:
        return
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = dict(zip(outputs, session.run(outputs, {name: x.numpy() for name, x in zip(input_names, inputs)})))
    expected = dict(zip(outputs, (x.float().numpy() if x.is_floating_point() else x.numpy() for x in graph(*inputs))))
    frames = expected["memory_mask"].shape[1]
    if got["memory_mask"].shape[1] < frames or got["memory_mask"][:, frames:].any():
        raise ConfigError(f"export: the ONNX encoder gives {got['memory_mask'].shape[1]} frames where PyTorch gives "
                          f"{frames}: this encoder does not trace to a graph of any input size")
    for name in outputs:
        ours = got[name].take(range(frames), axis=FRAMES_AXIS[name])
        theirs = expected[name]
        if ours.shape != theirs.shape:
            raise ConfigError(f"export: the ONNX encoder's {name} has shape {ours.shape} where PyTorch's has "
                              f"{theirs.shape}: this encoder does not trace to a graph of any input size")
        if theirs.dtype == bool:
            same = bool((ours == theirs).all())
        else:
            same = float(abs(ours - theirs).max(initial=0.0)) <= 1e-3 * max(float(abs(theirs).max(initial=0.0)), 1e-6)
        if not same:
            raise ConfigError(f"export: the ONNX encoder's {name} differs from PyTorch's on an input of another "
                              "size: this encoder does not trace to a faithful graph")


def export_onnx(checkpoint: str | Path, out: str | Path, task: str | None = None) -> Path:
    """Write ``encoder.onnx``, ``decoder_step.onnx``, ``onnx_config.json`` and the checkpoint's
    config and tokenizer files into ``out``; returns ``out``."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ConfigError("export --format onnx needs onnx: pip install 'mmseq[export]'") from None
    from ..checkpoint import CONFIG_FILE, load

    checkpoint, out = Path(checkpoint), Path(out)
    model = load(checkpoint, "cpu").float()
    if any(i >= model.tokenizer.vocab_size for i in model.route(task).task.prompt()):
        raise ConfigError(f"export: route {model.route(task).name!r} of {checkpoint} is prompt-tuned (soft prompt "
                          "vectors, see mmseq/prompt_tuning.py); ONNX export covers token prompts only")
    out.mkdir(parents=True, exist_ok=True)
    encoder_graph = EncoderGraph(model, task).eval()
    args, input_names, dynamic = example_inputs(model, encoder_graph.encoder)
    outputs = ["cross_kv", "memory_mask"] + (["ctc_log_probs"] if encoder_graph.ctc_head is not None else [])
    dynamic.update({"cross_kv": {2: "batch", 4: "frames"}, "memory_mask": {0: "batch", 1: "frames"},
                    "ctc_log_probs": {0: "batch", 1: "frames"}})
    with torch.no_grad(), real_spectrograms(encoder_graph), real_stft():
        _export(encoder_graph, args, out / "encoder.onnx", input_names, outputs,
                {k: v for k, v in dynamic.items() if k in input_names + outputs})
    with torch.no_grad():
        check_encoder(encoder_graph, out / "encoder.onnx", example_inputs(model, encoder_graph.encoder, other=True)[0],
                      input_names, outputs)
        cross_kv, memory_mask = encoder_graph(*args)[:2]
        config = model.decoder.config
        # Two rows per input, so that the traced graph keeps the grouping general.
        step_args = (torch.tensor([[model.tokenizer.bos_id, 4], [model.tokenizer.bos_id, 5]]).repeat(2, 1),
                     cross_kv.new_zeros(config.layers, 2, 4, config.heads, 3, config.dim // config.heads),
                     cross_kv, memory_mask)
        _export(DecoderStepGraph(model.decoder).eval(), step_args, out / "decoder_step.onnx",
                ["tokens", "self_kv", "cross_kv", "memory_mask"], ["log_probs", "self_kv_out"],
                {"tokens": {0: "rows", 1: "new"}, "self_kv": {2: "rows", 4: "past"},
                 "cross_kv": {2: "inputs", 4: "frames"}, "memory_mask": {0: "inputs", 1: "frames"},
                 "log_probs": {0: "rows"}, "self_kv_out": {2: "rows", 4: "length"}})
    tokenizer = model.tokenizer
    route = model.route(task)
    task_name = route.name
    settings = {
        "task": task_name, "modality": getattr(encoder_graph.encoder, "modality", None),
        "sample_rate": getattr(encoder_graph.encoder, "sample_rate", None),
        "bos_id": tokenizer.bos_id, "eos_id": tokenizer.eos_id, "pad_id": tokenizer.pad_id,
        "special_ids": [tokenizer.special_ids.start, tokenizer.special_ids.stop], "prompt": route.task.prompt(),
        "decoder": {"layers": config.layers, "heads": config.heads, "head_dim": config.dim // config.heads,
                    "max_length": config.max_length},
        "decoding": {**asdict(model.decoding), **route.decoding}, "has_ctc": encoder_graph.ctc_head is not None,
        "inputs": input_names, "opset": OPSET,
        "input_samples": getattr(encoder_graph.encoder, "window_samples", None),  # every input padded to this
    }
    (out / ONNX_CONFIG).write_text(json.dumps(settings, indent=1))
    shutil.copy2(checkpoint / CONFIG_FILE, out / CONFIG_FILE)
    tokenizer.save(out)  # the tokenizer's own files, so the folder decodes to text on its own
    return out
