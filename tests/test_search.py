"""Search: greedy and batched beam search against brute force, each other, and their limits;
the CTC prefix scorer against enumeration and ``ctc_loss``.

The core cases are the ``test_core_*`` functions; other search tests may follow them in this file.
"""

import itertools
import math

import pytest
import torch
from torch.nn import functional as F

from conftest import make_model, waveform_batch
from mmseq.decoding.scorers.ctc import CTCPrefixScorer
from mmseq.decoding.options import DecodingOptions
from mmseq.decoding.search import beam_search, greedy_search
from mmseq.tokenizer import CharTokenizer


def encoded(model, seconds, seed=0):
    batch = waveform_batch(seconds, seed)
    with torch.no_grad():
        return model.encode(batch["inputs"], batch["lengths"])


def end_near(model, per_frame=0.5, slope=1.5, temperature=0.5, offset=2.0):
    """Make a random model want to end after about ``per_frame`` tokens per memory frame: a
    ``</s>`` logit that grows with the position (so outputs of varied length, longer for longer
    inputs), and flatter logits (so beams differ from greedy)."""
    eos, step = model.tokenizer.eos_id, model.decoder.step
    with torch.no_grad():
        model.decoder.norm.weight.mul_(temperature)

    def biased(tokens, cache, *args, **kwargs):
        start = cache.length
        out = step(tokens, cache, *args, **kwargs)
        logits = out[0] if isinstance(out, tuple) else out
        position = torch.arange(start, start + tokens.shape[1], device=logits.device).float()
        frames = cache.memory_mask.sum(1, keepdim=True).float()
        frames = frames.repeat_interleave(logits.shape[0] // frames.shape[0], 0)  # rows may share a memory row
        target = frames * per_frame + offset  # (rows, 1)
        logits[..., eos] += slope * (position[None] - target)
        return out

    model.decoder.step = biased
    return model


@pytest.fixture
def abc_model():
    """A random model over a three-letter alphabet: small enough to enumerate every output."""
    return make_model(CharTokenizer(["a", "b", "c"], prompt_tokens=["<|asr|>"]), seed=3)


def all_scores(model, memory, mask, limit, length_penalty):
    """Brute force: every output of at most ``limit`` tokens (``</s>`` included) with its
    normalised score, scored the way the search scores (specials suppressed, ``</s>`` free at
    the limit). Returns ``[(score, tokens)]`` best first, for the single input of ``memory``."""
    tokenizer = model.tokenizer
    prefix = [tokenizer.bos_id] + model.route().task.prompt()
    letters = range(len(tokenizer.special_tokens), tokenizer.vocab_size)
    results = []
    for length in range(limit):
        for body in itertools.product(letters, repeat=length):
            sequence = prefix + list(body) + [tokenizer.eos_id]
            with torch.no_grad():
                logits = model.decoder(torch.tensor([sequence[:-1]]), memory, mask)[0, len(prefix) - 1:]
            log_probs = logits.float().log_softmax(-1)
            total = 0.0
            for step, token in enumerate(list(body) + [tokenizer.eos_id]):
                total += 0.0 if step == limit - 1 else float(log_probs[step, token])
            results.append((total / (length + 1) ** length_penalty, list(body)))
    return sorted(results, key=lambda pair: -pair[0])


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_core_wide_beam_finds_the_best_output_by_brute_force(abc_model, length_penalty):
    memory, mask = encoded(abc_model, [0.5], seed=1)
    expected = all_scores(abc_model, memory, mask, 4, length_penalty)  # 1 + 3 + 9 + 27 outputs
    options = DecodingOptions(beam_size=30, max_length=4, nbest=5, length_penalty=length_penalty)
    hyps = beam_search(abc_model, memory, mask, abc_model.route().task.prompt(), options)[0]
    assert [h.tokens for h in hyps] == [tokens for _, tokens in expected[:5]]
    assert [h.score for h in hyps] == pytest.approx([score for score, _ in expected[:5]], abs=1e-4)


def test_core_nbest_is_ordered_and_distinct(tiny_model):
    memory, mask = encoded(end_near(tiny_model), [0.5, 0.7])
    for hyps in beam_search(tiny_model, memory, mask, tiny_model.route().task.prompt(),
                            DecodingOptions(beam_size=5, nbest=4, max_length=10)):
        assert len(hyps) == 4
        scores = [h.score for h in hyps]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.tokens) for h in hyps}) == 4
        for h in hyps:  # the score is the log-probability over the length, </s> included
            assert h.score == pytest.approx(h.log_prob / (len(h.tokens) + 1), rel=1e-5)


@pytest.mark.parametrize("seed", range(3))
def test_core_beam_one_equals_greedy(char_tokenizer, seed):
    model = end_near(make_model(char_tokenizer, seed=seed), per_frame=0.3 + 0.2 * seed)
    memory, mask = encoded(model, [0.4, 0.8, 0.6], seed)
    prompt = model.route().task.prompt()
    # Without a length penalty, beam 1 is greedy: same tokens, same score.
    options = DecodingOptions(beam_size=1, max_length=15, length_penalty=0.0)
    greedy = greedy_search(model, memory, mask, prompt, options)
    beam = [hyps[0] for hyps in beam_search(model, memory, mask, prompt, options)]
    assert len({len(h.tokens) for h in greedy}) > 1  # outputs of varied length, ended by </s>
    assert [h.tokens for h in beam] == [h.tokens for h in greedy]
    assert [h.score for h in beam] == pytest.approx([h.score for h in greedy], abs=1e-5)
    # With one, beam 1 keeps greedy's output among its candidates, so it can only score better.
    options = DecodingOptions(beam_size=1, max_length=15, length_penalty=1.0)
    greedy = greedy_search(model, memory, mask, prompt, options)
    beam = [hyps[0] for hyps in beam_search(model, memory, mask, prompt, options)]
    assert all(b.score >= g.score - 1e-5 for b, g in zip(beam, greedy))


def test_core_larger_beams_never_score_worse(char_tokenizer):
    for seed in range(4):
        model = end_near(make_model(char_tokenizer, seed=seed))
        memory, mask = encoded(model, [0.5, 0.8, 0.3], seed)
        previous = None
        for beam_size in (1, 2, 4, 8):
            hyps = beam_search(model, memory, mask, model.route().task.prompt(),
                               DecodingOptions(beam_size=beam_size, max_length=12))
            scores = torch.tensor([h[0].score for h in hyps])
            if previous is not None:
                assert (scores >= previous - 1e-5).all(), (seed, beam_size, scores, previous)
            previous = scores


@pytest.mark.parametrize("ctc_weight", [0.0, 0.4])
def test_core_batched_beam_equals_one_at_a_time(char_tokenizer, ctc_weight):
    model = end_near(make_model(char_tokenizer, seed=5))
    seconds = [0.5, 0.9, 0.3, 0.7]
    memory, mask = encoded(model, seconds, seed=2)
    options = DecodingOptions(beam_size=4, nbest=3, max_length=30, max_length_ratio=1.0, ctc_weight=ctc_weight)
    ctc = model.ctc_log_probs(memory) if ctc_weight else None
    batched = beam_search(model, memory, mask, model.route().task.prompt(), options, ctc)
    assert len({len(hyps[0].tokens) for hyps in batched}) > 1  # inputs finish at different steps
    for row, hyps in enumerate(batched):
        frames = int(mask[row].sum())
        alone_memory, alone_mask = memory[row:row + 1, :frames], mask[row:row + 1, :frames]
        alone_ctc = model.ctc_log_probs(alone_memory) if ctc_weight else None
        alone = beam_search(model, alone_memory, alone_mask, model.route().task.prompt(), options, alone_ctc)[0]
        assert [h.tokens for h in hyps] == [h.tokens for h in alone]
        assert [h.score for h in hyps] == pytest.approx([h.score for h in alone], abs=1e-4)


def test_core_batched_greedy_equals_one_at_a_time(tiny_model):
    model = end_near(tiny_model)
    memory, mask = encoded(model, [0.5, 0.9, 0.3])
    options = DecodingOptions(max_length=30)
    batched = greedy_search(model, memory, mask, model.route().task.prompt(), options)
    assert len({len(hyp.tokens) for hyp in batched}) > 1
    for row, hyp in enumerate(batched):
        frames = int(mask[row].sum())
        alone = greedy_search(model, memory[row:row + 1, :frames], mask[row:row + 1, :frames],
                              model.route().task.prompt(), options)[0]
        assert hyp.tokens == alone.tokens and hyp.score == pytest.approx(alone.score, abs=1e-5)


@pytest.mark.parametrize("beam_size", [1, 3])
def test_core_max_length_ratio_is_respected(tiny_model, beam_size):
    memory, mask = encoded(tiny_model, [0.3, 0.6, 1.0])  # the random model never wants to stop
    frames = mask.sum(1).tolist()
    options = DecodingOptions(beam_size=beam_size, max_length=100, max_length_ratio=0.5, nbest=beam_size)
    search = greedy_search if beam_size == 1 else beam_search
    results = search(tiny_model, memory, mask, tiny_model.route().task.prompt(), options)
    for count, hyps in zip(frames, results):
        hyps = hyps if isinstance(hyps, list) else [hyps]
        longest = math.ceil(count * 0.5)
        assert all(len(h.tokens) <= longest for h in hyps)
        assert max(len(h.tokens) for h in hyps) == longest
    options = DecodingOptions(beam_size=beam_size, max_length=3)
    results = search(tiny_model, memory, mask, tiny_model.route().task.prompt(), options)
    assert all(len(h.tokens) <= 2 for hyps in results for h in (hyps if isinstance(hyps, list) else [hyps]))


@pytest.mark.parametrize("beam_size", [1, 4])
def test_core_min_length_is_respected(char_tokenizer, beam_size):
    model = end_near(make_model(char_tokenizer, seed=1), per_frame=0.0, offset=0.0)
    memory, mask = encoded(model, [0.3, 0.6])
    prompt = model.route().task.prompt()
    search = greedy_search if beam_size == 1 else beam_search

    def lengths(min_length):
        options = DecodingOptions(beam_size=beam_size, max_length=20, min_length=min_length, nbest=beam_size,
                                  length_penalty=0.0)
        results = search(model, memory, mask, prompt, options)
        return [len(h.tokens) for hyps in results for h in (hyps if isinstance(hyps, list) else [hyps])]

    assert min(lengths(0)) < 3  # the model wants to stop early...
    assert min(lengths(3)) >= 3  # ...but may not


def test_core_generate_uses_the_task_prompt_and_a_text_prefix(tiny_model):
    batch = waveform_batch([0.5, 0.6])
    tokenizer = tiny_model.tokenizer
    plain = tiny_model.generate(batch, beam_size=1, ctc_weight=0.0, max_length=8)
    memory, mask = tiny_model.encode(batch["inputs"], batch["lengths"])
    expected = greedy_search(tiny_model, memory, mask, [tokenizer.token_id("<|asr|>")], DecodingOptions(max_length=8))
    assert [h[0].tokens for h in plain] == [h.tokens for h in expected]
    prefixed = tiny_model.generate(batch, prompt="<|short|> the", beam_size=2, ctc_weight=0.0, max_length=8)
    prompt = [tokenizer.token_id("<|asr|>"), tokenizer.token_id("<|short|>")] + tokenizer.encode("the")
    expected = beam_search(tiny_model, memory, mask, prompt, DecodingOptions(beam_size=2, max_length=8))
    assert [h[0].tokens for h in prefixed] == [h[0].tokens for h in expected]


# -- CTC prefix scorer ----------------------------------------------------------------------------
def collapse(path, blank=0):
    out, previous = [], None
    for label in path:
        if label != previous and label != blank:
            out.append(label)
        previous = label
    return out


def brute_force_prefix_log_probs(log_probs, prefixes):
    """log P(the CTC output starts with prefix) by summing over every alignment path."""
    frames, vocab = log_probs.shape
    totals = {tuple(p): [] for p in prefixes}
    for path in itertools.product(range(vocab), repeat=frames):
        labels = collapse(path)
        score = float(log_probs[torch.arange(frames), torch.tensor(path)].sum())
        for prefix in totals:
            if tuple(labels[: len(prefix)]) == prefix:
                totals[prefix].append(score)
    return {p: torch.logsumexp(torch.tensor(s), 0).item() if s else float("-inf") for p, s in totals.items()}


def test_core_ctc_prefix_scores_equal_enumeration():
    torch.manual_seed(0)
    frames, vocab, eos = 5, 4, 3
    log_probs = torch.randn(1, frames, vocab).log_softmax(-1)
    candidates = torch.tensor([[1, 2]])
    scorer = CTCPrefixScorer(log_probs, torch.tensor([frames]), eos)
    tokens = torch.zeros(1, 0, dtype=torch.long)
    for following in [1, 1, 2]:  # a repeated label needs a blank between
        gains = scorer.score(tokens, candidates)
        prefixes = [tokens[0].tolist() + [c] for c in candidates[0].tolist()]
        expected = brute_force_prefix_log_probs(log_probs[0], prefixes + [tokens[0].tolist()])
        for column, prefix in enumerate(prefixes):
            total = float(gains[0, column]) + expected[tuple(tokens[0].tolist())]
            assert total == pytest.approx(expected[tuple(prefix)], abs=1e-4)
        scorer.advance(torch.tensor([0]), candidates, torch.tensor([following]))
        tokens = torch.cat([tokens, torch.tensor([[following]])], 1)


@pytest.mark.parametrize("target", [[1], [2, 1], [1, 1, 2], [2, 2, 2]])
def test_core_ctc_prefix_scorer_with_eos_equals_ctc_loss(target):
    torch.manual_seed(len(target))
    frames, vocab, eos = 9, 5, 4
    lengths = torch.tensor([frames, 7])  # the second row is padded: its last frames must not count
    log_probs = torch.randn(2, frames, vocab).log_softmax(-1)
    scorer = CTCPrefixScorer(log_probs, lengths, eos)
    candidates = torch.tensor([[1, 2, 3, eos]] * 2)
    tokens = torch.zeros(2, 0, dtype=torch.long)
    total = torch.zeros(2)
    for label in target:
        gains = scorer.score(tokens, candidates)
        total += gains[:, label - 1]
        scorer.advance(torch.tensor([0, 1]), candidates, torch.tensor([label, label]))
        tokens = torch.cat([tokens, torch.tensor([[label]] * 2)], 1)
    total += scorer.score(tokens, candidates)[:, -1]
    expected = -F.ctc_loss(log_probs.transpose(0, 1), torch.tensor([target] * 2), lengths,
                           torch.tensor([len(target)] * 2), blank=0, reduction="none")
    torch.testing.assert_close(total, expected, atol=1e-4, rtol=1e-4)


def test_core_ctc_scorer_follows_reordered_and_selected_rows():
    torch.manual_seed(1)
    log_probs = torch.randn(1, 8, 5).log_softmax(-1).expand(3, -1, -1)
    lengths = torch.tensor([8, 8, 8])
    candidates = torch.tensor([[1, 2, 3]] * 3)
    scorer = CTCPrefixScorer(log_probs, lengths, eos=4)
    scorer.score(torch.zeros(3, 0, dtype=torch.long), candidates)
    scorer.advance(torch.tensor([0, 1, 2]), candidates, torch.tensor([1, 2, 3]))
    scorer.score(torch.tensor([[1], [2], [3]]), candidates)
    # Rows continue others' prefixes: [2, 1], [1, 3], [2, 2]
    scorer.advance(torch.tensor([1, 0, 1]), candidates, torch.tensor([1, 3, 2]))
    scorer.select(torch.tensor([2, 0]))
    prefixes = torch.tensor([[2, 2], [2, 1]])
    gains = scorer.score(prefixes, torch.tensor([[4], [4]]))
    fresh = CTCPrefixScorer(log_probs[:2], lengths[:2], eos=4)
    expected = -F.ctc_loss(log_probs[:2].transpose(0, 1), prefixes, lengths[:2], torch.tensor([2, 2]),
                           reduction="none")
    total = gains[:, 0] + scorer.prefix_score
    torch.testing.assert_close(total, expected, atol=1e-4, rtol=1e-4)
    assert fresh is not None
