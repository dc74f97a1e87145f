"""Shallow fusion with a token n-gram language model (see :mod:`mmseq.decoding.ngram`), scored over the
whole vocabulary.

The model is kept as sorted arrays, one set per order: each n-gram's key (its token ids as the
digits of one number in base ``vocab``, so that the n-grams after a history are one contiguous
run), its log-probability and, as a history, its backoff. Saved, it is a folder of
``ngram.safetensors`` and ``ngram.json`` (order and tokens) that loads in a moment; an ARPA file
loads too, more slowly. Each row's state is its history, the longest suffix of its tokens that the
model knows (at most ``order - 1``); the next-token log-probabilities after a history are built
by backing off (``p(w | h)`` where the model has ``h w``, else ``backoff(h) * p(w | h')``) as one
vector over the vocabulary, and kept, so that the beams and steps that share a history build it once.
"""

from __future__ import annotations

import functools
import json
import math
import os
from pathlib import Path

import numpy as np
import torch

from ...errors import ConfigError, InputError
from ..ngram import BOS, EOS, LOG10, arpa_word, read_arpa
from .base import Scorer, text_ids

CACHED = 2 ** 26  # floats of history vectors kept (256 MB): 262,144 histories of a 256-token vocabulary
WEIGHTS, SETTINGS = "ngram.safetensors", "ngram.json"


class NGramLM(Scorer):
    """A token n-gram model as a fusion scorer.

    >>> lm = NGramLM.load("exp/synth_speech/ngram", model.tokenizer)   # or an ARPA file
    >>> model.generate(batch, beam_size=4, lm=lm, lm_weight=0.5)

    ``tables``: per order ``n`` (1 to ``order``), ``(keys, log_probs, backoffs)`` numpy arrays
    sorted by key, natural logs. State: ``{"histories": a token-id tuple per row}``, on the host.

    Host synchronisation: :meth:`advance` and :meth:`select` read the chosen rows and tokens with
    ``.tolist()`` (two syncs per step), and a history's next-token vector is looked up in the
    numpy tables (``searchsorted``) the first time it is seen, then kept; :meth:`score` stacks the
    kept vectors of the rows (on the scorer's ``device``) and moves them to the search's.
    """

    def __init__(self, tables: list[tuple[np.ndarray, np.ndarray, np.ndarray]], tokens: list[str], tokenizer,
                 device: str | torch.device | None = None):
        self.tokens, self.tokenizer, self.order = list(tokens), tokenizer, len(tables)
        self.check_tokenizer(tokenizer)
        self.base = tokenizer.vocab_size
        self.tables = tables
        self.device = torch.device(device or "cpu")
        unigrams = torch.full((self.base,), -math.inf)
        keys, log_probs, _ = tables[0]
        unigrams[torch.from_numpy(keys)] = torch.from_numpy(log_probs).float()
        self.unigrams = unigrams.to(self.device)
        self._vectors: dict[tuple, torch.Tensor] = {}

    # -- making, saving and loading ---------------------------------------------------------------
    @classmethod
    def from_arpa(cls, model: list[dict], tokenizer, device=None) -> "NGramLM":
        """From per-order ``{ngram: (log10 p, log10 backoff)}`` (:func:`mmseq.decoding.ngram.kneser_ney`,
        :func:`mmseq.decoding.ngram.read_arpa`) whose words are ``tokenizer``'s tokens."""
        tokens = [arpa_word(p) for p in tokenizer.pieces()]
        ids = {token: i for i, token in enumerate(tokens)}
        if len(ids) != len(tokens):
            raise ConfigError("two of the tokenizer's tokens are one ARPA word (a space and U+2581)")
        ids[BOS], ids[EOS] = tokenizer.bos_id, tokenizer.eos_id
        base = len(tokens)
        if base ** len(model) >= 2 ** 63:
            raise ConfigError(f"an n-gram model of order {len(model)} over {base} tokens is too large for 64-bit keys")
        tables = []
        for entries in model:
            try:
                keys = [_key([ids[arpa_word(w)] for w in gram], base) for gram in entries]
            except KeyError as error:
                raise ConfigError(f"the n-gram model has a token the tokenizer lacks ({error.args[0]}): count it "
                                  "with this model's tokenizer (mmseq ngram CHECKPOINT ...)") from None
            values = np.array([(p, 0.0 if b is None else b) for p, b in entries.values()], dtype=np.float32).reshape(-1, 2)
            keys = np.array(keys, dtype=np.int64)
            order = np.argsort(keys)
            tables.append((keys[order], values[order, 0] * np.float32(LOG10), values[order, 1] * np.float32(LOG10)))
        return cls(tables, tokens, tokenizer, device)

    @classmethod
    def load(cls, path: str | os.PathLike, tokenizer, device=None) -> "NGramLM":
        """A folder that :meth:`save` wrote, or an ARPA file (plain or ``.gz``)."""
        path = Path(path)
        if path.is_file():
            return cls.from_arpa(read_arpa(path), tokenizer, device)
        if not (path / SETTINGS).is_file() or not (path / WEIGHTS).is_file():
            raise InputError(f"{path}: not an n-gram model (no {SETTINGS} and {WEIGHTS}, and not an ARPA file)")
        from safetensors.numpy import load_file

        settings = json.loads((path / SETTINGS).read_text())
        arrays = load_file(str(path / WEIGHTS))
        tables = [(arrays[f"keys.{n}"], arrays[f"log_probs.{n}"], arrays[f"backoffs.{n}"])
                  for n in range(1, settings["order"] + 1)]
        return cls(tables, settings["tokens"], tokenizer, device)

    @classmethod
    def cached(cls, path: str | os.PathLike, tokenizer, device=None) -> "NGramLM":
        """:meth:`load`, once per path, tokenizer and device in a process."""
        return _load_cached(os.path.abspath(path), tokenizer, str(device) if device is not None else None)

    def save(self, folder: str | os.PathLike) -> None:
        """The folder of ``ngram.safetensors`` and ``ngram.json``, swapped into place whole."""
        from safetensors.numpy import save_file

        from ...checkpoint import write_folder

        arrays = {}
        for n, (keys, log_probs, backoffs) in enumerate(self.tables, 1):
            arrays.update({f"keys.{n}": keys, f"log_probs.{n}": log_probs, f"backoffs.{n}": backoffs})
        settings = {"order": self.order, "ngrams": [len(t[0]) for t in self.tables], "tokens": self.tokens}

        def write(tmp: Path) -> None:
            save_file(arrays, str(tmp / WEIGHTS))
            (tmp / SETTINGS).write_text(json.dumps(settings, ensure_ascii=False))

        write_folder(folder, write)

    def check_tokenizer(self, tokenizer) -> None:
        """Raise :class:`ConfigError` unless ``tokenizer`` has exactly this model's tokens."""
        if [arpa_word(p) for p in tokenizer.pieces()] != self.tokens:
            raise ConfigError("the n-gram model's tokens differ from the model's tokenizer: count it with the "
                              "checkpoint's tokenizer (mmseq ngram CHECKPOINT ...)")

    # -- probabilities ----------------------------------------------------------------------------
    def _find(self, history: tuple) -> int | None:
        """Row of ``history`` in its order's table, or None."""
        keys = self.tables[len(history) - 1][0]
        key = _key(history, self.base)
        row = int(np.searchsorted(keys, key))
        return row if row < len(keys) and keys[row] == key else None

    def log_probs(self, history: tuple) -> torch.Tensor:
        """Natural-log probabilities ``(vocab,)`` of the next token after ``history`` (a tuple of
        ids that :meth:`_history` made)."""
        vector = self._vectors.get(history)
        if vector is not None:
            return vector
        if not history:
            return self.unigrams
        row = self._find(history)
        backoff = float(self.tables[len(history) - 1][2][row]) if row is not None else 0.0
        vector = self.log_probs(history[1:]) + backoff  # a new tensor
        if len(history) < self.order:
            keys, log_probs, _ = self.tables[len(history)]
            first = _key(history, self.base) * self.base
            start, end = np.searchsorted(keys, [first, first + self.base])
            if end > start:
                vector[torch.from_numpy(keys[start:end] - first).to(self.device)] = \
                    torch.from_numpy(log_probs[start:end]).to(self.device)
        if len(self._vectors) * self.base >= CACHED:
            self._vectors.clear()
        self._vectors[history] = vector
        return vector

    def _history(self, ids: tuple) -> tuple:
        """The longest suffix of ``ids`` that the model has as an n-gram (at most ``order - 1``
        long): nothing longer can condition the next token."""
        ids = ids[max(len(ids) - self.order + 1, 0):]
        while ids and self._find(ids) is None:
            ids = ids[1:]
        return ids

    # -- the Scorer interface ------------------------------------------------------------------
    def init_state(self, prompt, memory_mask, rows_per_input, max_new):
        rows = memory_mask.shape[0] * rows_per_input
        start = self._history((self.tokenizer.bos_id, *text_ids(list(prompt), self.tokenizer)))
        return {"histories": [start] * rows}

    def score(self, state, tokens, candidates=None):
        return torch.stack([self.log_probs(h) for h in state["histories"]]).to(tokens.device)

    def advance(self, state, index, new_tokens):
        histories = state["histories"]
        state["histories"] = [self._history(histories[i] + (t,)) for i, t in zip(index.tolist(), new_tokens.tolist())]
        return state

    def select(self, state, rows):
        state["histories"] = [state["histories"][i] for i in rows.tolist()]
        return state

    # -- scoring whole texts --------------------------------------------------------------------
    def log_likelihood(self, texts: list[str]) -> tuple[float, int]:
        """Summed natural-log probability of ``texts`` (each with its ``</s>``) and the tokens counted."""
        total, count = 0.0, 0
        for text in texts:
            history = self._history((self.tokenizer.bos_id,))
            for token in self.tokenizer.encode(text) + [self.tokenizer.eos_id]:
                total += float(self.log_probs(history)[token])
                history = self._history(history + (token,))
                count += 1
        return total, count

    def perplexity(self, texts: list[str]) -> float:
        total, count = self.log_likelihood(texts)
        return math.exp(-total / max(count, 1))


def _key(ids, base: int) -> int:
    key = 0
    for i in ids:
        key = key * base + i
    return key


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, tokenizer, device: str | None) -> NGramLM:
    return NGramLM.load(path, tokenizer, device)
