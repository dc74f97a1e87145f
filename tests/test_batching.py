"""Length-bucketed batching: the budget, coverage, padding, and the sampler's order and sharding."""

import random

import pytest

from mmseq.data.batching import BucketBatchSampler, bucket_batches, padding_fraction


def speech_lengths(count=2000, seed=0):
    """Utterance durations shaped like a read-speech corpus: mostly 2 to 16 s, a long tail."""
    rng = random.Random(seed)
    return [min(30.0, max(0.5, rng.lognormvariate(1.9, 0.5))) for _ in range(count)]


def random_batches(lengths, max_size, seed=0):
    """The same budget, filled in random order (what batching without buckets does)."""
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    batches, current, longest = [], [], 0.0
    for i in order:
        if current and max(longest, lengths[i]) * (len(current) + 1) > max_size:
            batches.append(current)
            current, longest = [], 0.0
        current.append(i)
        longest = max(longest, lengths[i])
    return batches + [current]


@pytest.mark.parametrize("max_size, max_examples", [(60.0, None), (100.0, 8), (15.0, None)])
def test_budget_and_every_index_once(max_size, max_examples):
    lengths = speech_lengths(500)
    batches = bucket_batches(lengths, max_size, max_examples)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert batch
        padded = max(lengths[i] for i in batch) * len(batch)
        assert padded <= max_size or len(batch) == 1  # a longer example gets a batch of its own
        if max_examples:
            assert len(batch) <= max_examples


def test_batches_are_full():
    # Greedy filling: adding the next example of the following batch would break the budget.
    lengths = speech_lengths(500)
    batches = bucket_batches(lengths, 60.0)
    for batch, following in zip(batches, batches[1:]):
        grown = batch + following[:1]
        assert max(lengths[i] for i in grown) * len(grown) > 60.0


def test_oversized_examples_and_empty_input():
    assert bucket_batches([], 10.0) == []
    batches = bucket_batches([1.0, 50.0, 1.0, 60.0], 10.0)
    assert sorted(map(sorted, batches)) == [[0, 2], [1], [3]]


def test_bucketing_wastes_far_less_padding_than_random_batches():
    lengths = speech_lengths()
    bucketed = padding_fraction(lengths, bucket_batches(lengths, 120.0))
    shuffled = padding_fraction(lengths, random_batches(lengths, 120.0))
    assert bucketed < 0.1
    assert shuffled > 0.25
    assert bucketed < shuffled / 3


def test_padding_fraction_values():
    assert padding_fraction([1.0, 1.0], [[0, 1]]) == 0.0
    assert padding_fraction([1.0, 3.0], [[0, 1]]) == pytest.approx(1 - 4 / 6)
    assert padding_fraction([], []) == 0.0


def make_sampler(lengths, **settings):
    return BucketBatchSampler(lengths, 40.0, **settings)


def test_sampler_is_deterministic_per_epoch_and_differs_across_epochs():
    lengths = speech_lengths(400)
    first, second = make_sampler(lengths, seed=3), make_sampler(lengths, seed=3)
    first.set_epoch(2)
    second.set_epoch(2)
    assert list(first) == list(second)
    second.set_epoch(3)
    assert list(first) != list(second)
    assert sorted(map(sorted, first)) == sorted(map(sorted, second))  # same batches, other order
    other_seed = make_sampler(lengths, seed=4)
    other_seed.set_epoch(2)
    assert list(other_seed) != list(first)
    # Every example once per epoch (world size 1).
    assert sorted(i for b in first for i in b) == list(range(len(lengths)))


def test_no_shuffle_keeps_length_order():
    lengths = speech_lengths(100)
    sampler = make_sampler(lengths, shuffle=False)
    flat = [i for b in sampler for i in b]
    assert [lengths[i] for i in flat] == sorted(lengths)


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_sampler_shards_without_overlap_and_with_equal_counts(world_size):
    lengths = speech_lengths(403)
    shards = []
    for rank in range(world_size):
        sampler = make_sampler(lengths, seed=1, rank=rank, world_size=world_size)
        sampler.set_epoch(5)
        shards.append(list(sampler))
        assert len(sampler) == len(shards[-1])
    assert len({len(s) for s in shards}) == 1
    seen = [i for shard in shards for b in shard for i in b]
    assert sorted(seen) == list(range(len(lengths)))  # no overlap, nothing dropped
    total = len(bucket_batches(lengths, 40.0))
    assert len(shards[0]) == total // world_size + total % world_size  # the last ones split, not dropped


def test_set_epoch_start_skips_the_first_batches():
    lengths = speech_lengths(300)
    for world_size in (1, 2):
        sampler = make_sampler(lengths, seed=7, rank=world_size - 1, world_size=world_size)
        sampler.set_epoch(4)
        full = list(sampler)
        sampler.set_epoch(4, start=5)
        assert list(sampler) == full[5:]
        assert len(sampler) == len(full) - 5
        sampler.set_epoch(4, start=len(full) + 3)  # past the end: nothing, not a negative length
        assert list(sampler) == [] and len(sampler) == 0
