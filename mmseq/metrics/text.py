"""Text: corpus BLEU and chrF with sacrebleu."""

from __future__ import annotations

from ..errors import InputError


def text_metrics(references: list[str], hypotheses: list[str]) -> dict:
    """Corpus BLEU and chrF from sacrebleu with its default settings (13a tokenization,
    one reference per hypothesis), both on a 0-100 scale: ``{"bleu": ..., "chrf": ...}``."""
    import sacrebleu

    if len(references) != len(hypotheses):
        raise InputError(
            f"text metrics need one hypothesis per reference: got {len(references)} references "
            f"and {len(hypotheses)} hypotheses"
        )
    if not hypotheses:
        raise InputError("text metrics need at least one sentence")
    return {
        "bleu": float(sacrebleu.corpus_bleu(hypotheses, [references]).score),
        "chrf": float(sacrebleu.corpus_chrf(hypotheses, [references]).score),
    }
