"""Scores for every task behind one interface: jiwer for speech, pycocoevalcap for captions,
sacrebleu for text. The functions are pure: lists of strings in, a dict of plain floats and ints
out, ready for ``metrics.json``. A :class:`Metric` is a score's name and direction, which a task
declares for each score it reports and the trainer uses to keep the best checkpoints.

Caption scores are computed exactly as pycocoevalcap computes them (its PTB tokenizer, then its
``Bleu``, ``Meteor``, ``Rouge`` and ``Cider`` scorers), with three changes that do not alter a
score: the tokenizer's temporary file lives in a folder of our own instead of inside
site-packages, the scorers are called directly (``COCOEvalCap.evaluate`` would download Stanford
CoreNLP for SPICE), and METEOR's Java process is started once per call and always stopped.

>>> speech_metrics(["the cat sat"], ["the cat sat down"])["insertions"]
1
"""

from dataclasses import dataclass

from .captions import caption_metrics, ptb_tokenize, python_tokenize
from .java import java_problem
from .speech import normalize_text, per_utterance_errors, speech_metrics
from .text import text_metrics


@dataclass(frozen=True)
class Metric:
    """A score's name and whether higher is better (``wer``: no; ``CIDEr``: yes)."""

    name: str
    higher_is_better: bool


LOSS, ACCURACY = Metric("loss", False), Metric("accuracy", True)

__all__ = ["ACCURACY", "LOSS", "Metric", "caption_metrics", "java_problem", "normalize_text", "per_utterance_errors",
           "ptb_tokenize", "python_tokenize", "speech_metrics", "text_metrics"]
