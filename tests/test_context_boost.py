"""ContextBoost: a bonus for tokens that spell a listed word, taken back when the word is left
unfinished; each input of a search has its own words."""

import pytest
import torch

from conftest import make_model, waveform_batch
from mmseq.errors import InputError
from mmseq.decoding.scorers import ContextBoost


def step(scorer, state, token):
    return scorer.advance(state, torch.tensor([0]), torch.tensor([token]))


def test_gains_follow_a_listed_word_and_are_taken_back_when_it_is_left(char_tokenizer):
    tok = char_tokenizer
    space, c, a, t, d = (tok.encode(x)[0] for x in " catd")
    scorer = ContextBoost(tok, [["cat"]])
    state = scorer.init_state([], torch.ones(1, 5, dtype=torch.bool), 1, 10)
    none = torch.zeros(1, 0, dtype=torch.long)
    gains = scorer.score(state, none, None)[0]
    assert gains[space] == 1 and gains[c] == 0 and gains[tok.eos_id] == 0  # a listed word may start
    for done, token in enumerate((space, c, a, t)):
        gains = scorer.score(state, none, None)[0]
        assert gains[token] == 1, done
        if done:  # inside the word: leaving it (another letter, the end) gives back every unit it gained
            assert gains[d if token != d else c] == -done and gains[tok.eos_id] == -done
        state = step(scorer, state, token)
    assert state[0][1] == (space, c, a, t)
    gains = scorer.score(state, none, None)[0]
    # The whole word keeps its bonus: ending it costs nothing, making it longer ("catd") costs all 4.
    assert gains[tok.eos_id] == 0 and gains[space] == 1 and gains[d] == -4


def test_boost_puts_each_inputs_own_word_in_its_hypothesis(char_tokenizer):
    model = make_model(char_tokenizer, ctc_weight=0.0)
    batch = waveform_batch([0.5, 0.6])
    plain = model.decode_texts(batch, beam_size=3)
    words = [["dog"], ["bird"]]
    assert not any(w[0] in text.split() for w, text in zip(words, plain))
    boosted = model.decode_texts(batch, beam_size=3, scorers=[(ContextBoost(char_tokenizer, words), 20.0)])
    # Each input gets its own listed word, never the other input's.
    assert "dog" in boosted[0].split() and "bird" not in boosted[0].split()
    assert "bird" in boosted[1].split() and "dog" not in boosted[1].split()


def test_boost_for_another_number_of_inputs_is_refused(char_tokenizer):
    model = make_model(char_tokenizer, ctc_weight=0.0)
    with pytest.raises(InputError, match="for 1 inputs, the search has 2"):
        model.decode_texts(waveform_batch([0.5, 0.6]), beam_size=2, scorers=[(ContextBoost(char_tokenizer, [["dog"]]), 1.0)])
