"""The text decoder: incremental decoding with the cache equals teacher forcing; cache operations."""

import pytest
import torch

from mmseq.decoder import DecoderConfig, TextDecoder

VOCAB = 23


@pytest.fixture
def decoder():
    torch.manual_seed(0)
    return TextDecoder(DecoderConfig(vocab_size=VOCAB, dim=32, layers=2, heads=4, ffn_dim=64, dropout=0.1,
                                     max_length=40, memory_dim=24)).eval()


def memory_and_mask(batch=3, frames=9, dim=24, lengths=(9, 5, 7)):
    torch.manual_seed(1)
    memory = torch.randn(batch, frames, dim)
    mask = torch.arange(frames)[None] < torch.tensor(lengths)[:, None]
    return memory, mask


def test_forward_shapes_and_causality(decoder):
    memory, mask = memory_and_mask()
    tokens = torch.randint(0, VOCAB, (3, 8))
    logits = decoder(tokens, memory, mask)
    assert logits.shape == (3, 8, VOCAB)
    changed = tokens.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % VOCAB  # later tokens must not change earlier logits
    torch.testing.assert_close(decoder(changed, memory, mask)[:, :5], logits[:, :5])
    logits, weights = decoder(tokens, memory, mask, return_attention=True)
    assert weights.shape == (3, 8, 9)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 8))
    assert (weights[1, :, 5:] == 0).all()  # no attention on padded frames


def test_padded_memory_does_not_change_logits(decoder):
    memory, mask = memory_and_mask()
    tokens = torch.randint(0, VOCAB, (3, 6))
    batched = decoder(tokens, memory, mask)
    alone = decoder(tokens[1:2], memory[1:2, :5], mask[1:2, :5])
    torch.testing.assert_close(batched[1:2], alone, atol=1e-5, rtol=1e-5)
    noisy = memory.clone()
    noisy[1, 5:] = 100.0
    torch.testing.assert_close(decoder(tokens, noisy, mask), batched, atol=1e-5, rtol=1e-5)


def test_one_token_at_a_time_equals_full_sequence(decoder):
    memory, mask = memory_and_mask()
    tokens = torch.randint(0, VOCAB, (3, 10))
    full = decoder(tokens, memory, mask)
    cache = decoder.init_cache(memory, mask, 10)
    steps = torch.cat([decoder.step(tokens[:, i:i + 1], cache) for i in range(10)], 1)
    assert cache.length == 10
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-5)


def test_prompt_step_then_single_tokens_equals_full_sequence(decoder):
    memory, mask = memory_and_mask()
    tokens = torch.randint(0, VOCAB, (3, 10))
    full = decoder(tokens, memory, mask)
    cache = decoder.init_cache(memory, mask, 12)
    prompt = decoder.step(tokens[:, :4], cache)  # a multi-token prompt in one step
    middle = decoder.step(tokens[:, 4:7], cache)  # several tokens after a filled cache
    rest = [decoder.step(tokens[:, i:i + 1], cache) for i in range(7, 10)]
    torch.testing.assert_close(torch.cat([prompt, middle] + rest, 1), full, atol=1e-5, rtol=1e-5)


def test_step_returns_attention(decoder):
    memory, mask = memory_and_mask()
    tokens = torch.randint(0, VOCAB, (3, 4))
    _, full_weights = decoder(tokens, memory, mask, return_attention=True)
    cache = decoder.init_cache(memory, mask)
    _, weights = decoder.step(tokens[:, :3], cache, return_attention=True)
    _, last = decoder.step(tokens[:, 3:], cache, return_attention=True)
    torch.testing.assert_close(torch.cat([weights, last], 1), full_weights, atol=1e-5, rtol=1e-5)


def test_reorder_equals_recomputing_from_reordered_inputs(decoder):
    memory, mask = memory_and_mask(batch=1, lengths=(7,))
    rows = 4
    memory, mask = memory.expand(rows, -1, -1), mask.expand(rows, -1)  # a beam over one input
    tokens = torch.randint(0, VOCAB, (rows, 5))
    cache = decoder.init_cache(memory, mask, 8)
    decoder.step(tokens, cache)
    index = torch.tensor([2, 0, 0, 3])
    cache.reorder(index)
    following = torch.randint(0, VOCAB, (rows, 1))
    stepped = decoder.step(following, cache)[:, -1]
    expected = decoder(torch.cat([tokens[index], following], 1), memory, mask)[:, -1]
    torch.testing.assert_close(stepped, expected, atol=1e-5, rtol=1e-5)


def test_select_and_repeat(decoder):
    memory, mask = memory_and_mask()
    tokens = torch.randint(0, VOCAB, (3, 4))
    cache = decoder.init_cache(memory, mask, 9)
    decoder.step(tokens, cache)
    repeated = cache.repeat(2)
    assert repeated.self_kv.shape == (2, 2, 6, 4, 9, 8)
    assert all(kv.shape == (2, 6, 4, 9, 8) for kv in repeated.cross_kv)
    assert repeated.memory_mask.shape == (6, 9) and repeated.length == 4
    assert torch.equal(repeated.memory_mask[4], mask[2]) and torch.equal(repeated.memory_mask[5], mask[2])
    selected = repeated.select(torch.tensor([5, 0]))
    assert selected.self_kv.shape == (2, 2, 2, 4, 9, 8) and selected.length == 4
    assert torch.equal(selected.memory_mask, mask[[2, 0]])
    # Decoding on from the selected rows equals decoding on from the original inputs.
    following = torch.randint(0, VOCAB, (2, 1))
    expected = decoder(torch.cat([tokens[[2, 0]], following], 1), memory[[2, 0]], mask[[2, 0]])[:, -1]
    torch.testing.assert_close(decoder.step(following, selected)[:, -1], expected, atol=1e-5, rtol=1e-5)
    # The original cache was not changed by select.
    assert cache.self_kv.shape[2] == 3 and cache.length == 4


def test_too_long_sequences_are_refused(decoder):
    memory, mask = memory_and_mask()
    with pytest.raises(ValueError, match="max_length"):
        decoder(torch.zeros(3, 41, dtype=torch.long), memory, mask)
    cache = decoder.init_cache(memory, mask, 100)  # capped at the decoder's max_length
    assert cache.self_kv.shape[4] == 40


def test_output_embedding_is_tied(decoder):
    memory, mask = memory_and_mask()
    logits = decoder(torch.zeros(3, 2, dtype=torch.long), memory, mask)
    logits.sum().backward()
    assert decoder.embed.weight.grad is not None
    assert not any(p.shape == (VOCAB, 32) and p is not decoder.embed.weight for p in decoder.parameters())


def test_shared_cross_attention_equals_repeated(decoder):
    from mmseq.decoder import DecoderCache

    if not hasattr(DecoderCache, "share"):
        pytest.skip("DecoderCache.share not available")
    memory, mask = memory_and_mask()
    prefix = torch.randint(0, VOCAB, (3, 3))
    repeated, shared = decoder.init_cache(memory, mask, 8), decoder.init_cache(memory, mask, 8)
    decoder.step(prefix, repeated)
    decoder.step(prefix, shared)
    repeated, shared = repeated.repeat(2), shared.share(2)
    following = torch.randint(0, VOCAB, (6, 2))
    torch.testing.assert_close(decoder.step(following, shared), decoder.step(following, repeated),
                               atol=1e-5, rtol=1e-5)
    _, weights = decoder.step(following[:, :1], shared, return_attention=True)
    _, expected = decoder.step(following[:, :1], repeated, return_attention=True)
    torch.testing.assert_close(weights, expected, atol=1e-5, rtol=1e-5)
    # Reordering within each input's group and dropping a whole group keep them equal.
    index = torch.tensor([1, 0, 2, 2, 5, 4])
    shared.reorder(index)
    repeated.reorder(index)
    keep = torch.tensor([0, 1, 4, 5])
    shared, repeated = shared.select(keep), repeated.select(keep)
    last = torch.randint(0, VOCAB, (4, 1))
    torch.testing.assert_close(decoder.step(last, shared), decoder.step(last, repeated), atol=1e-5, rtol=1e-5)
