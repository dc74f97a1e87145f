"""Scorers fused with the decoder in beam search, one class each behind :class:`Scorer`:
CTC prefix scores (:class:`CTCScorer`) and an external language model (:class:`LanguageModel`).
A new scorer is one new class; fuse it with ``model.generate(batch, scorers=[(scorer, weight)])``."""

from .base import Scorer
from .ctc import CTCScorer
from .lm import LanguageModel

__all__ = ["CTCScorer", "LanguageModel", "Scorer"]
