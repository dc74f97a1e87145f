"""Speech: WER and CER with jiwer, after one normaliser (NFKC, one casing, punctuation dropped, apostrophes kept)."""

from __future__ import annotations

import unicodedata

from ..errors import InputError

# Apostrophe look-alikes that NFKC leaves alone but typists and ASR outputs use interchangeably.
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\u2032": "'"})


def _is_word_character(character: str) -> bool:
    # Letters, digits and combining marks (for scripts such as Devanagari whose vowel signs are marks).
    return unicodedata.category(character)[0] in "LNM"


def normalize_text(text: str) -> str:
    """The one text normalizer used for WER and CER.

    In order:

    1. Unicode NFKC (full-width letters become ASCII, ligatures split, ``\u2460`` becomes ``1``).
    2. Lowercase (``str.lower``).
    3. The apostrophe look-alikes ``\u2019 \u2018 \u02bc \u2032`` become ``'``.
    4. Every punctuation character (Unicode category ``P*``) becomes a space, except an
       apostrophe with a letter, digit or mark on both sides (``don't``, ``o'clock`` stay;
       ``'quoted'`` and ``dogs'`` lose theirs). Hyphens are punctuation: ``well-known`` becomes
       ``well known``. Unicode files ``% # & @ * /`` under punctuation (``Po``), so they go
       too; symbols (category ``S*``: ``$ + = < > ^ | ~``, currency, emoji) are kept.
    5. Runs of whitespace become one space; leading and trailing whitespace is removed.

    >>> normalize_text("  Hello, World!  It\u2019s 'fine'. ")
    "hello world it's fine"
    """
    text = unicodedata.normalize("NFKC", text).lower().translate(_APOSTROPHES)
    kept = []
    for index, character in enumerate(text):
        if unicodedata.category(character).startswith("P"):
            inside_word = (
                character == "'"
                and 0 < index < len(text) - 1
                and _is_word_character(text[index - 1])
                and _is_word_character(text[index + 1])
            )
            kept.append(character if inside_word else " ")
        else:
            kept.append(character)
    return " ".join("".join(kept).split())


def _prepare_pairs(references, hypotheses, normalize: bool) -> tuple[list[str], list[str]]:
    if len(references) != len(hypotheses):
        raise InputError(
            f"speech metrics need one hypothesis per reference: got {len(references)} references "
            f"and {len(hypotheses)} hypotheses"
        )
    clean = normalize_text if normalize else (lambda text: " ".join(text.split()))
    return [clean(text) for text in references], [clean(text) for text in hypotheses]


def _edit_counts(references: list[str], hypotheses: list[str], characters: bool) -> dict:
    """Corpus totals of substitutions, deletions, insertions and reference units (words or
    characters, spaces included) for already-cleaned text. Pairs whose reference is empty are
    counted here (every hypothesis unit is an insertion) because jiwer 3 raises on them."""
    import jiwer

    def units(text: str) -> list[str]:
        return list(text) if characters else text.split()

    totals = {"substitutions": 0, "deletions": 0, "insertions": 0, "reference_units": 0}
    kept = [(ref, hyp) for ref, hyp in zip(references, hypotheses) if units(ref)]
    totals["insertions"] = sum(len(units(hyp)) for ref, hyp in zip(references, hypotheses) if not units(ref))
    if kept:
        process = jiwer.process_characters if characters else jiwer.process_words
        output = process([ref for ref, _ in kept], [hyp for _, hyp in kept])
        totals["substitutions"] += output.substitutions
        totals["deletions"] += output.deletions
        totals["insertions"] += output.insertions
        totals["reference_units"] = sum(len(units(ref)) for ref, _ in kept)
    return totals


def _error_rate(counts: dict) -> float:
    errors = counts["substitutions"] + counts["deletions"] + counts["insertions"]
    # With no reference words at all, every inserted word counts as one full error (100 % each)
    # rather than dividing by zero.
    return 100.0 * errors / max(counts["reference_units"], 1)


def speech_metrics(references: list[str], hypotheses: list[str], normalize: bool = True) -> dict:
    """Word and character error rates of a corpus, as toolkits report them.

    Args:
        references: one reference transcript per utterance.
        hypotheses: one hypothesis per utterance, in the same order.
        normalize: pass both through :func:`normalize_text` first. When False, only runs of
            whitespace are collapsed.

    Returns:
        ``wer`` and ``cer`` in percent (float, may exceed 100), the word-level
        ``substitutions``, ``deletions``, ``insertions``, ``words`` (reference word count),
        ``characters`` (reference character count, single spaces between words included, as
        jiwer counts them for CER) and ``sentences`` (number of utterances). An empty reference
        never raises: all of its hypothesis words count as insertions; when the whole corpus
        has no reference words, each insertion counts as 100 %.

    >>> m = speech_metrics(["a b c"], ["a x c d"])
    >>> m["wer"], m["substitutions"], m["insertions"], m["words"]
    (66.66666666666667, 1, 1, 3)
    """
    references, hypotheses = _prepare_pairs(references, hypotheses, normalize)
    words = _edit_counts(references, hypotheses, characters=False)
    characters = _edit_counts(references, hypotheses, characters=True)
    return {
        "wer": _error_rate(words),
        "cer": _error_rate(characters),
        "substitutions": words["substitutions"],
        "deletions": words["deletions"],
        "insertions": words["insertions"],
        "words": words["reference_units"],
        "characters": characters["reference_units"],
        "sentences": len(references),
    }


def per_utterance_errors(reference: str, hypothesis: str, normalize: bool = True) -> dict:
    """Word errors of one utterance, for per-utterance hypothesis files.

    Returns the scored (normalized) ``reference`` and ``hypothesis`` text, ``words``,
    ``substitutions``, ``deletions``, ``insertions``, ``errors`` (their sum) and ``wer`` in
    percent, with the same conventions as :func:`speech_metrics`.
    """
    (reference,), (hypothesis,) = _prepare_pairs([reference], [hypothesis], normalize)
    counts = _edit_counts([reference], [hypothesis], characters=False)
    return {
        "reference": reference,
        "hypothesis": hypothesis,
        "words": counts["reference_units"],
        "substitutions": counts["substitutions"],
        "deletions": counts["deletions"],
        "insertions": counts["insertions"],
        "errors": counts["substitutions"] + counts["deletions"] + counts["insertions"],
        "wer": _error_rate(counts),
    }
