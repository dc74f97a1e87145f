"""The one interface every encoder implements.

An encoder turns raw inputs into a sequence of memory vectors with a mask; that pair is all the
decoder, the CTC head, the losses and the search ever see, whatever the modality.
"""

from __future__ import annotations

import torch
from torch import nn

from ..registry import Registry

ENCODERS = Registry("encoder", entry_point_group="mmseq.encoders")
register_encoder = ENCODERS.register


def lengths_to_mask(lengths: torch.Tensor, max_length: int | None = None) -> torch.Tensor:
    """``(batch,)`` lengths to a ``(batch, max_length)`` bool mask, True on real positions."""
    max_length = int(lengths.max()) if max_length is None else max_length
    return torch.arange(max_length, device=lengths.device)[None, :] < lengths[:, None]


class Encoder(nn.Module):
    """Base class of encoders: raw inputs and lengths in, ``(memory, mask)`` out.

    Subclasses set ``output_dim`` (the width of the memory vectors) and ``modality``, take all
    their settings as keyword arguments (they are stored in the checkpoint's ``config.json`` and
    passed back to rebuild the encoder), and implement :meth:`forward`.

    ``forward(inputs, lengths)``:
        inputs: the batch as the task's collate made it: waveforms ``(batch, samples)`` for speech,
            images ``(batch, 3, height, width)`` for images, token ids ``(batch, length)`` for text.
        lengths: ``(batch,)`` valid lengths of ``inputs`` along its time axis, or ``None`` when
            every input is full size (images).
        returns: ``memory`` ``(batch, frames, output_dim)`` and ``mask`` ``(batch, frames)``,
            a bool tensor that is True on real frames and False on padding.

    Optional attributes used by plots and long-audio decoding:
        ``frame_rate``: memory frames per second of audio (speech).
        ``window_samples``: the longest input it takes (speech; Whisper's 30 s): long audio is cut
            into windows no longer than this.
        ``grid_shape``: ``(rows, cols)`` of the last batch's memory grid (images), row-major.

    What the tasks ask of an encoder of their modality:
        ``sample_rate`` (speech): the rate the ASR task resamples audio to.
        ``transform(train)`` (images): the PIL image to ``(3, H, W)`` tensor callable of the caption task.
        ``tokenize(text)`` (text): source text to ids ``(length,)``; the source tokenizer is the encoder's.

    Optional ``checkpoint_settings() -> dict``: the settings that rebuild the encoder from the
    checkpoint alone, when they differ from those given (a text encoder given
    ``tokenizer: {type: char, train_from: train.jsonl}`` reports the characters it learned).

    Register a subclass with ``@register_encoder("name")``, inside mmseq or in another package
    named in the ``mmseq.encoders`` entry point group; ``docs/extending.md`` walks through both.
    """

    modality: str = "generic"
    output_dim: int

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


def create_encoder(name: str, **kwargs) -> Encoder:
    """Build a registered encoder by name, e.g. ``create_encoder("conformer", dim=144)``."""
    return ENCODERS.create(name, **kwargs)


def list_encoders(pattern: str = "*") -> list[str]:
    """Names of the registered encoders (built-in and from plugins) matching a glob pattern."""
    return ENCODERS.names(pattern)
