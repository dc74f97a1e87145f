import doctest
import json
import math
import random
from collections import defaultdict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mmseq.metrics.cider as cider
from mmseq.metrics.cider import (
    CiderD,
    document_frequencies,
    load_document_frequencies,
    ngram_counts,
    references_fingerprint,
    save_document_frequencies,
)
from mmseq.errors import InputError

# ---------------------------------------------------------------------------------------------
# A straightforward port of coco-caption's pyciderevalcap/ciderD/ciderD_scorer.py (as used by
# self-critical.pytorch), with its document frequencies and log(num_images) given from outside
# as in its precomputed-df mode. Kept deliberately close to the original, loops and all.
# ---------------------------------------------------------------------------------------------


def reference_precook(sentence, n=4):
    words = sentence.split()
    counts = defaultdict(int)
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            counts[tuple(words[i : i + k])] += 1
    return counts


def reference_cider_d(candidate, references, document_frequency, ref_len, n=4, sigma=6.0):
    document_frequency = defaultdict(float, document_frequency)

    def counts2vec(cnts):
        vec = [defaultdict(float) for _ in range(n)]
        length = 0
        norm = [0.0 for _ in range(n)]
        for ngram, term_freq in cnts.items():
            df = np.log(max(1.0, document_frequency[ngram]))
            order = len(ngram) - 1
            vec[order][ngram] = float(term_freq) * (ref_len - df)
            norm[order] += pow(vec[order][ngram], 2)
            if order == 1:
                length += term_freq
        norm = [np.sqrt(value) for value in norm]
        return vec, norm, length

    def sim(vec_hyp, vec_ref, norm_hyp, norm_ref, length_hyp, length_ref):
        delta = float(length_hyp - length_ref)
        val = np.array([0.0 for _ in range(n)])
        for order in range(n):
            for ngram, count in vec_hyp[order].items():
                val[order] += min(vec_hyp[order][ngram], vec_ref[order][ngram]) * vec_ref[order][ngram]
            if (norm_hyp[order] != 0) and (norm_ref[order] != 0):
                val[order] /= norm_hyp[order] * norm_ref[order]
            assert not math.isnan(val[order])
            val[order] *= np.e ** (-(delta**2) / (2 * sigma**2))
        return val

    vec, norm, length = counts2vec(reference_precook(candidate))
    score = np.array([0.0 for _ in range(n)])
    for ref in references:
        vec_ref, norm_ref, length_ref = counts2vec(reference_precook(ref))
        score += sim(vec, vec_ref, norm, norm_ref, length, length_ref)
    score_avg = np.mean(score)
    score_avg /= len(references)
    score_avg *= 10.0
    return score_avg


def reference_document_frequency(references):
    """ciderD_scorer.compute_doc_freq: per n-gram, the number of images whose references hold it."""
    frequency = defaultdict(float)
    for refs in references:
        for ngram in set(ngram for ref in refs for ngram in reference_precook(ref)):
            frequency[ngram] += 1
    return frequency


# ---------------------------------------------------------------------------------------------
# Synthetic captions
# ---------------------------------------------------------------------------------------------

WORDS = "a an the dog dogs cat man woman red blue small big runs sits on in near grass street table with of".split()


def random_caption(rng, low=0, high=12):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


@pytest.fixture(scope="module")
def training():
    rng = random.Random(0)
    references = [[random_caption(rng, 1) for _ in range(rng.randint(1, 5))] for _ in range(200)]
    return references, CiderD(references)


def test_docstring_examples():
    assert doctest.testmod(cider).failed == 0


def test_ngram_counts():
    counts = ngram_counts(["a", "dog", "a", "dog"])
    assert counts[("a",)] == 2 and counts[("a", "dog")] == 2 and counts[("dog", "a")] == 1
    assert counts[("a", "dog", "a", "dog")] == 1 and len(counts) == 7
    assert ngram_counts([]) == {}


def test_document_frequencies_count_images_not_occurrences():
    frequency = document_frequencies([[["a", "dog"], ["a", "dog", "a"]], [["a", "cat"]]])
    assert frequency[("a",)] == 2  # in both images, though three times in the first
    assert frequency[("a", "dog")] == 1 and frequency[("dog", "a")] == 1 and frequency[("cat",)] == 1


def test_reward_equals_reference_cider_d_with_training_frequencies(training):
    references, scorer = training
    expected_df = reference_document_frequency(references)
    assert scorer.document_frequency == expected_df
    rng = random.Random(1)
    indices = [rng.randrange(len(references)) for _ in range(250)]
    # Candidates: random, empty, copies of a reference, repeated n-grams (tests clipping).
    candidates = [random_caption(rng) for _ in range(247)] + ["", references[indices[248]][0], "dog dog dog dog dog dog"]
    rewards = scorer.reward(candidates, indices)
    assert rewards.shape == (250,) and rewards.dtype == np.float64
    ref_len = np.log(float(len(references)))
    expected = [reference_cider_d(c, references[i], expected_df, ref_len) for c, i in zip(candidates, indices)]
    np.testing.assert_allclose(rewards, expected, rtol=1e-12, atol=1e-12)
    assert rewards[247] == 0.0 and rewards[248] > rewards[:247].max()


@settings(max_examples=60, deadline=None)
@given(
    candidate=st.lists(st.sampled_from(WORDS), max_size=15),
    references=st.lists(st.lists(st.sampled_from(WORDS), max_size=15), min_size=1, max_size=6),
    training_size=st.integers(1, 4),
)
def test_reward_equals_reference_cider_d_on_generated_captions(candidate, references, training_size):
    rng = random.Random(len(candidate))
    training = [[" ".join(words) for words in references]]
    training += [[random_caption(rng) for _ in range(3)] for _ in range(training_size)]
    scorer = CiderD(training)
    expected = reference_cider_d(
        " ".join(candidate), training[0], reference_document_frequency(training), np.log(float(len(training)))
    )
    assert scorer.reward([" ".join(candidate)], [0])[0] == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_reward_equals_pycocoevalcap_cider_with_frequencies_from_the_scored_set():
    # pycocoevalcap's Cider is CIDEr-D with df taken from the references it scores: with the
    # scored set as "training" set, both must agree image by image.
    from pycocoevalcap.cider.cider import Cider

    rng = random.Random(2)
    references = [[random_caption(rng, 1) for _ in range(5)] for _ in range(40)]
    hypotheses = [random_caption(rng, 1) for _ in range(40)]
    hypotheses[0] = references[0][1]
    mean, per_image = Cider().compute_score({i: r for i, r in enumerate(references)}, {i: [h] for i, h in enumerate(hypotheses)})
    rewards = CiderD(references).reward(hypotheses, range(40))
    np.testing.assert_allclose(rewards, per_image, rtol=1e-12, atol=1e-12)
    assert rewards.mean() == pytest.approx(mean, rel=1e-12)


def test_clipping_and_length_penalty_lower_the_score():
    references = [["a dog runs on the grass", "a dog on grass"], ["a cat sits", "the cat"], ["red car", "a blue car"]]
    scorer = CiderD(references)
    exact, repeated, longer = scorer.reward(
        ["a dog runs on the grass", "a dog runs on the grass grass grass", "a dog runs on the grass near the big old house"],
        [0, 0, 0],
    )
    assert exact > repeated > 0 and exact > longer > 0


def test_reward_tokenization_lowercases_and_splits_on_whitespace(training):
    _, scorer = training
    words = "The  DOG runs\ton the Grass"
    assert scorer.reward([words], [3])[0] == scorer.reward(["the dog runs on the grass"], [3])[0]


def test_reward_accepts_array_indices_and_is_deterministic(training):
    _, scorer = training
    candidates = ["a dog runs", "the red cat sits on a table"]
    first = scorer.reward(candidates, np.array([5, 7]))
    np.testing.assert_array_equal(first, scorer.reward(candidates, [5, 7]))


def test_reward_rejects_bad_input(training):
    _, scorer = training
    with pytest.raises(InputError, match="2 candidates but 1"):
        scorer.reward(["a", "b"], [0])
    with pytest.raises(InputError, match="outside the 200 training images"):
        scorer.reward(["a"], [200])
    with pytest.raises(InputError):
        CiderD([])


def test_document_frequency_cache_round_trips(tmp_path, monkeypatch):
    rng = random.Random(3)
    references = [[random_caption(rng, 1) for _ in range(5)] for _ in range(30)]
    path = tmp_path / "cider_df.json"
    first = CiderD(references, cache_path=path)
    payload = json.loads(path.read_text())  # plain JSON, no pickle
    assert payload["num_images"] == 30 and payload["format"] == cider.CACHE_FORMAT

    frequency, num_images, fingerprint = load_document_frequencies(path)
    assert frequency == first.document_frequency and num_images == 30
    assert fingerprint == references_fingerprint([[c.split() for c in caps] for caps in references])

    # A second scorer reads the cache instead of recomputing.
    monkeypatch.setattr(cider, "document_frequencies", lambda *args: pytest.fail("recomputed despite the cache"))
    second = CiderD(references, cache_path=path)
    candidates, indices = [random_caption(rng) for _ in range(20)], list(range(20))
    np.testing.assert_array_equal(first.reward(candidates, indices), second.reward(candidates, indices))


def test_stale_cache_is_recomputed_and_rewritten(tmp_path):
    path = tmp_path / "df.json"
    CiderD([["a dog"], ["a cat"]], cache_path=path)
    with pytest.warns(UserWarning, match="other references"):
        scorer = CiderD([["a red car"], ["a cat"], ["a dog"]], cache_path=path)
    assert scorer.document_frequency[("a",)] == 3
    assert load_document_frequencies(path)[1] == 3


def test_save_then_load_preserves_ngrams(tmp_path):
    frequency = {("a",): 3, ("a", "dog"): 2, ("caf\u00e9", "au", "lait", "x"): 1}
    save_document_frequencies(tmp_path / "df.json", frequency, 3, "abc")
    assert load_document_frequencies(tmp_path / "df.json") == (frequency, 3, "abc")


def test_corrupt_cache_is_a_clear_error(tmp_path):
    path = tmp_path / "df.json"
    path.write_text("{not json")
    with pytest.raises(InputError, match="df.json"):
        CiderD([["a dog"]], cache_path=path)
    path.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(InputError, match="not a CIDEr-D document frequency cache"):
        load_document_frequencies(path)
