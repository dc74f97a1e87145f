"""Shallow fusion with an external language model: a trained ``lm`` checkpoint's decoder as a
fused scorer over the whole vocabulary.

The LM is the ordinary text decoder trained as task ``"lm"`` with the ``"null"`` encoder (see
:mod:`mmseq.decoding.lm`); it sees ``<s>`` and a prompt's text part, never task or control tokens.
"""

from __future__ import annotations

import functools
import math
import os

import torch

from ...decoder import TextDecoder
from ...errors import ConfigError
from .base import Scorer, text_ids


class LanguageModel(Scorer):
    """A trained ``lm`` checkpoint's decoder as a fusion scorer.

    >>> lm = LanguageModel.load("exp/synth_lm/best")
    >>> model.generate(batch, beam_size=4, lm=lm, lm_weight=0.3)

    State: ``{"cache": the LM's DecoderCache, "log_probs": (rows, vocab) scores of the next token
    or None, "pending": (rows,) tokens not yet fed}``; feeding is lazy, so rows that leave the batch
    after a step are never run through the LM. Tensors only: no host synchronisation (on another
    device than the search's, the tokens and scores are copied across).
    """

    def __init__(self, decoder: TextDecoder, tokenizer):
        self.decoder, self.tokenizer = decoder.eval(), tokenizer
        self.max_length = decoder.config.max_length

    @classmethod
    def load(cls, folder: str | os.PathLike, device: str | torch.device | None = None) -> "LanguageModel":
        from ...checkpoint import load

        model = load(folder, device)
        kinds = [route.kind for route in model.routes.values()]
        if kinds != ["lm"]:
            raise ConfigError(f"{folder}: a checkpoint of task {', '.join(kinds)}, not a language model ('lm')")
        return cls(model.decoder, model.tokenizer)

    @classmethod
    def cached(cls, folder: str | os.PathLike, device: str | torch.device | None = None) -> "LanguageModel":
        """:meth:`load`, once per folder and device in a process (``generate(lm="folder")`` uses it)."""
        return _load_cached(os.path.abspath(folder), str(device) if device is not None else None)

    @property
    def device(self) -> torch.device:
        return self.decoder.embed.weight.device

    def check_tokenizer(self, tokenizer) -> None:
        """Raise :class:`ConfigError` unless ``tokenizer`` has exactly this LM's vocabulary."""
        if tokenizer.pieces() != self.tokenizer.pieces():
            raise ConfigError("the language model's vocabulary differs from the model's: train the LM with the "
                              "same tokenizer settings on text whose characters (or pieces) are the same")

    def _text_ids(self, prompt: list[int]) -> list[int]:
        return [self.tokenizer.bos_id] + text_ids(prompt, self.tokenizer)

    def _memory(self, rows: int):
        memory = torch.zeros(rows, 1, self.decoder.config.memory_dim or self.decoder.config.dim, device=self.device)
        return memory, torch.ones(rows, 1, dtype=torch.bool, device=self.device)

    # -- the Scorer interface ------------------------------------------------------------------
    def room(self, prompt: list[int]) -> int:
        return self.max_length - len(self._text_ids(prompt))

    @torch.no_grad()
    def init_state(self, prompt, memory_mask, rows_per_input, max_new):
        rows = memory_mask.shape[0] * rows_per_input
        prefix = torch.tensor(self._text_ids(list(prompt)), device=self.device)
        cache = self.decoder.init_cache(*self._memory(rows), len(prefix) + max_new)
        return {"cache": cache, "log_probs": self._step(prefix.expand(rows, -1), cache), "pending": None}

    @torch.no_grad()
    def score(self, state, tokens, candidates=None):
        if state["pending"] is not None:
            state["log_probs"] = self._step(state["pending"][:, None], state["cache"])
            state["pending"] = None
        return state["log_probs"]

    def advance(self, state, index, new_tokens):
        state["cache"].reorder(index)
        state["pending"] = new_tokens.to(self.device)
        return state

    def select(self, state, rows):
        state["cache"] = state["cache"].select(rows)
        state["pending"] = state["pending"][rows] if state["pending"] is not None else None
        return state

    def _step(self, tokens: torch.Tensor, cache) -> torch.Tensor:
        return self.decoder.step(tokens.to(self.device), cache)[:, -1].float().log_softmax(-1)

    # -- scoring whole texts --------------------------------------------------------------------
    @torch.no_grad()
    def log_likelihood(self, texts: list[str]) -> tuple[float, int]:
        """Summed log-probability of ``texts`` (each with its ``</s>``) and the tokens counted."""
        total, count = 0.0, 0
        for text in texts:
            ids = [self.tokenizer.bos_id] + self.tokenizer.encode(text) + [self.tokenizer.eos_id]
            tokens = torch.tensor([ids], device=self.device)
            logits = self.decoder(tokens[:, :-1], *self._memory(1))
            total += float(logits.float().log_softmax(-1).gather(2, tokens[:, 1:, None]).sum())
            count += len(ids) - 1
        return total, count

    def perplexity(self, texts: list[str]) -> float:
        """Per-token perplexity of ``texts``."""
        total, count = self.log_likelihood(texts)
        return math.exp(-total / max(count, 1))


@functools.lru_cache(maxsize=4)
def _load_cached(folder: str, device: str | None) -> LanguageModel:
    return LanguageModel.load(folder, device)
