"""Scores for every task behind one interface: jiwer for speech, pycocoevalcap for captions,
sacrebleu for text. All functions are pure: lists of strings in, a dict of plain floats and ints
out, ready for ``metrics.json``.

Caption scores are computed exactly as pycocoevalcap computes them (its PTB tokenizer, then its
``Bleu``, ``Meteor``, ``Rouge`` and ``Cider`` scorers), with three changes that do not alter a
score: the tokenizer's temporary file lives in a folder of our own instead of inside
site-packages, the scorers are called directly (``COCOEvalCap.evaluate`` would download Stanford
CoreNLP for SPICE), and METEOR's Java process is started once per call and always stopped.

>>> speech_metrics(["the cat sat"], ["the cat sat down"])["insertions"]
1
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import tempfile
import unicodedata
import warnings
from pathlib import Path

import numpy as np

from .errors import ConfigError, InputError

# ---------------------------------------------------------------------------------------------
# Speech: WER and CER
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# Text: BLEU and chrF
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Captions: pycocoevalcap
# ---------------------------------------------------------------------------------------------

# Characters the PTB tokenizer treats as line breaks: left in a caption they would shift every
# later caption onto the wrong image (pycocoevalcap itself only replaces "\n").
_LINE_BREAKS = re.compile("[\r\n\x0b\x0c\u2028\u2029]")


@functools.lru_cache(maxsize=1)
def java_problem() -> str | None:
    """Why Java cannot run here (a one-line reason), or None when ``java -version`` works."""
    java = shutil.which("java")
    if java is None:
        return "no 'java' on PATH (install a Java runtime, e.g. 'apt-get install default-jre-headless')"
    try:
        completed = subprocess.run([java, "-version"], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"'{java} -version' failed: {error}"
    if completed.returncode != 0:
        message = completed.stderr.decode(errors="replace").strip().splitlines()
        return f"'{java} -version' exited with {completed.returncode}: {message[-1] if message else ''}"
    return None


def _pycocoevalcap_folder() -> Path:
    from pycocoevalcap.tokenizer import ptbtokenizer

    return Path(ptbtokenizer.__file__).resolve().parent.parent


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


def _run_meteor(gts: dict, res: dict) -> float:
    """pycocoevalcap's ``Meteor().compute_score`` (one JVM for the whole call, always stopped).
    Its ``_score`` is broken on Python 3; ``compute_score`` is the working path."""
    from pycocoevalcap.meteor.meteor import Meteor

    meteor = Meteor()
    process = meteor.meteor_p
    try:
        score, _ = meteor.compute_score(gts, res)
        return float(score)
    except (ValueError, OSError) as error:
        # A crashed JVM shows up as "could not convert string to float" or a broken pipe.
        process.kill()
        process.wait()
        stderr = process.stderr.read().decode(errors="replace").strip()[-500:]
        raise RuntimeError(f"METEOR's Java process failed ({error}); its stderr: {stderr}") from error
    finally:
        process.stdin.close()
        process.kill()
        process.wait()
        process.stderr.close()
        process.stdout.close()


def _spice_jars() -> list[Path]:
    """SPICE's jar and the Stanford CoreNLP 3.6.0 jars it needs in its ``lib`` (which
    pycocoevalcap downloads on first use, and we never do)."""
    spice_folder = _pycocoevalcap_folder() / "spice"
    needed = [spice_folder / "spice-1.0.jar"] + [
        spice_folder / "lib" / name for name in ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
    ]
    missing = [str(path) for path in needed if not path.exists()]
    if missing:
        raise ConfigError(
            f"SPICE was asked for but needs {', '.join(missing)}; mmseq downloads nothing at run time. "
            "Run 'python -m pycocoevalcap.spice.get_stanford_models' once (about 385 MB), or score without SPICE"
        )
    return needed


def _run_spice(gts: dict, res: dict) -> float:
    """pycocoevalcap's ``Spice().compute_score``, run from a temporary folder of our own."""
    jar = _spice_jars()[0]
    images = sorted(gts)
    with tempfile.TemporaryDirectory(prefix="mmseq-spice-") as folder:
        input_path, output_path = Path(folder) / "input.json", Path(folder) / "output.json"
        input_path.write_text(json.dumps([{"image_id": i, "test": res[i][0], "refs": gts[i]} for i in images]))
        command = ["java", "-jar", "-Xmx8G", str(jar), str(input_path), "-out", str(output_path), "-subset", "-silent"]
        completed = subprocess.run(command, cwd=folder, capture_output=True)
        if completed.returncode != 0:
            raise RuntimeError(f"SPICE exited with {completed.returncode}: {completed.stderr.decode(errors='replace')[-500:]}")
        results = json.loads(output_path.read_text())

    def as_float(value) -> float:
        try:
            return float(value)
        except (TypeError, ValueError):
            return float("nan")

    return float(np.mean([as_float(item["scores"]["All"]["f"]) for item in results]))


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

    problem = java_problem() if java is not False else "Java disabled by the caller (java=False)"
    if problem is not None and (java is True or spice):
        raise ConfigError(f"{'SPICE' if spice else 'java=True'} needs Java: {problem}")
    if spice:
        _spice_jars()  # fail before the slow work
    skipped = []
    if problem is None:
        tokenize, tokenizer = ptb_tokenize, "ptb"
    else:
        tokenize, tokenizer = python_tokenize, "python"
        skipped.append("METEOR")
        warnings.warn(
            f"METEOR is skipped and captions are tokenized by a Python approximation of the PTB tokenizer "
            f"(scores may differ slightly from official ones) because Java is not usable: {problem}",
            stacklevel=2,
        )

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
