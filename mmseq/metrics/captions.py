"""Captions: COCO scores exactly as pycocoevalcap computes them (its PTB tokenizer, then its
``Bleu``, ``Meteor``, ``Rouge`` and ``Cider`` scorers), with a Python stand-in for the tokenizer
when Java is missing."""

from __future__ import annotations

import re
import subprocess
import tempfile
import warnings
from pathlib import Path

from ..errors import ConfigError, InputError
from .java import _pycocoevalcap_folder, _run_meteor, _run_spice, _spice_jars, java_problem

# Characters the PTB tokenizer treats as line breaks: left in a caption they would shift every
# later caption onto the wrong image (pycocoevalcap itself only replaces "\n").
_LINE_BREAKS = re.compile("[\r\n\x0b\x0c\u2028\u2029]")


def ptb_tokenize(captions: list[str]) -> list[str]:
    """pycocoevalcap's ``PTBTokenizer.tokenize`` for a flat list of captions, same output.

    Runs the Stanford PTB tokenizer jar that pycocoevalcap ships (``-preserveLines
    -lowerCase``) on a temporary file in a folder of our own, then drops the tokens in
    pycocoevalcap's ``PUNCTUATIONS`` list. As in pycocoevalcap, lowercasing happens before the
    punctuation filter, so ``-lrb-``/``-rrb-`` (from brackets) survive. Line breaks inside a
    caption become spaces.
    """
    from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS, STANFORD_CORENLP_3_4_1_JAR

    if not captions:
        return []
    jar = _pycocoevalcap_folder() / "tokenizer" / STANFORD_CORENLP_3_4_1_JAR
    sentences = "\n".join(_LINE_BREAKS.sub(" ", caption) for caption in captions)
    command = ["java", "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase"]
    with tempfile.TemporaryDirectory(prefix="mmseq-ptb-") as folder:
        path = Path(folder) / "captions.txt"
        path.write_bytes(sentences.encode())
        completed = subprocess.run(command + [str(path)], cwd=folder, capture_output=True)
    if completed.returncode != 0:
        raise RuntimeError(
            f"the PTB tokenizer ({jar}) exited with {completed.returncode}: "
            f"{completed.stderr.decode(errors='replace').strip()[-500:]}"
        )
    lines = completed.stdout.decode().split("\n")
    if len(lines) < len(captions):
        raise RuntimeError(f"the PTB tokenizer returned {len(lines)} lines for {len(captions)} captions")
    punctuation = set(PUNCTUATIONS)
    return [" ".join(word for word in line.rstrip().split(" ") if word not in punctuation) for line in lines[: len(captions)]]


# Python stand-in for the PTB tokenizer when Java is missing: the common cases of English captions
# (clitics, brackets, abbreviations, quotes, final periods) tokenize as the jar does; rare ones
# (``this?nothing``, ``!?``) may not, so scores can differ slightly from official ones.
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_ABBREVIATIONS = {"mr.", "mrs.", "ms.", "dr.", "st.", "jr.", "sr.", "vs.", "etc.", "inc.", "ltd.", "co.", "mt.", "ave.", "no."}
_CLITIC = re.compile(r"^(.+?)(n't|'s|'re|'ve|'ll|'d|'m|')$")
# The jar's rewrites of quotes, dashes and ellipses; quotes and dashes are then dropped as punctuation.
_PTB_CHARACTERS = str.maketrans(
    {'"': " `` ", "\u201c": " `` ", "\u201d": " `` ", "\u2018": "'", "\u2019": "'", "\u2014": " -- ", "\u2013": " -- ", "\u2026": " ... "}
)
_SPLIT_WORDS = {"cannot": "can not", "gonna": "gon na", "wanna": "wan na", "gotta": "got ta"}
_LEADING = "\"'`$#"
_TRAILING = "\"'`,;:!?%"


def _python_tokenize_chunk(chunk: str) -> list[str]:
    leading, trailing = [], []
    while chunk and chunk[0] in _LEADING and not (chunk[0] == "'" and chunk[1:2].isdigit()):
        leading.append(chunk[0])
        chunk = chunk[1:]
    while chunk:
        if re.search(r"[!?]{2,}$", chunk):  # the jar keeps a run such as "!?" as one token
            run = re.search(r"[!?]+$", chunk).group()
            trailing.insert(0, run)
            chunk = chunk[: -len(run)]
        elif chunk.endswith("..."):
            trailing.insert(0, "...")
            chunk = chunk[:-3]
        elif chunk[-1] in _TRAILING and not _CLITIC.match(chunk):
            trailing.insert(0, chunk[-1])
            chunk = chunk[:-1]
        elif chunk[-1] == "." and chunk not in _ABBREVIATIONS and not re.fullmatch(r"(?:[a-z]\.)+", chunk):
            trailing.insert(0, ".")
            chunk = chunk[:-1]
        else:
            break
    middle = []
    for piece in re.split(r"(?<=\D)(/)(?=\D)|([,;](?!\d))|((?<!\d):(?!\d))", chunk):
        if not piece:
            continue
        piece = _SPLIT_WORDS.get(piece, piece)
        clitic = _CLITIC.match(piece)
        if clitic and not piece.startswith("'"):
            middle.extend(clitic.groups())
        else:
            middle.extend(piece.split())
    return leading + middle + trailing


def python_tokenize(captions: list[str]) -> list[str]:
    """An approximation of :func:`ptb_tokenize` in pure Python, used when Java is missing.

    Lowercases, turns brackets into ``-lrb-``-style tokens, splits off punctuation, ``$ # %``
    and clitics (``do n't``, ``dog 's``, ``they 're``), keeps abbreviations (``u.s.``,
    ``st.``), numbers (``3.5``, ``12:30``, ``1/2``) and hyphenated words whole, then drops the
    same punctuation tokens as pycocoevalcap.
    """
    from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS

    punctuation = set(PUNCTUATIONS)
    tokenized = []
    for caption in captions:
        text = caption.lower()
        text = text.translate(_PTB_CHARACTERS)
        for bracket, token in _BRACKETS.items():
            text = text.replace(bracket, f" {token} ")
        tokens = [token for chunk in text.split() for token in _python_tokenize_chunk(chunk)]
        tokenized.append(" ".join(token for token in tokens if token not in punctuation))
    return tokenized


def _check_pairs(references: list[list[str]], hypotheses: list[str]) -> None:
    """:class:`InputError` unless there is one hypothesis and a non-empty list of references per image."""
    if len(references) != len(hypotheses):
        raise InputError(
            f"caption metrics need one hypothesis per image: got {len(references)} reference lists "
            f"and {len(hypotheses)} hypotheses"
        )
    if not hypotheses:
        raise InputError("caption metrics need at least one image")
    for index, captions in enumerate(references):
        if isinstance(captions, str) or not captions:
            raise InputError(f"image {index}: references must be a non-empty list of captions, got {captions!r}")


def _tokenizer(java: bool | None, spice: bool):
    """(tokenize, its name, the metrics skipped): the PTB tokenizer when Java runs, else a Python
    approximation without METEOR (with a warning); :class:`ConfigError` when Java is required."""
    problem = java_problem() if java is not False else "Java disabled by the caller (java=False)"
    if problem is not None and (java is True or spice):
        raise ConfigError(f"{'SPICE' if spice else 'java=True'} needs Java: {problem}")
    if spice:
        _spice_jars()  # fail before the slow work
    if problem is None:
        return ptb_tokenize, "ptb", []
    warnings.warn(
        f"METEOR is skipped and captions are tokenized by a Python approximation of the PTB tokenizer "
        f"(scores may differ slightly from official ones) because Java is not usable: {problem}",
        stacklevel=3,
    )
    return python_tokenize, "python", ["METEOR"]


def caption_metrics(
    references: list[list[str]], hypotheses: list[str], spice: bool = False, java: bool | None = None
) -> dict:
    """COCO caption scores, exactly as pycocoevalcap computes them.

    Args:
        references: for each image, its reference captions (at least one).
        hypotheses: one generated caption per image, in the same order.
        spice: also compute SPICE (needs Java and Stanford CoreNLP already downloaded into
            pycocoevalcap's ``spice/lib``; raises :class:`~mmseq.errors.ConfigError` otherwise).
        java: None finds out whether Java runs; False scores without it; True requires it.

    Returns:
        ``Bleu_1`` … ``Bleu_4``, ``METEOR``, ``ROUGE_L``, ``CIDEr`` (0-1 scale per
        pycocoevalcap: CIDEr 1.20 is the "120" of papers), ``SPICE`` when asked, plus
        ``tokenizer`` (``"ptb"``, or ``"python"`` for the approximation used without Java) and
        ``skipped`` (the metrics left out, e.g. ``["METEOR"]`` without Java, with a warning).
        CIDEr's document frequencies come from ``references``, so it depends on the image set.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    _check_pairs(references, hypotheses)
    tokenize, tokenizer, skipped = _tokenizer(java, spice)
    # Tokenize references and hypotheses separately, as COCOEvalCap does.
    flat_references = tokenize([caption for captions in references for caption in captions])
    gts, position = {}, 0
    for index, captions in enumerate(references):
        gts[index] = flat_references[position : position + len(captions)]
        position += len(captions)
    res = {index: [caption] for index, caption in enumerate(tokenize(list(hypotheses)))}

    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    scores = {f"Bleu_{order}": float(value) for order, value in enumerate(bleu, start=1)}
    if "METEOR" not in skipped:
        scores["METEOR"] = _run_meteor(gts, res)
    scores["ROUGE_L"] = float(Rouge().compute_score(gts, res)[0])
    scores["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    if spice:
        scores["SPICE"] = _run_spice(gts, res)
    scores["tokenizer"] = tokenizer
    scores["skipped"] = skipped
    return scores
