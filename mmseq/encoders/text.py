"""Text encoder: the source text's own tokenizer, token embeddings and pre-norm Transformer layers.

The source tokenizer belongs to the encoder (the decoder's tokenizer is for the target side), and
it travels inside the checkpoint without any file of its own beside the weights:

- characters: the source alphabet is a list in the encoder's settings, so in ``config.json``;
- sentencepiece: the model's bytes are a ``uint8`` buffer (``source_tokenizer``) inside
  ``model.safetensors``; ``config.json`` holds its size and vocabulary size.

At training time the settings may instead point at a file (``model_file``) or learn the source
tokenizer from the training manifest's ``source`` fields (``train_from``); the encoder then
reports the settled settings through :meth:`TextEncoder.checkpoint_settings`, and those are what
the checkpoint stores. Source ids follow mmseq's layout: ``<pad>`` 0, ``<s>`` 1, ``</s>`` 2,
``<unk>`` 3, then the ordinary tokens; every source ends with ``</s>``.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError, InputError
from ..tokenizer import CharTokenizer, SentencePieceTokenizer, Tokenizer, train_tokenizer
from .base import Encoder, lengths_to_mask, register_encoder
from .speech import sinusoidal_positions

TOKENIZER_KEYS = {"type", "vocab", "train_from", "model_file", "vocab_size", "model_type", "model_bytes"}


def source_texts(manifest: str | Path) -> list[str]:
    """The ``source`` field of every readable line of a manifest (bad lines are left to the task)."""
    from ..data.manifest import read_manifest

    examples, _ = read_manifest(manifest, ("source",), skip_errors=True)
    texts = [e["source"] for e in examples if isinstance(e["source"], str)]
    if not texts:
        raise ConfigError(f"{manifest}: no 'source' texts to learn the source tokenizer from")
    return texts


def _sentencepiece_from_bytes(data: bytes) -> SentencePieceTokenizer:
    # The processor reads the whole model into memory, so the temporary file can go at once.
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "source.model"
        path.write_bytes(data)
        return SentencePieceTokenizer(path, prompt_tokens=[])


def build_source_tokenizer(settings: dict) -> tuple[Tokenizer, bytes | None]:
    """A source tokenizer (no prompt tokens) from the ``tokenizer`` settings of :class:`TextEncoder`,
    and the sentencepiece model's bytes (``None`` for characters)."""
    settings = dict(settings)
    unknown = sorted(set(settings) - TOKENIZER_KEYS)
    if unknown:
        raise ConfigError(f"text encoder tokenizer: unknown setting {unknown[0]!r}; known: {', '.join(sorted(TOKENIZER_KEYS))}")
    kind = settings.get("type", "char")
    if kind == "char":
        if settings.get("vocab") is not None:
            return CharTokenizer(list(settings["vocab"]), prompt_tokens=[]), None
        if settings.get("train_from"):
            return CharTokenizer.train(source_texts(settings["train_from"]), prompt_tokens=[]), None
        raise ConfigError("text encoder tokenizer: type 'char' needs 'vocab' (the source characters) or 'train_from'")
    if kind == "sentencepiece":
        if settings.get("model_file"):
            path = Path(settings["model_file"])
            if not path.is_file():
                raise ConfigError(f"{path}: source sentencepiece model not found")
            data = path.read_bytes()
        elif settings.get("train_from"):
            with tempfile.TemporaryDirectory() as folder:
                out = Path(folder) / "source.model"
                train_tokenizer("sentencepiece", source_texts(settings["train_from"]), prompt_tokens=[], out=out,
                                vocab_size=settings.get("vocab_size", 1000), model_type=settings.get("model_type", "unigram"))
                data = out.read_bytes()
        else:
            raise ConfigError("text encoder tokenizer: type 'sentencepiece' needs 'model_file' or 'train_from'")
        return _sentencepiece_from_bytes(data), data
    raise ConfigError(f"text encoder tokenizer: type must be 'char' or 'sentencepiece', got {kind!r}")


@register_encoder("text")
class TextEncoder(Encoder):
    """Source token ids to memory: scaled embeddings plus sinusoidal positions, then pre-norm
    Transformer layers.

    Args:
        tokenizer: the source tokenizer, one of
            ``{"type": "char", "vocab": "0123456789"}`` (the characters, a string or a list);
            ``{"type": "char", "train_from": "data/train.jsonl"}`` (the characters of its ``source`` fields);
            ``{"type": "sentencepiece", "model_file": "source.model"}`` (trained by
            ``mmseq.tokenizer.train_tokenizer("sentencepiece", texts, prompt_tokens=[])``);
            ``{"type": "sentencepiece", "train_from": "data/train.jsonl", "vocab_size": 1000,
            "model_type": "unigram"}``.
        dim, layers, heads, ffn_dim, dropout: width, depth, attention heads, feed-forward width,
            dropout.
        max_length: longest source in tokens, ``</s>`` included; a longer one is an
            :class:`InputError` naming its length.

    ``forward(tokens (batch, length), lengths (batch,))`` returns memory ``(batch, length, dim)``
    and its mask ``(batch, length)``: one memory vector per source token.
    """

    modality = "text"

    def __init__(self, tokenizer: dict | None = None, dim: int = 256, layers: int = 4, heads: int = 4,
                 ffn_dim: int = 1024, dropout: float = 0.1, max_length: int = 1024):
        super().__init__()
        settings = dict(tokenizer or {"type": "char"})
        self.output_dim, self.max_length = dim, max_length
        self.settings = dict(dim=dim, layers=layers, heads=heads, ffn_dim=ffn_dim, dropout=dropout, max_length=max_length)
        if settings.get("type") == "sentencepiece" and settings.get("model_bytes"):
            # Rebuilt from a checkpoint: the bytes arrive with the weights (see _load_tokenizer).
            self.source_tokenizer, data = None, bytes(int(settings["model_bytes"]))
            vocab_size = int(settings["vocab_size"])
        else:
            self.source_tokenizer, data = build_source_tokenizer(settings)
            vocab_size = self.source_tokenizer.vocab_size
        self.vocab_size = vocab_size
        if data is not None:
            self.register_buffer("source_tokenizer_model", torch.frombuffer(bytearray(data), dtype=torch.uint8))
            self.register_load_state_dict_post_hook(lambda module, keys: module._load_tokenizer())
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=Tokenizer.pad_id)
        # Scaled by sqrt(dim) in forward: unit-variance token vectors beside unit-size positions.
        nn.init.normal_(self.embedding.weight, std=dim ** -0.5)
        with torch.no_grad():
            self.embedding.weight[Tokenizer.pad_id].zero_()
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(dim, heads, ffn_dim, dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(dim), enable_nested_tensor=False)

    def _load_tokenizer(self) -> None:
        self.source_tokenizer = _sentencepiece_from_bytes(self.source_tokenizer_model.cpu().numpy().tobytes())

    def checkpoint_settings(self) -> dict:
        """Settings that rebuild this encoder from the checkpoint alone: the characters themselves,
        or the size of the sentencepiece model stored among the weights."""
        if isinstance(self.source_tokenizer, CharTokenizer):
            tokenizer = {"type": "char", "vocab": self.source_tokenizer.vocab}
        else:
            tokenizer = {"type": "sentencepiece", "model_bytes": int(self.source_tokenizer_model.numel()),
                         "vocab_size": self.vocab_size}
        return {"tokenizer": tokenizer, **self.settings}

    def tokenize(self, text: str) -> torch.Tensor:
        """Source text to ids ``(length,)`` ending with ``</s>``."""
        if not isinstance(text, str):
            raise InputError(f"a text source must be a string, got {type(text).__name__}")
        if not text.strip():
            raise InputError("empty source text")
        ids = self.source_tokenizer.encode(text) + [Tokenizer.eos_id]
        if len(ids) > self.max_length:
            raise InputError(f"source of {len(ids)} tokens is longer than the text encoder's max_length {self.max_length}")
        return torch.tensor(ids, dtype=torch.long)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if lengths is None:
            lengths = torch.full(tokens.shape[:1], tokens.shape[1], device=tokens.device)
        mask = lengths_to_mask(lengths, tokens.shape[1])
        x = self.embedding(tokens) * math.sqrt(self.output_dim)
        x = self.dropout(x + sinusoidal_positions(tokens.shape[1], self.output_dim, tokens.device).to(x.dtype))
        return self.layers(x, src_key_padding_mask=~mask), mask
