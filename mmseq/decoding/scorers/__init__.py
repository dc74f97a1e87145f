"""Scorers fused with the decoder in beam search, one class each behind :class:`Scorer`:
CTC prefix scores (:class:`CTCScorer`), a bonus for listed words (:class:`ContextBoost`,
contextual biasing by shallow fusion), and the external language models, which load from files and
so live in their own modules, imported where needed (the model's own imports never reach them):
a trained LM (:class:`mmseq.decoding.scorers.lm.LanguageModel`) and a token n-gram model
(:class:`mmseq.decoding.scorers.ngram.NGramLM`); :func:`mmseq.decoding.lm.load_lm` reads either.
A new scorer is one new class; fuse it with ``model.generate(batch, scorers=[(scorer, weight)])``."""

from .base import Scorer
from .boost import ContextBoost
from .ctc import CTCScorer

__all__ = ["ContextBoost", "CTCScorer", "Scorer"]
