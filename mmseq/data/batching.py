"""Length-bucketed dynamic batching: examples of similar length share a batch, and a batch holds
at most ``max_size`` padded length units (seconds of audio, tokens, images), so little is padding.

Deterministic per epoch (the seed and epoch fix the order), sharded across ranks without overlap,
and able to start part way through an epoch for an exact resume.
"""

from __future__ import annotations

import random

from torch.utils.data import Sampler


def bucket_batches(lengths: list[float], max_size: float, max_examples: int | None = None,
                   groups: list | None = None) -> list[list[int]]:
    """Group example indices, sorted by length, into batches whose padded size
    (longest length times count) stays within ``max_size``; a longer example gets its own batch.
    ``groups``: one label per example (a multitask model's task); a batch never mixes labels."""
    groups = groups if groups is not None else [0] * len(lengths)
    order = sorted(range(len(lengths)), key=lambda i: (groups[i], lengths[i]))
    batches, current, longest = [], [], 0.0
    for i in order:
        longest_if_added = max(longest, lengths[i])
        too_big = current and longest_if_added * (len(current) + 1) > max_size
        other_group = current and groups[i] != groups[current[0]]
        if too_big or other_group or (max_examples and len(current) >= max_examples):
            batches.append(current)
            current, longest_if_added = [], lengths[i]
        current.append(i)
        longest = longest_if_added
    if current:
        batches.append(current)
    return batches


def padding_fraction(lengths: list[float], batches: list[list[int]]) -> float:
    """Share of a batch's padded area that is padding, over all batches."""
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    return 1.0 - sum(lengths) / padded if padded else 0.0


class BucketBatchSampler(Sampler):
    """Yields lists of indices: length-bucketed batches in a shuffled order, this rank's share.

    Batches are dealt round-robin; the last few of an epoch that do not divide evenly among the
    ranks are each split among them (a piece may be empty). So every rank gets the same number of
    batches, no rank waits forever, and every example is used once per epoch on exactly one rank.
    """

    def __init__(self, lengths: list[float], max_size: float, max_examples: int | None = None,
                 shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1,
                 groups: list | None = None):
        self.lengths, self.shuffle, self.seed = lengths, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.batches = bucket_batches(lengths, max_size, max_examples, groups)
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Choose the epoch's order; skip its first ``start`` batches of this rank (resume)."""
        self.epoch, self.start = epoch, start

    def epoch_batches(self) -> list[list[int]]:
        batches = list(self.batches)
        if self.shuffle:
            random.Random(self.seed * 100003 + self.epoch).shuffle(batches)
        whole = len(batches) - len(batches) % self.world_size
        # Pieces of a length-sorted batch, taken with a stride, keep similar lengths and stay
        # within its budget.
        rest = [batch[self.rank::self.world_size] for batch in batches[whole:]]
        return batches[self.rank:whole:self.world_size] + rest

    def __iter__(self):
        return iter(self.epoch_batches()[self.start:])

    def __len__(self) -> int:
        whole, rest = divmod(len(self.batches), self.world_size)
        return max(0, whole + rest - self.start)
