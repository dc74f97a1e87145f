"""Contextual biasing by shallow fusion: a bonus for the tokens that spell a listed word.

The learned way to use a list of names is the context segment the decoder was trained with
(:mod:`mmseq.prompts`); this scorer is the other, untrained way, fused with any model: each input
has its own words (names, rare words), and a hypothesis gains one unit (times the fusion weight)
for every token that continues one of them from the start of a word; when it leaves such a word
unfinished, the units it gained in it are taken back, so only whole listed words keep a bonus (the
context graph of icefall and the boosting trees of Aleksic et al. 2015 work so, with a trie).

Words are matched at word starts: a sentencepiece piece beginning with "▁", or for a character
tokenizer the space token (so the first word of a character hypothesis is not boosted).
"""

from __future__ import annotations

import torch

from ...errors import InputError
from .base import Scorer


class ContextBoost(Scorer):
    """Boost the words ``words[i]`` (a list of strings) of input ``i`` of a search.

    State: a list of ``(input, the tokens of the row's current word so far)``, one per row, on
    the host. Host synchronisation: :meth:`advance` and :meth:`select` read the chosen rows and
    tokens with ``.tolist()`` (two syncs per step), and :meth:`score` builds the gains row by row
    in Python on the CPU, then copies them to the search's device. Meant for short word lists; a
    prefix tree held as tensors (node per row, a child table gathered per step) would remove the
    syncs.
    """

    def __init__(self, tokenizer, words: list[list[str]]):
        self.tokenizer = tokenizer
        starts = self.starts = torch.tensor(tokenizer.word_starts(), dtype=torch.bool)
        # Per input: the prefixes of its words' token sequences, each with the tokens that may follow,
        # and the whole words.
        self.tries = []
        for input_words in words:
            prefixes: dict[tuple, set] = {(): set()}
            whole = set()
            for word in input_words:
                ids = tuple(tokenizer.encode(" " + word.strip()))
                if not ids or not starts[ids[0]]:
                    continue  # a word that does not start with a word-start token can never be matched
                for end in range(len(ids)):
                    prefixes.setdefault(ids[:end], set()).add(ids[end])
                prefixes.setdefault(ids, set())
                whole.add(ids)
            self.tries.append((prefixes, whole))

    def init_state(self, prompt, memory_mask, rows_per_input, max_new):
        if memory_mask.shape[0] != len(self.tries):
            raise InputError(f"ContextBoost holds words for {len(self.tries)} inputs, the search has "
                             f"{memory_mask.shape[0]}: build it for the inputs of one search")
        # Each row: (its input, the tokens of its current word so far).
        return [(row // rows_per_input, ()) for row in range(memory_mask.shape[0] * rows_per_input)]

    def score(self, state, tokens, candidates):
        gains = torch.zeros(len(state), self.tokenizer.vocab_size)
        for row, (index, word) in enumerate(state):
            prefixes, whole = self.tries[index]
            if word in prefixes and word:  # inside a listed word: leaving it unfinished gives its units back
                ending = 0.0 if word in whole else -float(len(word))
                gains[row] = torch.where(self.starts, ending, -float(len(word)))
                gains[row, self.tokenizer.eos_id] = ending
                for token in prefixes[word]:
                    gains[row, token] = 1.0
            for token in prefixes[()]:  # starting a listed word
                gains[row, token] += 1.0
        return gains.to(tokens.device)

    def advance(self, state, index, new_tokens):
        out = []
        for row, token in zip(index.tolist(), new_tokens.tolist()):
            which, word = state[row]
            out.append((which, (token,) if self.starts[token] else word + (token,)))
        return out

    def select(self, state, rows):
        return [state[row] for row in rows.tolist()]
