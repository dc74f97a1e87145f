"""Joint CTC/attention decoding as a fused scorer: the CTC prefix score of each candidate."""

from __future__ import annotations

import torch

from ..ctc import CTCPrefixScorer
from .base import Scorer, text_ids


class CTCScorer(Scorer):
    """CTC prefix scores (:class:`mmseq.decoding.ctc.CTCPrefixScorer`) of one batch's CTC head output.

    Args:
        log_probs: ``(batch, frames, vocab)`` CTC log-posteriors of the batch being decoded.
        tokenizer: gives ``eos_id``, the blank (``pad_id``) and which prompt ids are text.

    Fused with weight ``w`` the step score is ``(1 - w) log p_attention + w * CTC gain``.
    """

    partial = True
    joint = True

    def __init__(self, log_probs: torch.Tensor, tokenizer):
        self.log_probs, self.tokenizer = log_probs, tokenizer

    def init_state(self, prompt, memory_mask, rows_per_input, max_new):
        state = CTCPrefixScorer(self.log_probs, memory_mask.sum(1), self.tokenizer.eos_id, self.tokenizer.pad_id,
                                rows_per_input)
        # CTC transcribes the text only: it starts after the prompt's text prefix, if any.
        state.force(text_ids(prompt, self.tokenizer))
        return state

    def score(self, state, tokens, candidates):
        return state.score(tokens, candidates)

    def advance(self, state, index, new_tokens):
        state.advance(index, state.candidates, new_tokens)  # the candidates score() was given last
        return state

    def select(self, state, rows):
        state.select(rows)
        return state
