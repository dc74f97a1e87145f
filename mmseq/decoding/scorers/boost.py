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

from dataclasses import dataclass

import torch

from ...errors import InputError
from ...tokenizer import cached_word_starts
from .base import Scorer


@dataclass
class BoostState:
    """Each row's input ``inputs (rows,)`` and its node in the prefix tree ``nodes (rows,)``: the
    tokens of its current word so far, or the input's root (node ``input``) when the word is empty
    or no listed word starts so. ``state[row]`` reads ``(input, tokens of the word)`` on the host,
    for a reader; the search never does."""
    inputs: torch.Tensor
    nodes: torch.Tensor
    scorer: "ContextBoost"

    def __len__(self) -> int:
        return self.nodes.shape[0]

    def __getitem__(self, row: int) -> tuple[int, tuple[int, ...]]:
        return int(self.inputs[row]), self.scorer.word_of(int(self.nodes[row]))


class ContextBoost(Scorer):
    """Boost the words ``words[i]`` (a list of strings) of input ``i`` of a search.

    One prefix tree holds every input's words: node ``i`` is input ``i``'s root, each other node a
    prefix of some listed word's tokens, with its depth and whether a whole word ends there. Each
    node's children are a padded row of ``(token, child)`` tables (the roots' in a table of their
    own: a root has a child per distinct first token, the other nodes a few). State, score, advance
    and select are tensor operations on the search's device, with no host synchronisation. A
    step's gains are added to the decoder's without building them apart (:meth:`add_scores`): the
    penalty for leaving the word (by the node's depth) over the whole vocabulary in two broadcast
    adds, then ``scatter_add_`` of the few tokens that continue the word or start a listed one.
    Each distinct word is encoded once per search, the tokenizer's word starts once per tokenizer.
    """

    def __init__(self, tokenizer, words: list[list[str]]):
        self.tokenizer = tokenizer
        starts = cached_word_starts(tokenizer)
        self.starts = torch.tensor(starts + [False])  # per id (and the pad column): does it start a word
        self.count = len(words)
        spelled = _spell(tokenizer, words)
        children: list[dict[int, int]] = [{} for _ in words]  # per node: token -> child
        self.parent, self.token = [-1] * len(words), [-1] * len(words)  # per node (roots: -1)
        depth, whole = [0] * len(words), [False] * len(words)
        for root, input_words in enumerate(words):
            for word in input_words:
                ids = spelled[word]
                if not ids or not starts[ids[0]]:
                    continue  # a word that does not start with a word-start token can never be matched
                node = root
                for token in ids:
                    child = children[node].get(token)
                    if child is None:
                        child = children[node][token] = len(children)
                        children.append({})
                        self.parent.append(node)
                        self.token.append(token)
                        depth.append(depth[node] + 1)
                        whole.append(False)
                    node = child
                whole[node] = True
        self.give_back = torch.tensor([-d for d in depth], dtype=torch.float32)  # leaving the word: 0 at a root
        self.whole = torch.tensor(whole)
        self.word_start_row = torch.tensor([starts], dtype=torch.float32)  # (1, vocab)
        self.pad = tokenizer.vocab_size  # never a token: a padded child matches nothing
        self.root_table = _table(children[:len(words)], self.pad)  # (inputs, 2, most first tokens)
        self.inner_table = _table([{}] * len(words) + children[len(words):], self.pad)  # (nodes, 2, most children)
        self.device = torch.device("cpu")

    def word_of(self, node: int) -> tuple[int, ...]:
        """The tokens from the root to ``node`` (host; for reading a state)."""
        tokens = []
        while self.parent[node] >= 0:
            tokens.append(self.token[node])
            node = self.parent[node]
        return tuple(reversed(tokens))

    def _to(self, device) -> None:
        if self.device != device:
            for name in ("starts", "give_back", "whole", "word_start_row", "root_table", "inner_table"):
                setattr(self, name, getattr(self, name).to(device))
            self.device = device

    def init_state(self, prompt, memory_mask, rows_per_input, max_new):
        if memory_mask.shape[0] != self.count:
            raise InputError(f"ContextBoost holds words for {self.count} inputs, the search has "
                             f"{memory_mask.shape[0]}: build it for the inputs of one search")
        self._to(memory_mask.device)
        inputs = torch.arange(self.count, device=memory_mask.device).repeat_interleave(rows_per_input)
        return BoostState(inputs, inputs.clone(), self)

    def score(self, state, tokens, candidates):
        return self.add_scores(torch.zeros(len(state), self.tokenizer.vocab_size, device=self.device), state, tokens, 1.0)

    def add_scores(self, log_probs, state, tokens, weight):
        """``log_probs + weight * gains`` in two passes over ``(rows, vocab)`` (the give-back of every
        row, then the units a whole word keeps at the tokens that start the next word), then the
        few tokens that continue or start a listed word, and ``</s>``, set apart."""
        nodes, eos = state.nodes, self.tokenizer.eos_id
        give_back = self.give_back[nodes]  # (rows,): minus the units gained in the word
        kept = torch.where(self.whole[nodes], -give_back, 0.0)  # a whole word keeps them at the next word
        out = torch.add(log_probs, give_back.unsqueeze(1).to(log_probs), alpha=weight)
        out.addcmul_(kept.unsqueeze(1).to(out), self.word_start_row.to(out), value=weight)
        table = self.inner_table[nodes, 0]  # continuing the word: one unit in place of leaving it
        continuing = torch.where(table == self.pad, eos, table)  # (padding onto </s>, set below)
        leaving = give_back.unsqueeze(1) + kept.unsqueeze(1) * self.starts[table]
        out.scatter_add_(1, continuing, ((1.0 - leaving) * weight).to(out))
        starting = self.root_table[state.inputs, 0]  # starting a listed word: one more unit
        starting = torch.where(starting == self.pad, eos, starting)
        out.scatter_add_(1, starting, torch.full(starting.shape, weight, dtype=out.dtype, device=out.device))
        out[:, eos] = log_probs[:, eos] + weight * (give_back + kept).to(out)  # ending keeps a whole word's units
        return out

    def advance(self, state, index, new_tokens):
        inputs, nodes = state.inputs[index], state.nodes[index]
        new_tokens = new_tokens.to(nodes.device)
        inner = _child(self.inner_table[nodes], new_tokens, inputs)  # the word goes on
        first = _child(self.root_table[inputs], new_tokens, inputs)  # a new word starts
        return BoostState(inputs, torch.where(self.starts[new_tokens], first, inner), self)

    def select(self, state, rows):
        rows = rows.to(state.nodes.device)
        return BoostState(state.inputs[rows], state.nodes[rows], self)


def _spell(tokenizer, words: list[list[str]]) -> dict[str, list[int]]:
    """Each distinct word of ``words``: its ids as a word start (one ``encode`` per distinct word)."""
    distinct = dict.fromkeys(word for input_words in words for word in input_words)
    return {word: tokenizer.encode(" " + word.strip()) for word in distinct}


def _table(children: list[dict[int, int]], pad: int) -> torch.Tensor:
    """``(nodes, 2, width)``: each node's child tokens (row 0, ``pad`` after the last) and child
    nodes (row 1, -1 after the last)."""
    width = max((len(c) for c in children), default=0) or 1
    table = torch.full((len(children), 2, width), pad, dtype=torch.long)
    table[:, 1] = -1
    rows = [node for node, found in enumerate(children) for _ in found]
    columns = [column for found in children for column in range(len(found))]
    if rows:
        table[rows, 0, columns] = torch.tensor([token for found in children for token in found])
        table[rows, 1, columns] = torch.tensor([child for found in children for child in found.values()])
    return table


def _child(table: torch.Tensor, tokens: torch.Tensor, roots: torch.Tensor) -> torch.Tensor:
    """Each row's child by ``tokens (rows,)`` in its row of ``table (rows, 2, width)``, or its input's
    root ``roots`` when it has none (the word is not, or no longer, a listed word's start)."""
    match = table[:, 0] == tokens.unsqueeze(1)
    return torch.where(match.any(1), (table[:, 1] * match).sum(1), roots)
