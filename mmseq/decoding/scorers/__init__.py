"""Scorers fused with the decoder in beam search, one class each behind :class:`Scorer`:
CTC prefix scores (:class:`CTCScorer`), an external language model (:class:`LanguageModel`, or a
token n-gram model from an ARPA file, :class:`NGramLM`) and a
bonus for listed words (:class:`ContextBoost`, contextual biasing by shallow fusion).
A new scorer is one new class; fuse it with ``model.generate(batch, scorers=[(scorer, weight)])``."""

from .base import Scorer
from .boost import ContextBoost
from .ctc import CTCScorer
from .lm import LanguageModel
from .ngram import NGramLM

__all__ = ["ContextBoost", "CTCScorer", "LanguageModel", "NGramLM", "Scorer"]
