"""Language models for shallow fusion in beam search.

A neural language model is trained by the shared trainer as task ``"lm"`` (:mod:`mmseq.tasks.lm`:
text manifests, each line's ``text``) with the ``"null"`` encoder (:mod:`mmseq.encoders.null`): the
ordinary text decoder over one constant frame, a decoder-only Transformer LM. Train it with the
recipe's tokenizer (so that its ids match the speech model's), e.g.
``mmseq train recipes/synth_speech/lm.yaml``. A token n-gram model is counted in minutes instead
(``mmseq ngram``, :mod:`mmseq.decoding.ngram`) and kept in a folder of safetensors arrays (or an ARPA file). Their fusion scorers,
:class:`LanguageModel` and :class:`NGramLM`, live with the other scorers in :mod:`mmseq.decoding.scorers`.
"""

from __future__ import annotations

import os
from pathlib import Path

from .scorers.lm import LanguageModel  # noqa: F401
from .scorers.ngram import NGramLM


def load_lm(path: str | os.PathLike, tokenizer, device=None):
    """The fusion scorer at ``path`` (loaded once per process): the folder of an n-gram model
    (``mmseq ngram``) or an ARPA file is an :class:`NGramLM` over ``tokenizer``'s tokens, any other
    folder a trained ``lm`` checkpoint."""
    from .scorers.ngram import SETTINGS

    if Path(path).is_file() or (Path(path) / SETTINGS).is_file():
        return NGramLM.cached(path, tokenizer, device)
    return LanguageModel.cached(path, device)


def with_lm(options: dict, model) -> dict:
    """``options`` with an ``lm`` given as a path replaced by its loaded scorer over ``model``'s
    tokenizer (the commands and :func:`mmseq.inference.evaluate.evaluate` take paths)."""
    if isinstance(options.get("lm"), (str, os.PathLike)):
        options = {**options, "lm": load_lm(options["lm"], model.tokenizer, model.device)}
    return options
