"""The scoring helpers of recipes/synth_speech/score.py: alignment and the in-vocabulary / OOV breakdown."""

import importlib.util
from pathlib import Path

import pytest

SCORE = Path(__file__).resolve().parents[1] / "recipes" / "synth_speech" / "score.py"


@pytest.fixture(scope="module")
def score():
    spec = importlib.util.spec_from_file_location("synth_score", SCORE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("reference, hypothesis, correct, insertions", [
    ("a b c", "a b c", [True, True, True], 0),
    ("a b c", "a x c d", [True, False, True], 1),
    ("a b c", "a c", [True, False, True], 0),
    ("a b", "", [False, False], 0),
    ("", "x y", [], 2),
    ("the cat sat", "the the cat sat", [True, True, True], 1),
])
def test_align(score, reference, hypothesis, correct, insertions):
    assert score.align(reference.split(), hypothesis.split()) == (correct, insertions)


def test_alignment_errors_match_the_library_wer(score):
    from mmseq.metrics import speech_metrics
    pairs = [("the quick brown fox", "the quack brown box jumps"), ("over the lazy dog", "over lazy dogs"),
             ("a b c d e", "e d c b a")]
    for reference, hypothesis in pairs:
        correct, insertions = score.align(reference.split(), hypothesis.split())
        errors = correct.count(False) + insertions
        assert errors == round(speech_metrics([reference], [hypothesis])["wer"] * len(reference.split()) / 100)


def test_vocabulary_breakdown(score):
    vocabulary = {"the", "dog", "ran", "home"}
    result = score.vocabulary_breakdown(["the dog ran home", "the quokka ran"], ["the dog ran home", "the walker ran far"],
                                        vocabulary)
    assert result["oov_rate"] == pytest.approx(100 / 7)               # "quokka" of 7 reference words
    assert result["oov_word_error"] == 100.0 and result["iv_word_error"] == 0.0
    assert result["insertions_per_word"] == pytest.approx(100 / 7)    # "far"
