"""Language models for shallow fusion in beam search.

A neural language model is trained by the shared trainer as task ``"lm"`` (:mod:`mmseq.tasks.lm`:
text manifests, each line's ``text``) with the ``"null"`` encoder (:mod:`mmseq.encoders.null`): the
ordinary text decoder over one constant frame, a decoder-only Transformer LM. Train it with the
recipe's tokenizer (so that its ids match the speech model's), e.g.
``mmseq train recipes/synth_speech/lm.yaml``. A token n-gram model is counted in minutes instead
(``mmseq ngram``: :func:`build`, counting in :mod:`mmseq.decoding.ngram`) and kept in a folder of
safetensors arrays (or an ARPA file). Their fusion scorers are
:class:`mmseq.decoding.scorers.lm.LanguageModel` and :class:`mmseq.decoding.scorers.ngram.NGramLM`.

This module loads them from files (and so imports :mod:`mmseq.checkpoint`): nothing that
:mod:`mmseq.model` imports may import it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from ..errors import InputError
from .ngram import read_texts, train_ngram, write_arpa
from .scorers.lm import LanguageModel
from .scorers.ngram import SETTINGS, NGramLM


def load_lm(path: str | os.PathLike, tokenizer, device=None):
    """The fusion scorer at ``path`` (loaded once per process): the folder of an n-gram model
    (``mmseq ngram``) or an ARPA file is an :class:`NGramLM` over ``tokenizer``'s tokens, any other
    folder a trained ``lm`` checkpoint."""
    if Path(path).is_file() or (Path(path) / SETTINGS).is_file():
        return NGramLM.cached(path, tokenizer, device)
    return LanguageModel.cached(path, device)


def with_lm(options: dict, model) -> dict:
    """``options`` with an ``lm`` given as a path replaced by its loaded scorer over ``model``'s
    tokenizer (the commands and :func:`mmseq.inference.evaluate.evaluate` take paths)."""
    if isinstance(options.get("lm"), (str, os.PathLike)):
        options = {**options, "lm": load_lm(options["lm"], model.tokenizer, model.device)}
    return options


def build(checkpoint: str | os.PathLike, texts: Iterable[str | os.PathLike], out: str | os.PathLike, order: int = 4,
          prune: int = 1, arpa: str | os.PathLike | None = None) -> dict:
    """``mmseq ngram``: count ``texts`` (files) with ``checkpoint``'s tokenizer into an n-gram
    model saved in the folder ``out`` (and, with ``arpa``, as an ARPA file); returns its sizes."""
    from ..checkpoint import read_config
    from ..tokenizer import build_tokenizer

    if order < 1 or prune < 1:
        raise InputError(f"--order and --prune must be at least 1, got {order} and {prune}")
    tokenizer = build_tokenizer(read_config(checkpoint)["tokenizer"], checkpoint)
    model = train_ngram(tokenizer, read_texts(texts), order, prune)
    if arpa:
        write_arpa(model, arpa)
    NGramLM.from_arpa(model, tokenizer).save(out)
    return {f"{n}-grams": len(entries) for n, entries in enumerate(model, 1)}
