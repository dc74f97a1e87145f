"""Contextual biasing: word error rates split by whether a word is on the utterance's biasing list
(Le et al. 2021, "Contextualized streaming end-to-end speech recognition with trie-based deep
biasing and shallow fusion", the metric of the LibriSpeech biasing lists).

Each reference and hypothesis is normalised (:func:`mmseq.metrics.speech.normalize_text`) and
aligned once (jiwer). A substitution or deletion is an error on its reference word; an insertion
is an error on the inserted word. **B-WER** is the errors on listed words over the listed words of
the references; **U-WER** the errors on the other words over the other words. A listed word is a
normalised word of the list (phrases count word by word).
"""

from __future__ import annotations

import jiwer

from ..errors import InputError
from .speech import normalize_text


def biased_word_errors(references: list[str], hypotheses: list[str], lists: list[list[str]]) -> dict:
    """``{"wer", "b_wer", "u_wer"}`` in percent, with the counts behind them (``biased_words``,
    ``biased_errors``, ``unbiased_words``, ``unbiased_errors``, ``words``, ``errors``)."""
    if not len(references) == len(hypotheses) == len(lists):
        raise InputError(f"biased WER needs one hypothesis and one list per reference: got {len(references)} "
                         f"references, {len(hypotheses)} hypotheses, {len(lists)} lists")
    counts = {"biased_words": 0, "biased_errors": 0, "unbiased_words": 0, "unbiased_errors": 0}
    for reference, hypothesis, listed in zip(references, hypotheses, lists):
        ref, hyp = normalize_text(reference).split(), normalize_text(hypothesis).split()
        biased = {word for phrase in listed for word in normalize_text(phrase).split()}
        for word in ref:
            counts["biased_words" if word in biased else "unbiased_words"] += 1
        for word in _error_words(ref, hyp):
            counts["biased_errors" if word in biased else "unbiased_errors"] += 1
    counts["words"] = counts["biased_words"] + counts["unbiased_words"]
    counts["errors"] = counts["biased_errors"] + counts["unbiased_errors"]

    def rate(errors, words):
        return 100.0 * counts[errors] / counts[words] if counts[words] else 0.0

    return {"wer": rate("errors", "words"), "b_wer": rate("biased_errors", "biased_words"),
            "u_wer": rate("unbiased_errors", "unbiased_words"), **counts}


def _error_words(ref: list[str], hyp: list[str]) -> list[str]:
    """The word each error of the alignment of ``hyp`` to ``ref`` falls on: the reference word of a
    substitution or deletion, the hypothesis word of an insertion."""
    if not ref:
        return list(hyp)
    if not hyp:
        return list(ref)
    out = []
    for chunk in jiwer.process_words(" ".join(ref), " ".join(hyp)).alignments[0]:
        if chunk.type in ("substitute", "delete"):
            out += ref[chunk.ref_start_idx:chunk.ref_end_idx]
        elif chunk.type == "insert":
            out += hyp[chunk.hyp_start_idx:chunk.hyp_end_idx]
    return out
