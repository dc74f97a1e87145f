"""Language models for shallow fusion in beam search.

A language model is trained by the shared trainer as task ``"lm"`` (:mod:`mmseq.tasks.lm`: text
manifests, each line's ``text``) with the ``"null"`` encoder (:mod:`mmseq.encoders.null`): the
ordinary text decoder over one constant frame, a decoder-only Transformer LM. Train it with the
recipe's tokenizer (so that its ids match the speech model's), e.g.
``mmseq train recipes/synth_speech/lm.yaml``. Its fusion scorer, :class:`LanguageModel`, lives
with the other scorers in :mod:`mmseq.scorers.lm`; this module keeps the name importable.
"""

from .scorers.lm import LanguageModel, _vocabulary  # noqa: F401
