"""CIDEr-D, the reward of self-critical sequence training (SCST), fast enough to run every step.

The score is the CIDEr-D of Vedantam et al. as coco-caption's ``ciderD_scorer.py`` (used by
self-critical.pytorch) computes it, which is also exactly what pycocoevalcap's ``Cider`` computes:

- n-grams of order 1 to 4, each weighted by tf-idf: ``count * (log(num_images) - log(max(1, df)))``
  where ``df`` is the number of images whose references contain the n-gram;
- per order, the cosine similarity between the candidate and one reference, with the candidate's
  weights clipped to the reference's (``min(candidate, reference) * reference``);
- times a Gaussian length penalty ``exp(-delta**2 / (2 * sigma**2))``, sigma 6, where ``delta``
  is the difference of the two captions' bigram counts (coco-caption counts length in bigrams);
- averaged over the 4 orders and over the references, times 10.

The difference from evaluation CIDEr is only where ``df`` comes from: evaluation takes it from the
references being scored, SCST takes it once from all training references. :class:`CiderD` computes
it once, caches it to a JSON file keyed by a fingerprint of the references, and keeps each
training image's reference vectors in memory after their first use.

Captions are tokenized by :func:`reward_tokens` (lowercase, split on whitespace): the model's
output is already clean text, and the training references should be passed through the same
cleaning the tokenizer applied to them.

>>> scorer = CiderD([["a dog runs", "a dog is running"], ["a red car"]])
>>> scorer.reward(["a dog runs", "a car"], [0, 1]).round(3)
array([4.757, 1.743])
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections import Counter
from itertools import chain
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InputError

NGRAM_ORDER = 4
SIGMA = 6.0
CACHE_FORMAT = "mmseq-cider-d-document-frequency"
CACHE_VERSION = 1

Ngram = tuple[str, ...]


def reward_tokens(caption: str) -> list[str]:
    """The reward's tokenization: lowercase, then split on whitespace. No punctuation handling."""
    return caption.lower().split()


def ngram_counts(tokens: Sequence[str], order: int = NGRAM_ORDER) -> Counter:
    """Counts of every n-gram of length 1 to ``order`` (coco-caption's ``precook``)."""
    return Counter(chain.from_iterable(zip(*(tokens[start:] for start in range(n))) for n in range(1, order + 1)))


def document_frequencies(references: Sequence[Sequence[Sequence[str]]], order: int = NGRAM_ORDER) -> dict[Ngram, int]:
    """For each n-gram, the number of images whose tokenized references contain it.

    Args:
        references: per image, its references, each a list of tokens.
    """
    frequency = Counter()
    for captions in references:
        frequency.update(set().union(*(ngram_counts(tokens, order) for tokens in captions)))
    return dict(frequency)


def references_fingerprint(references: Sequence[Sequence[Sequence[str]]]) -> str:
    """SHA-256 of the tokenized references, so a cache made from other references is not reused."""
    digest = hashlib.sha256()
    for captions in references:
        for tokens in captions:
            digest.update(" ".join(tokens).encode() + b"\n")
        digest.update(b"\x1e")
    return digest.hexdigest()


def save_document_frequencies(path, document_frequency: dict[Ngram, int], num_images: int, fingerprint: str) -> None:
    """Writes the frequencies as JSON (n-grams joined by spaces), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "ngram_order": NGRAM_ORDER,
        "num_images": num_images,
        "references_sha256": fingerprint,
        "document_frequency": {" ".join(ngram): count for ngram, count in document_frequency.items()},
    }
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(payload, ensure_ascii=False))
    os.replace(temporary, path)


def load_document_frequencies(path) -> tuple[dict[Ngram, int], int, str]:
    """Reads a file written by :func:`save_document_frequencies`.

    Returns:
        ``(document_frequency, num_images, fingerprint)``.
    """
    try:
        payload = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: cannot read the CIDEr-D document frequency cache: {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != CACHE_FORMAT or payload.get("version") != CACHE_VERSION:
        raise InputError(f"{path}: not a CIDEr-D document frequency cache ({CACHE_FORMAT} v{CACHE_VERSION})")
    if payload.get("ngram_order") != NGRAM_ORDER:
        raise InputError(f"{path}: made for n-grams up to {payload.get('ngram_order')}, expected {NGRAM_ORDER}")
    frequency = {tuple(key.split(" ")): int(count) for key, count in payload["document_frequency"].items()}
    return frequency, int(payload["num_images"]), str(payload["references_sha256"])


class CiderD:
    """CIDEr-D of candidates against training references, with training document frequencies.

    Args:
        references: per training image, its reference captions (strings, tokenized by
            :func:`reward_tokens`).
        cache_path: JSON file for the document frequencies. Read when it exists and was made
            from the same references; otherwise computed and (re)written.
        sigma: standard deviation of the length penalty.

    >>> scorer = CiderD(train_captions, cache_path="exp/run1/cider_df.json")  # doctest: +SKIP
    >>> rewards = scorer.reward(sampled_captions, image_indices)  # (num_candidates,) float64  # doctest: +SKIP
    """

    def __init__(self, references: Sequence[Sequence[str]], cache_path=None, sigma: float = SIGMA):
        if not references:
            raise InputError("CIDEr-D needs the references of at least one training image")
        self.references = [[reward_tokens(caption) for caption in captions] for captions in references]
        self.sigma = sigma
        fingerprint = references_fingerprint(self.references)
        frequency = None
        if cache_path is not None and Path(cache_path).exists():
            frequency, num_images, cached_fingerprint = load_document_frequencies(cache_path)
            if cached_fingerprint != fingerprint or num_images != len(self.references):
                warnings.warn(f"{cache_path}: made from other references; recomputing it", stacklevel=2)
                frequency = None
        if frequency is None:
            frequency = document_frequencies(self.references)
            if cache_path is not None:
                save_document_frequencies(cache_path, frequency, len(self.references), fingerprint)
        self.document_frequency = frequency
        self.log_num_images = math.log(float(len(self.references)))
        # idf of every n-gram seen in training; an unseen n-gram has df 0, so idf log(num_images).
        self._idf = {ngram: self.log_num_images - math.log(max(1.0, count)) for ngram, count in frequency.items()}
        self._images: dict[int, tuple] = {}

    def _weights(self, tokens: list[str]) -> tuple[dict[Ngram, float], list[float], int]:
        """tf-idf weights, per-order norms and length (bigram count) of one tokenized caption."""
        idf, default = self._idf, self.log_num_images
        counts = ngram_counts(tokens)
        weights, squares = {}, [0.0] * NGRAM_ORDER
        for ngram, count in counts.items():
            weight = count * idf.get(ngram, default)
            weights[ngram] = weight
            squares[len(ngram) - 1] += weight * weight
        # coco-caption measures length as the number of bigrams, i.e. words - 1.
        return weights, [math.sqrt(square) for square in squares], max(len(tokens) - 1, 0)

    def _image(self, index: int) -> tuple:
        """An image's references as postings ``ngram -> [(reference, weight)]``, with each
        reference's per-order norms and length. Built on first use, then kept."""
        entry = self._images.get(index)
        if entry is None:
            postings, norms, lengths = {}, [], []
            for position, tokens in enumerate(self.references[index]):
                weights, norm, length = self._weights(tokens)
                for ngram, weight in weights.items():
                    postings.setdefault(ngram, []).append((position, weight))
                norms.append(norm)
                lengths.append(length)
            entry = self._images[index] = (postings, norms, lengths)
        return entry

    def score(self, candidate: str, index: int) -> float:
        """CIDEr-D of one candidate caption against the references of training image ``index``."""
        postings, reference_norms, reference_lengths = self._image(index)
        weights, norm, length = self._weights(reward_tokens(candidate))
        num_references = len(reference_norms)
        # dot[position * NGRAM_ORDER + order]: clipped dot product with one reference at one order.
        dot = [0.0] * (num_references * NGRAM_ORDER)
        for ngram, weight in weights.items():
            hits = postings.get(ngram)
            if hits:
                order = len(ngram) - 1
                for position, reference_weight in hits:
                    # Clipping: a candidate gains nothing by repeating an n-gram beyond the reference.
                    clipped = weight if weight < reference_weight else reference_weight
                    dot[position * NGRAM_ORDER + order] += clipped * reference_weight
        total = 0.0
        for position in range(num_references):
            reference_norm = reference_norms[position]
            similarity = 0.0
            for order in range(NGRAM_ORDER):
                if norm[order] != 0 and reference_norm[order] != 0:
                    similarity += dot[position * NGRAM_ORDER + order] / (norm[order] * reference_norm[order])
            delta = float(length - reference_lengths[position])
            total += similarity * math.exp(-(delta**2) / (2 * self.sigma**2))
        return total / NGRAM_ORDER / num_references * 10.0

    def reward(self, candidates: Sequence[str], references_index: Sequence[int]) -> np.ndarray:
        """CIDEr-D of each candidate against its own training image's references.

        Args:
            candidates: ``num_candidates`` captions (e.g. 50 images x 5 samples = 250).
            references_index: for each candidate, the index of its image in ``references``
                (a list, numpy array or tensor of ints).

        Returns:
            ``(num_candidates,)`` float64 array of scores (10x-scaled, as coco-caption).
        """
        indices = [int(index) for index in references_index]
        if len(indices) != len(candidates):
            raise InputError(f"got {len(candidates)} candidates but {len(indices)} reference indices")
        bad = [index for index in indices if not 0 <= index < len(self.references)]
        if bad:
            raise InputError(f"reference index {bad[0]} is outside the {len(self.references)} training images")
        return np.array([self.score(candidate, index) for candidate, index in zip(candidates, indices)], dtype=np.float64)
