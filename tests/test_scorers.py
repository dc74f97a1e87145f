"""Fused scorers: a new scorer is one class (no edit to the search), the joint CTC/attention search
against a brute-force joint scorer, and n-best lists that never hold a hypothesis twice."""

import functools
import itertools

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

from conftest import make_model, waveform_batch
from mmseq.decoding.scorers import Scorer
from mmseq.decoding.scorers.lm import LanguageModel
from mmseq.decoding.options import DecodingOptions
from mmseq.decoding.search import beam_search
from mmseq.tokenizer import CharTokenizer


class TokenBonus(Scorer):
    """A constant gain for every token of one word: the whole of a new scorer."""

    def __init__(self, tokenizer, word: str):
        self.ids = tokenizer.encode(word)
        self.vocab = tokenizer.vocab_size

    def init_state(self, prompt, memory_mask, rows_per_input, max_new):
        bonus = torch.zeros(self.vocab)
        bonus[self.ids] = 1.0
        return bonus

    def score(self, state, tokens, candidates):
        return state.expand(tokens.shape[0], -1)

    def advance(self, state, index, new_tokens):
        return state

    def select(self, state, rows):
        return state


@pytest.fixture(scope="module")
def abc():
    tokenizer = CharTokenizer(["a", "b", "c"], prompt_tokens=["<|asr|>"])
    model = make_model(tokenizer, ctc_weight=0.3, seed=3)
    batch = waveform_batch([0.3, 0.5], seed=1)
    with torch.no_grad():
        memory, mask = model.encode(batch["inputs"], batch["lengths"])
        ctc = model.ctc_log_probs(memory)
    return model, memory, mask, ctc


def brute_force(model, memory, mask, ctc, row, limit, ctc_weight=0.0, bonus=None, length_penalty=0.0):
    """Every output of at most ``limit`` tokens (``</s>`` included) of input ``row`` scored jointly
    as the search defines it: ``(1 - w) log p_attention(y </s>) + w log p_ctc(y) + bonus * count``,
    ``</s>`` free for the decoder at the limit. Returns ``[(score, tokens)]`` best first."""
    tokenizer = model.tokenizer
    prefix = [tokenizer.bos_id] + model.route().task.prompt()
    letters = range(len(tokenizer.special_tokens), tokenizer.vocab_size)
    frames = int(mask[row].sum())
    results = []
    for length in range(limit):
        for body in itertools.product(letters, repeat=length):
            sequence = prefix + list(body) + [tokenizer.eos_id]
            with torch.no_grad():
                logits = model.decoder(torch.tensor([sequence[:-1]]), memory[row:row + 1], mask[row:row + 1])
            log_probs = logits[0, len(prefix) - 1:].float().log_softmax(-1)
            steps = list(body) + [tokenizer.eos_id]
            attention = sum(0.0 if step == limit - 1 else float(log_probs[step, token])
                            for step, token in enumerate(steps))
            total = attention
            if ctc_weight:
                ctc_log_prob = -float(F.ctc_loss(ctc[row:row + 1, :frames].transpose(0, 1), torch.tensor([list(body)]),
                                                 torch.tensor([frames]), torch.tensor([length]), blank=tokenizer.pad_id,
                                                 reduction="sum", zero_infinity=False)) if length else \
                    float(ctc[row, :frames, tokenizer.pad_id].sum())
                total = (1 - ctc_weight) * attention + ctc_weight * ctc_log_prob
            if bonus is not None:
                word, weight = bonus
                total += weight * sum(token in word for token in body)
            if total > float("-inf"):
                results.append((total / (length + 1) ** length_penalty, list(body)))
    return sorted(results, key=lambda pair: -pair[0])


@pytest.mark.parametrize("ctc_weight, length_penalty", [(0.3, 0.0), (0.5, 1.0)])
def test_joint_ctc_attention_search_equals_brute_force(abc, ctc_weight, length_penalty):
    """The ESPnet-agreement check as a test: a beam wide enough to hold every prefix (and every
    token a CTC candidate) returns exactly the brute-force joint scorer's n-best."""
    model, memory, mask, ctc = abc
    options = DecodingOptions(beam_size=30, nbest=5, max_length=4, ctc_weight=ctc_weight, ctc_candidates=10,
                              length_penalty=length_penalty, early_stopping="exact")
    for row, hyps in enumerate(beam_search(model, memory, mask, model.route().task.prompt(), options, ctc)):
        expected = brute_force(model, memory, mask, ctc, row, 4, ctc_weight, length_penalty=length_penalty)[:5]
        assert [h.tokens for h in hyps] == [tokens for _, tokens in expected]
        assert [h.score for h in hyps] == pytest.approx([score for score, _ in expected], abs=1e-4)


def test_a_new_scorer_is_one_class_and_changes_the_output_as_expected(abc):
    model, memory, mask, ctc = abc
    c = model.tokenizer.encode("b")  # the plain search prefers "ccc"
    batch = waveform_batch([0.3, 0.5], seed=1)
    plain = model.generate(batch, beam_size=30, nbest=3, max_length=4, ctc_weight=0.0, early_stopping="exact",
                           length_penalty=0.0)
    for weight in (0.5, 3.0):
        fused = model.generate(batch, beam_size=30, nbest=3, max_length=4, ctc_weight=0.0, early_stopping="exact",
                               length_penalty=0.0, scorers=[(TokenBonus(model.tokenizer, "b"), weight)])
        for row, hyps in enumerate(fused):
            expected = brute_force(model, memory, mask, ctc, row, 4, bonus=(c, weight))[:3]
            assert [h.tokens for h in hyps] == [tokens for _, tokens in expected]
            assert [h.score for h in hyps] == pytest.approx([score for score, _ in expected], abs=1e-4)
    # A large bonus fills the output with the word; the search without it does not.
    assert all(h[0].tokens == c * 3 for h in fused)
    assert all(h[0].tokens != c * 3 for h in plain)
    # Greedy (beam 1) goes through the fused search too.
    greedy = model.generate(batch, beam_size=1, max_length=4, ctc_weight=0.0,
                            scorers=[(TokenBonus(model.tokenizer, "b"), 3.0)])
    assert all(h[0].tokens == c * 3 for h in greedy)


# -- distinct n-best ------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def small_model(vocab: int, seed: int):
    """A random speech model and a random language model over ``vocab`` symbols (500 reproduces
    the duplicate: topk's ties at -inf then pick ``</s>``)."""
    symbols = [chr(0x4E00 + i) for i in range(vocab)]
    tokenizer = CharTokenizer(symbols, prompt_tokens=["<|asr|>"])
    model = make_model(tokenizer, ctc_weight=0.3, seed=seed)
    lm = LanguageModel(make_model(tokenizer, seed=seed + 100).decoder, tokenizer)
    batch = waveform_batch([0.2, 0.45, 0.3], seed)
    with torch.no_grad():
        memory, mask = model.encode(batch["inputs"], batch["lengths"])
        ctc = model.ctc_log_probs(memory)
    return model, lm, memory, mask, ctc


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(vocab=st.sampled_from([5, 500]), seed=st.integers(0, 2), beam=st.integers(1, 6), nbest=st.integers(1, 6),
       ctc_weight=st.sampled_from([0.0, 0.3, 0.8]), lm_weight=st.sampled_from([0.0, 0.5]),
       prefix=st.booleans(), max_length=st.integers(1, 8), ratio=st.sampled_from([None, 0.5]),
       min_length=st.integers(0, 2), bonus=st.sampled_from([0.0, 2.0]))
def test_no_hypothesis_twice_in_any_nbest(vocab, seed, beam, nbest, ctc_weight, lm_weight, prefix, max_length,
                                          ratio, min_length, bonus):
    model, lm, memory, mask, ctc = small_model(vocab, seed)
    options = DecodingOptions(beam_size=beam, nbest=min(nbest, beam), max_length=max_length, max_length_ratio=ratio,
                              min_length=min_length, ctc_weight=ctc_weight, lm_weight=lm_weight)
    prompt = model.route().task.prompt() + (model.tokenizer.encode(model.tokenizer.decode([7, 8])) if prefix else [])
    scorers = [(TokenBonus(model.tokenizer, model.tokenizer.decode([6])), bonus)]
    results = beam_search(model, memory, mask, prompt, options, ctc, lm, scorers)
    assert len(results) == memory.shape[0]
    for hyps in results:
        outputs = [tuple(h.tokens) for h in hyps]
        assert len(outputs) == len(set(outputs)), outputs
        scores = [h.score for h in hyps]
        assert scores == sorted(scores, reverse=True)
        limit = max(max_length, min_length + 1)  # min_length wins over max_length
        assert all(len(h.tokens) < limit for h in hyps if h.score > float("-inf"))
