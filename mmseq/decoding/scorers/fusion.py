"""The ``(scorer, weight)`` pairs of one search, from the decoding options: what
:func:`mmseq.decoding.generate.generate` hands the search."""

from __future__ import annotations

from .boost import ContextBoost
from .ctc import CTCScorer


def fused_scorers(tokenizer, options, ctc_log_probs=None, lm=None, scorers=(), boost=None) -> list:
    """CTC prefix scores of ``ctc_log_probs`` with ``options.ctc_weight``, the language model
    ``lm`` with ``options.lm_weight``, the listed words ``boost`` (one list of words or phrases
    per input of the search, or None) as a :class:`ContextBoost` with ``options.boost_weight``
    when some input has words, then ``scorers`` (pairs given by the caller); those of weight 0 are
    left out."""
    pairs = []
    if ctc_log_probs is not None and options.ctc_weight > 0:
        pairs.append((CTCScorer(ctc_log_probs, tokenizer), options.ctc_weight))
    if lm is not None and options.lm_weight > 0:
        pairs.append((lm, options.lm_weight))
    if boost is not None and options.boost_weight > 0 and any(boost):
        pairs.append((ContextBoost(tokenizer, [words or [] for words in boost]), options.boost_weight))
    return pairs + [(scorer, float(weight)) for scorer, weight in scorers if weight]
