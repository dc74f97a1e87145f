"""A Transformer language model over the decoder's vocabulary, for shallow fusion in beam search.

Trained by the shared trainer as task ``"lm"`` (:mod:`mmseq.tasks.lm`: text manifests, each
line's ``text``) with the ``"null"`` encoder (:mod:`mmseq.encoders.null`): the model is the
ordinary text decoder over one constant frame, a decoder-only Transformer LM. Train it on the recipe's own text with the recipe's tokenizer settings (so that the
ids match the speech model's), e.g. ``mmseq train recipes/synth_speech/lm.yaml``.

Any scorer with the same small interface can be fused (an n-gram model, say):

* ``init_state(prompt, rows, max_new) -> (log_probs (rows, vocab), state)``: the state after the
  prompt's text part, and the scores of the first new token;
* ``score(tokens (rows, new), state) -> (log_probs (rows, vocab), state)``: scores of the token
  after ``tokens``;
* ``reorder(state, index)`` (row ``i`` continues row ``index[i]``) and ``select(state, rows)``;
* ``room(prompt) -> int``: most new tokens it can score after the prompt.
"""

from __future__ import annotations

import functools
import math
import os

import torch

from .decoder import DecoderCache, TextDecoder
from .errors import ConfigError


def _vocabulary(tokenizer) -> list[str]:
    if hasattr(tokenizer, "processor"):  # sentencepiece
        return [tokenizer.processor.id_to_piece(i) for i in range(tokenizer.vocab_size)]
    return list(tokenizer.special_tokens) + list(getattr(tokenizer, "vocab", []))


class LanguageModel:
    """A trained ``lm`` checkpoint's decoder as a fusion scorer (see the module docstring).

    >>> lm = LanguageModel.load("exp/synth_lm/best")
    >>> model.generate(batch, beam_size=4, lm=lm, lm_weight=0.3)
    """

    def __init__(self, decoder: TextDecoder, tokenizer):
        self.decoder, self.tokenizer = decoder.eval(), tokenizer
        self.max_length = decoder.config.max_length

    @classmethod
    def load(cls, folder: str | os.PathLike, device: str | torch.device | None = None) -> "LanguageModel":
        from .model import load

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
        if _vocabulary(tokenizer) != _vocabulary(self.tokenizer):
            raise ConfigError("the language model's vocabulary differs from the model's: train the LM with the "
                              "same tokenizer settings on text whose characters (or pieces) are the same")

    def _text_ids(self, prompt: list[int]) -> list[int]:
        specials = len(self.tokenizer.special_tokens)
        return [self.tokenizer.bos_id] + [i for i in prompt if i >= specials]

    def room(self, prompt: list[int]) -> int:
        return self.max_length - len(self._text_ids(prompt))

    @torch.no_grad()
    def init_state(self, prompt: list[int], rows: int, max_new: int):
        prefix = torch.tensor(self._text_ids(prompt), device=self.device)
        memory = torch.zeros(rows, 1, self.decoder.config.memory_dim or self.decoder.config.dim, device=self.device)
        mask = torch.ones(rows, 1, dtype=torch.bool, device=self.device)
        state = self.decoder.init_cache(memory, mask, len(prefix) + max_new)
        return self.score(prefix.expand(rows, -1), state)

    @torch.no_grad()
    def score(self, tokens: torch.Tensor, state: DecoderCache):
        return self.decoder.step(tokens.to(self.device), state)[:, -1].float().log_softmax(-1), state

    def reorder(self, state: DecoderCache, index: torch.Tensor) -> DecoderCache:
        state.reorder(index)
        return state

    def select(self, state: DecoderCache, rows: torch.Tensor) -> DecoderCache:
        return state.select(rows)

    @torch.no_grad()
    def log_likelihood(self, texts: list[str]) -> tuple[float, int]:
        """Summed log-probability of ``texts`` (each with its ``</s>``) and the tokens counted."""
        total, count = 0.0, 0
        for text in texts:
            ids = [self.tokenizer.bos_id] + self.tokenizer.encode(text) + [self.tokenizer.eos_id]
            tokens = torch.tensor([ids], device=self.device)
            memory = torch.zeros(1, 1, self.decoder.config.memory_dim or self.decoder.config.dim, device=self.device)
            logits = self.decoder(tokens[:, :-1], memory, torch.ones(1, 1, dtype=torch.bool, device=self.device))
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
