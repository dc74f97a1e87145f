import doctest
import os
import warnings
from pathlib import Path

import jiwer
import pytest

import mmseq.metrics as metrics
from mmseq.errors import ConfigError, InputError
from mmseq.metrics import (
    caption_metrics,
    normalize_text,
    per_utterance_errors,
    ptb_tokenize,
    python_tokenize,
    speech_metrics,
    text_metrics,
)

needs_java = pytest.mark.skipif(metrics.java_problem() is not None, reason=f"Java: {metrics.java_problem()}")


def test_docstring_examples():
    assert doctest.testmod(metrics).failed == 0


# ---------------------------------------------------------------------------------------------
# normalize_text
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Hello, World!", "hello world"),
        ("  many   spaces\there\n", "many spaces here"),
        ("Don't stop", "don't stop"),
        ("It\u2019s O\u2019Brien\u2019s", "it's o'brien's"),  # curly apostrophes become straight ones
        ("'quoted' and dogs' bones", "quoted and dogs bones"),  # apostrophes not inside a word go
        ("well-known e-mail", "well known e mail"),  # hyphens are punctuation
        ("\uff26\uff55\uff4c\uff4c width \ufb01ne", "full width fine"),  # NFKC
        ("Caf\u00e9 \u00c0 LA CR\u00c8ME.", "caf\u00e9 \u00e0 la cr\u00e8me"),
        ("$5 + 10% = fun & more", "$5 + 10 = fun more"),  # symbols are kept, % and & are punctuation
        ("\u00bfQu\u00e9? \u00a1S\u00ed! \u00abnon\u00bb \u2014 \u201cyes\u201d", "qu\u00e9 s\u00ed non yes"),
        ("\u0915\u094d\u092f\u093e'\u0939\u0948", "\u0915\u094d\u092f\u093e'\u0939\u0948"),  # marks count as word characters
        ("", ""),
        ("?!...", ""),
    ],
)
def test_normalize_text(text, expected):
    assert normalize_text(text) == expected


def test_normalize_text_is_idempotent():
    text = "  \u201cWell\u2014it\u2019s 'O.K.', isn't it?\u201d  "
    assert normalize_text(normalize_text(text)) == normalize_text(text)


# ---------------------------------------------------------------------------------------------
# speech_metrics and per_utterance_errors
# ---------------------------------------------------------------------------------------------


def test_speech_metrics_hand_counted():
    # the cat sat on the mat -> the cat sit on mat: sat->sit (S), second "the" dropped (D).
    # a b -> a b c: one insertion.
    result = speech_metrics(["the cat sat on the mat", "a b"], ["the cat sit on mat", "a b c"])
    assert result["substitutions"] == 1
    assert result["deletions"] == 1
    assert result["insertions"] == 1
    assert result["words"] == 8
    assert result["sentences"] == 2
    assert result["wer"] == pytest.approx(100 * 3 / 8)
    # characters: "the cat sat on the mat" (22) + "a b" (3) = 25 reference characters
    assert result["characters"] == 25


def test_speech_metrics_cer_counts_characters_with_spaces():
    result = speech_metrics(["abc", "ab cd"], ["abd", "ab d"])
    # abc->abd: 1 substitution; "ab cd"->"ab d": 1 deletion; 3 + 5 reference characters.
    assert result["characters"] == 8
    assert result["cer"] == pytest.approx(100 * 2 / 8)


def test_speech_metrics_matches_jiwer_on_nonempty_references():
    references = ["the quick brown fox", "jumps over the lazy dog", "hello there"]
    hypotheses = ["the quick brown box", "jumps the lazy dog today", ""]
    result = speech_metrics(references, hypotheses, normalize=False)
    assert result["wer"] == pytest.approx(100 * jiwer.wer(references, hypotheses))
    assert result["cer"] == pytest.approx(100 * jiwer.cer(references, hypotheses))


def test_speech_metrics_normalizes_by_default():
    assert speech_metrics(["Hello, World!"], ["hello world"])["wer"] == 0.0
    raw = speech_metrics(["Hello, World!"], ["hello world"], normalize=False)
    assert raw["substitutions"] == 2 and raw["wer"] == 100.0


def test_speech_metrics_empty_reference_counts_insertions():
    result = speech_metrics(["", "a b"], ["x y z", "a b"])
    assert result["insertions"] == 3 and result["words"] == 2
    assert result["wer"] == pytest.approx(150.0)
    assert result["cer"] == pytest.approx(100 * 5 / 3)  # "x y z" is 5 inserted characters
    # A reference that normalizes to nothing is empty too.
    assert speech_metrics(["?!"], ["oh"])["insertions"] == 1


def test_speech_metrics_empty_hypothesis_counts_deletions():
    result = speech_metrics(["a b c"], [""])
    assert result["deletions"] == 3 and result["wer"] == 100.0


def test_speech_metrics_corner_cases_never_crash():
    assert speech_metrics([], [])["wer"] == 0.0
    assert speech_metrics([""], [""])["wer"] == 0.0
    only_insertions = speech_metrics([""], ["a b"])
    assert only_insertions["words"] == 0 and only_insertions["wer"] == 200.0


def test_speech_metrics_rejects_mismatched_lists():
    with pytest.raises(InputError, match="one hypothesis per reference"):
        speech_metrics(["a", "b"], ["a"])


def test_per_utterance_errors():
    result = per_utterance_errors("The cat, sat.", "the bat sat down")
    assert result == {
        "reference": "the cat sat",
        "hypothesis": "the bat sat down",
        "words": 3,
        "substitutions": 1,
        "deletions": 0,
        "insertions": 1,
        "errors": 2,
        "wer": pytest.approx(200 / 3),
    }
    assert per_utterance_errors("", "extra words")["insertions"] == 2


# ---------------------------------------------------------------------------------------------
# text_metrics
# ---------------------------------------------------------------------------------------------


def test_text_metrics():
    perfect = text_metrics(["the cat sat on the mat"], ["the cat sat on the mat"])
    assert perfect == {"bleu": pytest.approx(100.0), "chrf": pytest.approx(100.0)}
    partial = text_metrics(["the cat sat on the mat", "hello world"], ["the cat sat on a mat", "hello there"])
    assert 0 < partial["bleu"] < 100 and 0 < partial["chrf"] < 100
    with pytest.raises(InputError):
        text_metrics(["a"], [])
    with pytest.raises(InputError, match="at least one"):
        text_metrics([], [])
    assert text_metrics(["a b"], [""])["bleu"] == 0.0


# ---------------------------------------------------------------------------------------------
# caption_metrics
# ---------------------------------------------------------------------------------------------

REFERENCES = [
    ["A man riding a wave on top of a surfboard.", "A surfer rides a large wave.", "Man surfing on a big wave!"],
    ["Two dogs playing in the snow.", "A couple of dogs run through snow.", "Dogs (brown) play outside."],
    ["A plate of food with broccoli.", "A dish of pasta and broccoli on a table.", "Food on a white plate."],
    ["A red bus on a city street.", "A double decker bus drives down the road.", "The bus is red."],
]
HYPOTHESES = ["a man riding a wave on a surfboard", "two dogs play in the snow", "a plate of pasta", "a bus on the street"]
CAPTION_KEYS = ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"]


def _pycocoevalcap_folder() -> Path:
    import pycocoevalcap.tokenizer.ptbtokenizer as module

    return Path(module.__file__).resolve().parent.parent


def _files_under(folder: Path) -> set:
    return {path for path in folder.rglob("*") if "__pycache__" not in path.parts}


@pytest.fixture(scope="module")
def java_scores():
    """One caption_metrics call with Java (its METEOR JVM takes a few seconds), and the files
    that were in pycocoevalcap's folder before and after it."""
    if metrics.java_problem() is not None:
        pytest.skip(f"Java: {metrics.java_problem()}")
    before = _files_under(_pycocoevalcap_folder())
    scores = caption_metrics(REFERENCES, HYPOTHESES)
    return scores, before, _files_under(_pycocoevalcap_folder())


def _direct_pycocoevalcap(with_meteor: bool) -> dict:
    """The official way, minus COCOEvalCap.evaluate (which would download SPICE's models)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    if not os.access(_pycocoevalcap_folder() / "tokenizer", os.W_OK):
        pytest.skip("pycocoevalcap's PTBTokenizer writes inside its own read-only folder")
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": c} for c in refs] for i, refs in enumerate(REFERENCES)})
    res = tokenizer.tokenize({i: [{"caption": h}] for i, h in enumerate(HYPOTHESES)})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    scores = {f"Bleu_{n}": value for n, value in enumerate(bleu, start=1)}
    scores["ROUGE_L"] = Rouge().compute_score(gts, res)[0]
    scores["CIDEr"] = Cider().compute_score(gts, res)[0]
    if with_meteor:
        scores["METEOR"] = Meteor().compute_score(gts, res)[0]
    return scores


def test_caption_metrics_equal_direct_pycocoevalcap(java_scores):
    scores, _, _ = java_scores
    assert list(scores) == CAPTION_KEYS + ["tokenizer", "skipped"]
    assert scores["tokenizer"] == "ptb" and scores["skipped"] == []
    assert 0 < scores["METEOR"] < 1
    expected = _direct_pycocoevalcap(with_meteor=False)
    for key, value in expected.items():
        assert scores[key] == value, key
    assert all(type(scores[key]) is float for key in CAPTION_KEYS)


@pytest.mark.slow
def test_caption_metrics_meteor_equals_direct_pycocoevalcap(java_scores):
    scores, _, _ = java_scores
    assert scores["METEOR"] == _direct_pycocoevalcap(with_meteor=True)["METEOR"]


def test_caption_metrics_write_nothing_in_site_packages(java_scores):
    _, before, after = java_scores
    assert after == before


@needs_java
def test_ptb_tokenize_equals_pycocoevalcap_tokenizer():
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    if not os.access(_pycocoevalcap_folder() / "tokenizer", os.W_OK):
        pytest.skip("pycocoevalcap's PTBTokenizer writes inside its own read-only folder")
    captions = [caption for refs in REFERENCES for caption in refs] + [
        'He said "stop" (twice) -- then left...',
        "I can't; it's the U.S. team's 3.5-year-old dog!",
        "",
        "Caf\u00e9 na\u00efve \u201cquoted\u201d text",
        "a multi\nline caption",
    ]
    official = PTBTokenizer().tokenize({0: [{"caption": caption} for caption in captions]})[0]
    assert ptb_tokenize(captions) == official
    assert ptb_tokenize(["(a)"]) == ["-lrb- a -rrb-"]  # pycocoevalcap's lowercase-then-filter quirk
    assert ptb_tokenize([]) == []


@needs_java
def test_ptb_tokenize_keeps_captions_aligned_across_odd_line_breaks():
    # The jar breaks lines at \r, \v, \f and U+2028; pycocoevalcap would shift later captions.
    assert ptb_tokenize(["one\rtwo", "three\u2028four", "five"]) == ["one two", "three four", "five"]


TYPICAL_CAPTIONS = [
    "A man riding a wave on top of a surfboard.",
    "Two dogs playing in the snow, one is brown.",
    "A woman's purse sits on a table; it's red!",
    '"Stop" sign at the corner of 5th St. and Main.',
    "The cat (a tabby) sleeps on the sofa...",
    "Kids' toys are scattered on the floor.",
    "A 3.5-year-old boy eats a hot-dog at 12:30 p.m.",
    "People are walking in the U.S. capitol - it's big.",
    "I can't believe it won't fit, cannot see.",
    "A plate with $5 pizza & 50% off!?",
    "They're here and we've got the I'd and you'll and I'm.",
    "A sign reads 'no parking' today.",
    "an e-mail address: foo@bar.com -- or not",
    "Mr. Smith and Dr. Jones went to St. Louis.",
    "The dog's/cat's bowl, a 1/2 cup",
    "A group of people gonna wanna go.",
    "tennis player #1 at 100 mph",
    "A \u201cfancy\u201d cake \u2014 it\u2019s pink\u2026",
]


def test_python_tokenize_examples():
    assert python_tokenize(["I can't see the U.S. flag (red)."]) == ["i ca n't see the u.s. flag -lrb- red -rrb-"]
    assert python_tokenize(['"Hello," she said.']) == ["hello she said"]


@needs_java
def test_python_tokenize_matches_ptb_on_typical_captions():
    assert python_tokenize(TYPICAL_CAPTIONS) == ptb_tokenize(TYPICAL_CAPTIONS)


def test_caption_metrics_without_java(monkeypatch):
    monkeypatch.setattr(metrics.captions, "java_problem", lambda: "no 'java' on PATH")
    monkeypatch.setattr(metrics.captions, "ptb_tokenize", lambda captions: pytest.fail("ptb_tokenize needs Java"))
    with pytest.warns(UserWarning, match="METEOR is skipped"):
        scores = caption_metrics(REFERENCES, HYPOTHESES)
    assert "METEOR" not in scores
    assert scores["skipped"] == ["METEOR"] and scores["tokenizer"] == "python"
    for key in ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"]:
        assert 0 < scores[key] < 10
    # java=True insists on Java; SPICE needs it too.
    with pytest.raises(ConfigError, match="no 'java' on PATH"):
        caption_metrics(REFERENCES, HYPOTHESES, java=True)
    with pytest.raises(ConfigError, match="SPICE"):
        caption_metrics(REFERENCES, HYPOTHESES, spice=True)


def test_caption_metrics_without_java_match_ptb_scores_on_typical_captions(java_scores):
    # The Python tokenizer agrees with the jar on these captions, so the scores agree too.
    scores, _, _ = java_scores
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        python_scores = caption_metrics(REFERENCES, HYPOTHESES, java=False)
    for key in ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"]:
        assert python_scores[key] == pytest.approx(scores[key], rel=1e-12), key


@needs_java
def test_caption_metrics_spice_without_its_models_is_a_clear_error():
    lib = _pycocoevalcap_folder() / "spice" / "lib" / "stanford-corenlp-3.6.0.jar"
    if lib.exists():
        pytest.skip("Stanford CoreNLP for SPICE is installed here")
    with pytest.raises(ConfigError, match="stanford-corenlp-3.6.0"):
        caption_metrics(REFERENCES, HYPOTHESES, spice=True, java=True)


def test_caption_metrics_reject_bad_input():
    with pytest.raises(InputError, match="one hypothesis per image"):
        caption_metrics(REFERENCES, HYPOTHESES[:2], java=False)
    with pytest.raises(InputError, match="image 1"):
        caption_metrics([["a cat"], []], ["a cat", "a dog"], java=False)
    with pytest.raises(InputError, match="image 0"):
        caption_metrics(["a cat"], ["a cat"], java=False)  # a string where a list was expected
    with pytest.raises(InputError, match="at least one image"):
        caption_metrics([], [], java=False)
