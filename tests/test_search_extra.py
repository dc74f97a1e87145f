"""Beam search against references it must match: greedy, exhaustive search, one input at a time,
teacher forcing, brute-force CTC, and the bookkeeping of prompts, pools and early stops."""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import pytest
import torch
from torch.nn import functional as F

from conftest import make_model, waveform_batch
from mmseq.decoding.scorers.ctc import CTCPrefixScorer
from mmseq.decoder import DecoderConfig, TextDecoder
from mmseq.errors import ConfigError
from mmseq.decoding.options import DecodingOptions
from mmseq.decoding.search import beam_search, final_score, greedy_search
from mmseq.tokenizer import CharTokenizer


# -- helpers ---------------------------------------------------------------------------------------
def encode(model, seconds, seed=0):
    batch = waveform_batch(seconds, seed)
    with torch.no_grad():
        return model.encode(batch["inputs"], batch["lengths"])


def ctc_of(model, memory):
    with torch.no_grad():
        return model.ctc_log_probs(memory)


def teacher_forced(model, memory, mask, prefix: list[int], tokens: list[int], limit: int | None = None) -> list[float]:
    """Attention log-probability of each of ``tokens`` + ``</s>`` after ``prefix``, by the full
    decoder; ``</s>`` costs nothing when it is forced at the length ``limit``."""
    eos = model.tokenizer.eos_id
    sequence = torch.tensor([[model.tokenizer.bos_id] + prefix + tokens + [eos]])
    with torch.no_grad():
        log_probs = model.decoder(sequence[:, :-1], memory, mask).log_softmax(-1)[0]
    start = len(prefix)
    steps = [float(log_probs[start + i, t]) for i, t in enumerate(tokens + [eos])]
    if limit is not None and len(steps) >= limit:
        steps[-1] = 0.0
    return steps


def small_model(seed: int = 0):
    """A random decoder over three letters whose every output can be enumerated."""
    tokenizer = CharTokenizer(["a", "b", "c"], prompt_tokens=["<|asr|>"])
    torch.manual_seed(seed)
    decoder = TextDecoder(DecoderConfig(vocab_size=tokenizer.vocab_size, dim=16, layers=2, heads=2, ffn_dim=32,
                                        dropout=0.0, max_length=16)).eval()
    memory = torch.randn(2, 5, 16)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    return SimpleNamespace(tokenizer=tokenizer, decoder=decoder), memory, mask


class MarkovDecoder:
    """A decoder whose next-token logits depend only on the last token: ``table[last]``."""

    def __init__(self, table: torch.Tensor):
        self.table, self.config, self.calls = table, SimpleNamespace(max_length=64), []

    def init_cache(self, memory, mask, max_length=None, offsets=None):
        return MarkovCache(memory.shape[0])

    def step(self, tokens, cache):
        self.calls.append(tokens.shape[0])
        return self.table[tokens]


class MarkovCache:
    def __init__(self, rows):
        self.rows, self.length = rows, 0

    def reorder(self, index):
        pass

    def select(self, index):
        return MarkovCache(len(index))

    def repeat(self, times):
        return MarkovCache(self.rows * times)

    share = repeat


def markov_model(eos_logit: float, seed: int = 0):
    tokenizer = CharTokenizer(["a", "b", "c"], prompt_tokens=["<|asr|>"])
    torch.manual_seed(seed)
    table = torch.randn(tokenizer.vocab_size, tokenizer.vocab_size)
    table[:, tokenizer.eos_id] = eos_logit
    return SimpleNamespace(tokenizer=tokenizer, decoder=MarkovDecoder(table))


# -- greedy and exhaustive references -----------------------------------------------------------------
@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_beam_one_equals_greedy(tiny_model, length_penalty):
    memory, mask = encode(tiny_model, [0.5, 0.9, 0.3, 0.7])
    options = dict(max_length=25, length_penalty=length_penalty, min_length=3, no_repeat_ngram=3)
    greedy = greedy_search(tiny_model, memory, mask, [4], DecodingOptions(**options))
    beam = beam_search(tiny_model, memory, mask, [4], DecodingOptions(beam_size=1, **options))
    for g, (b,) in zip(greedy, beam):
        assert g.tokens == b.tokens
        assert g.score == pytest.approx(b.score, abs=1e-5)
        assert g.log_prob == pytest.approx(b.log_prob, abs=1e-4)


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_wide_beam_finds_exhaustive_best(length_penalty):
    limit = 4  # at most three letters, then </s>: 40 possible outputs per input
    greedy_misses = 0
    for seed in range(1, 4):
        model, memory, mask = small_model(seed)
        letters = range(len(model.tokenizer.special_tokens), model.tokenizer.vocab_size)
        options = DecodingOptions(beam_size=64, nbest=5, max_length=limit, length_penalty=length_penalty)
        found = beam_search(model, memory, mask, [4], options)
        greedy = greedy_search(model, memory, mask, [4], DecodingOptions(max_length=limit,
                                                                         length_penalty=length_penalty))
        for row in range(2):
            ranked = []
            for length in range(limit):
                for tokens in itertools.product(letters, repeat=length):
                    total = sum(teacher_forced(model, memory[row:row + 1], mask[row:row + 1], [4], list(tokens),
                                               limit))
                    ranked.append((final_score(total, length + 1, options), list(tokens)))
            ranked.sort(key=lambda pair: -pair[0])
            assert [h.tokens for h in found[row]] == [tokens for _, tokens in ranked[:5]]
            assert [h.score for h in found[row]] == pytest.approx([score for score, _ in ranked[:5]], abs=1e-5)
            greedy_misses += greedy[row].score < ranked[0][0] - 1e-6
    assert greedy_misses  # not vacuous: greedy search misses the best output of some inputs


# -- batching, cache and teacher forcing -----------------------------------------------------------------
@pytest.mark.parametrize("ctc_weight", [0.0, 0.4])
def test_batched_equals_one_at_a_time(tiny_model, ctc_weight):
    memory, mask = encode(tiny_model, [0.6, 0.25, 0.9, 0.4, 0.5])
    options = DecodingOptions(beam_size=4, nbest=3, max_length=20, max_length_ratio=1.5, ctc_weight=ctc_weight)
    ctc = ctc_of(tiny_model, memory) if ctc_weight else None
    batched = beam_search(tiny_model, memory, mask, [4], options, ctc)
    for row in range(memory.shape[0]):
        frames = int(mask[row].sum())
        one = memory[row:row + 1, :frames]
        alone = beam_search(tiny_model, one, mask[row:row + 1, :frames], [4], options,
                            ctc[row:row + 1, :frames] if ctc is not None else None)[0]
        assert [h.tokens for h in batched[row]] == [h.tokens for h in alone]
        assert [h.score for h in batched[row]] == pytest.approx([h.score for h in alone], abs=1e-4)


def test_hypothesis_scores_equal_full_sequence_decoder(tiny_model):
    """The incremental decoder behind the beam (cache reordered every step, inputs leaving the
    batch) gives each hypothesis the log-probability the full-sequence decoder gives it."""
    memory, mask = encode(tiny_model, [0.6, 0.3, 0.8])
    options = DecodingOptions(beam_size=5, nbest=5, max_length=15, max_length_ratio=1.0, length_penalty=0.7)
    for row, hyps in enumerate(beam_search(tiny_model, memory, mask, [4], options)):
        assert len(hyps) == 5 and len({tuple(h.tokens) for h in hyps}) == 5
        assert [h.score for h in hyps] == sorted([h.score for h in hyps], reverse=True)
        for hyp in hyps:
            limit = min(15, int(mask[row].sum()) + 1)
            steps = teacher_forced(tiny_model, memory[row:row + 1], mask[row:row + 1], [4], hyp.tokens, limit)
            assert hyp.log_prob == pytest.approx(sum(steps), abs=1e-3)
            assert hyp.score == pytest.approx(final_score(hyp.log_prob, len(hyp.tokens) + 1, options), abs=1e-5)


def test_finished_inputs_leave_the_batch():
    model = markov_model(eos_logit=-1.0)
    memory = torch.zeros(3, 30, 4)
    mask = torch.arange(30)[None] < torch.tensor([30, 4, 12])[:, None]
    beam_search(model, memory, mask, [4], DecodingOptions(beam_size=3, max_length=40, max_length_ratio=1.0,
                                                          length_penalty=1.0))
    rows = model.decoder.calls[1:]  # the first call is the prompt, one row per input
    assert rows == sorted(rows, reverse=True) and rows[0] == 9 and rows[-1] < 9


def test_early_stop_when_no_live_hypothesis_can_win():
    # </s> is far likelier than any letter: once it ends, nothing live can catch up (raw scores).
    model = markov_model(eos_logit=8.0)
    memory, mask = torch.zeros(2, 10, 4), torch.ones(2, 10, dtype=torch.bool)
    hyps = beam_search(model, memory, mask, [4], DecodingOptions(beam_size=4, max_length=50, length_penalty=0.0))
    assert [h[0].tokens for h in hyps] == [[], []]
    assert len(model.decoder.calls) == 1  # the prompt step only: stopped after the first token


def test_length_bonus_lengthens_outputs():
    lengths = []
    for bonus in (0.0, 3.0):
        model = markov_model(eos_logit=1.0, seed=3)
        memory, mask = torch.zeros(4, 10, 4), torch.ones(4, 10, dtype=torch.bool)
        options = DecodingOptions(beam_size=4, max_length=30, length_penalty=0.0, length_bonus=bonus)
        lengths.append(sum(len(h[0].tokens) for h in beam_search(model, memory, mask, [4], options)))
    assert lengths[1] > lengths[0]


def test_options_are_checked(tiny_model):
    memory, mask = encode(tiny_model, [0.3])
    with pytest.raises(ConfigError):
        beam_search(tiny_model, memory, mask, [4], DecodingOptions(beam_size=2, nbest=3))
    for weight in (1.0, 1.5, -0.1):
        with pytest.raises(ConfigError, match="ctc_weight"):
            tiny_model.generate(waveform_batch([0.3]), ctc_weight=weight)


# -- prompts ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("beam_size", [1, 3])
def test_forced_prompt_starts_the_output_and_is_not_scored(tiny_model, beam_size):
    batch = waveform_batch([0.5, 0.7])
    hyps = tiny_model.generate(batch, prompt="<|short|> the", beam_size=beam_size, max_length=12, ctc_weight=0.0)
    tokenizer = tiny_model.tokenizer
    prompt = [tokenizer.token_id("<|short|>")] + tokenizer.encode("the")
    memory, mask = encode(tiny_model, [0.5, 0.7])
    for row, (hyp, *_) in enumerate(hyps):
        assert hyp.output[: len(prompt) + 1] == [tokenizer.token_id("<|asr|>")] + prompt
        assert tokenizer.decode(hyp.output).startswith("the")
        steps = teacher_forced(tiny_model, memory[row:row + 1], mask[row:row + 1],
                               [tokenizer.token_id("<|asr|>")] + prompt, hyp.tokens, 12)
        assert hyp.log_prob == pytest.approx(sum(steps), abs=1e-3)  # generated tokens only
    assert all(text.startswith("the") for text in tiny_model.decode_texts(batch, prompt="<|short|> the",
                                                                          beam_size=beam_size, max_length=12))


# -- CTC -------------------------------------------------------------------------------------------------
def brute_force_prefix(log_probs: torch.Tensor, prefix: list[int], whole: bool, blank: int = 0) -> float:
    """log of the total probability of the CTC paths whose labelling starts with (or, ``whole``,
    is) ``prefix``, by enumerating every path."""
    frames, vocab = log_probs.shape
    total = []
    for path in itertools.product(range(vocab), repeat=frames):
        labels = [s for i, s in enumerate(path) if s != blank and (i == 0 or s != path[i - 1])]
        if (labels == prefix) if whole else (labels[: len(prefix)] == prefix):
            total.append(float(sum(log_probs[t, s] for t, s in enumerate(path))))
    return float(torch.tensor(total).logsumexp(0)) if total else float("-inf")


def test_ctc_prefix_scores_equal_brute_force():
    torch.manual_seed(0)
    eos, vocab = 2, 5  # ids: 0 blank, 2 </s>, 3 and 4 labels (1 never wins a candidate slot)
    log_probs = torch.randn(2, 5, vocab).log_softmax(-1)
    lengths = torch.tensor([5, 3])
    scorer = CTCPrefixScorer(log_probs, lengths, eos, blank=0, rows_per_input=1)
    prefixes = [[], []]
    path = [(3, 4), (3, 3), (4, 3)]  # the labels each row takes step by step
    candidates = torch.tensor([[3, 4, eos], [3, 4, eos]])
    for step in range(3):
        gains = scorer.score(torch.tensor(prefixes, dtype=torch.long).view(2, -1), candidates)
        for row in range(2):
            x = log_probs[row, : int(lengths[row])]
            before = brute_force_prefix(x, prefixes[row], whole=False)
            for k, c in enumerate(candidates[row].tolist()):
                after = brute_force_prefix(x, prefixes[row], whole=True) if c == eos else \
                    brute_force_prefix(x, prefixes[row] + [c], whole=False)
                expected = after - before
                if math.isinf(expected):
                    assert gains[row, k] == float("-inf")
                else:
                    assert float(gains[row, k]) == pytest.approx(expected, abs=1e-4)
        if step == 2:
            break
        chosen = [path[row][step] if step < 2 else 3 for row in range(2)]
        scorer.advance(torch.arange(2), candidates, torch.tensor(chosen))
        for row in range(2):
            prefixes[row].append(chosen[row])


def test_joint_ctc_scores_are_the_weighted_sum_of_both_models(tiny_model):
    memory, mask = encode(tiny_model, [0.7, 0.5])
    ctc = ctc_of(tiny_model, memory)
    weight = 0.3
    options = DecodingOptions(beam_size=3, nbest=3, max_length=12, ctc_weight=weight)
    for row, hyps in enumerate(beam_search(tiny_model, memory, mask, [4], options, ctc)):
        frames = int(mask[row].sum())
        for hyp in hyps:
            attention = sum(teacher_forced(tiny_model, memory[row:row + 1], mask[row:row + 1], [4], hyp.tokens, 12))
            ctc_log_prob = -float(F.ctc_loss(ctc[row:row + 1, :frames].transpose(0, 1), torch.tensor([hyp.tokens]),
                                              torch.tensor([frames]), torch.tensor([len(hyp.tokens)]),
                                              reduction="sum"))
            assert hyp.log_prob == pytest.approx((1 - weight) * attention + weight * ctc_log_prob, abs=1e-3)


def test_ctc_only_outputs_are_possible_alignments(char_tokenizer):
    model = make_model(char_tokenizer, seed=1)
    memory, mask = encode(model, [0.3, 0.5])  # few frames: long outputs cannot be aligned
    ctc = ctc_of(model, memory)
    hyps = beam_search(model, memory, mask, [4], DecodingOptions(beam_size=4, max_length=60, ctc_weight=0.9), ctc)
    for row, (hyp, *_) in enumerate(hyps):
        assert math.isfinite(hyp.score) and len(hyp.tokens) <= int(mask[row].sum())


def ctc_prefix_log_prob(log_probs: torch.Tensor, labels: list[int], blank: int = 0) -> float:
    """log P(the CTC output starts with ``labels``) by the forward algorithm: the first ``t - 1``
    frames produce all but the last label, and frame ``t`` starts the last one."""
    if not labels:
        return 0.0
    extended = [blank]
    for label in labels:
        extended += [label, blank]
    frames, states = log_probs.shape[0], len(extended)
    alpha = torch.full((frames, states), float("-inf"))
    alpha[0, 0], alpha[0, 1] = log_probs[0, blank], log_probs[0, labels[0]]
    for t in range(1, frames):
        for s in range(states):
            previous = [alpha[t - 1, s]] + ([alpha[t - 1, s - 1]] if s else [])
            if s >= 2 and extended[s] != blank and extended[s] != extended[s - 2]:
                previous.append(alpha[t - 1, s - 2])
            alpha[t, s] = torch.stack(previous).logsumexp(0) + log_probs[t, extended[s]]
    last = states - 2
    starts = [alpha[0, last]] if last == 1 else []
    for t in range(1, frames):
        skip = last >= 2 and extended[last] != extended[last - 2]
        into = [alpha[t - 1, last - 1]] + ([alpha[t - 1, last - 2]] if skip else [])
        starts.append(torch.stack(into).logsumexp(0) + log_probs[t, extended[last]])
    return float(torch.stack(starts).logsumexp(0))


def test_ctc_prefix_reference_agrees_with_brute_force():
    torch.manual_seed(3)
    log_probs = torch.randn(5, 4).log_softmax(-1)
    for labels in ([1], [1, 1], [2, 3, 2], [3, 3, 3]):
        assert ctc_prefix_log_prob(log_probs, labels) == pytest.approx(
            brute_force_prefix(log_probs, labels, whole=False), abs=1e-4)


def test_joint_ctc_starts_after_a_forced_text_prefix(tiny_model):
    """The prompt's text is given to CTC as well: the CTC part of a score is log P(prefix + output)
    less log P(prefix as a prefix), so the prefix itself is not scored."""
    tokenizer = tiny_model.tokenizer
    batch = waveform_batch([0.9, 0.7])
    memory, mask = encode(tiny_model, [0.9, 0.7])
    ctc = ctc_of(tiny_model, memory)
    text = tokenizer.encode("the")
    prompt = [tokenizer.token_id("<|asr|>"), tokenizer.token_id("<|short|>")] + text
    weight = 0.4
    hyps = tiny_model.generate(batch, prompt="<|short|> the", beam_size=3, nbest=2, max_length=10,
                               ctc_weight=weight)
    for row, row_hyps in enumerate(hyps):
        frames = int(mask[row].sum())
        for hyp in row_hyps:
            attention = sum(teacher_forced(tiny_model, memory[row:row + 1], mask[row:row + 1], prompt, hyp.tokens, 10))
            labels = text + hyp.tokens
            whole = -float(F.ctc_loss(ctc[row, :frames], torch.tensor(labels), torch.tensor(frames),
                                      torch.tensor(len(labels)), reduction="sum"))
            given = ctc_prefix_log_prob(ctc[row, :frames], text)
            assert hyp.log_prob == pytest.approx((1 - weight) * attention + weight * (whole - given), abs=1e-3)
