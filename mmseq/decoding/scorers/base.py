"""The interface of a scorer fused with the decoder in beam search.

Each step of :func:`mmseq.decoding.search.beam_search` adds ``weight * gain`` of every fused scorer to the
decoder's log-probabilities (ESPnet's weighted sum; whisper's ``decoding.py`` keeps its parts behind
small classes the same way). A scorer is one object, fused by passing ``(scorer, weight)`` in the
search's ``scorers`` list (or ``model.generate(batch, scorers=[(scorer, weight)])``): nothing in
``search.py`` names a scorer.

The scorer itself keeps no per-search data: everything a search needs lives in the ``state`` it
returns, so one loaded scorer (a language model, say) can serve many searches at once.
"""

from __future__ import annotations

import torch


class Scorer:
    """A scorer of next tokens fused with the decoder (subclass and override the four methods).

    Rows are the search's hypotheses, ``inputs x beam`` of them, the rows of one input next to each
    other. ``tokens (rows, steps)`` are the new tokens of each row so far (prompt excluded).

    Class attributes:
        partial: False: :meth:`score` gets ``candidates=None`` and scores the whole vocabulary
            ``(rows, vocab)``; True: it scores only each row's best candidates by the other scores
            ``candidates (rows, count)`` (``</s>`` always among them) and returns ``(rows, count)``:
            for scorers that pay per token scored, such as CTC prefix scoring.
        joint: True: the scorer's weight is taken from the decoder's, whose log-probabilities are
            scaled by ``1 - weight`` (ESPnet's joint CTC/attention weighting); False: its weighted
            scores are simply added (shallow fusion).
    """

    partial = False
    joint = False

    def room(self, prompt: list[int]) -> int | None:
        """Most new tokens this scorer can score after ``prompt`` (None: no limit)."""
        return None

    def init_state(self, prompt: list[int], memory_mask: torch.Tensor, rows_per_input: int, max_new: int):
        """The state of ``memory_mask.shape[0] * rows_per_input`` rows after ``prompt`` (ids forced
        after ``<s>``; task and control tokens included); at most ``max_new`` tokens follow."""
        raise NotImplementedError

    def score(self, state, tokens: torch.Tensor, candidates: torch.Tensor | None) -> torch.Tensor:
        """Log-probability gains of each next token: ``(rows, vocab)``, or ``(rows, count)`` for
        ``candidates (rows, count)`` when :attr:`partial`. ``-inf`` forbids a token."""
        raise NotImplementedError

    def add_scores(self, log_probs: torch.Tensor, state, tokens: torch.Tensor, weight: float) -> torch.Tensor:
        """``log_probs + weight * score(state, tokens, None)`` (not :attr:`partial`): what the search
        calls. A scorer whose gains are cheaper to add than to build (:class:`ContextBoost`) fuses it."""
        return torch.add(log_probs, self.score(state, tokens, None).to(log_probs.dtype), alpha=weight)

    def advance(self, state, index: torch.Tensor, new_tokens: torch.Tensor):
        """Row ``i`` now continues row ``index[i]`` with ``new_tokens[i]`` (a candidate that the last
        :meth:`score` scored); returns the new state."""
        raise NotImplementedError

    def select(self, state, rows: torch.Tensor):
        """Keep only ``rows`` (inputs that finished leave the batch); returns the new state."""
        raise NotImplementedError


def text_ids(prompt: list[int], tokenizer) -> list[int]:
    """The text part of a prompt (task and control tokens and soft prompt vectors dropped): what
    text scorers condition on."""
    return [i for i in prompt if i < tokenizer.vocab_size and i not in tokenizer.special_ids]
