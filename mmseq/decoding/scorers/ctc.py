"""Joint CTC/attention decoding as a fused scorer: the CTC prefix score of each candidate
(Watanabe et al. 2017), batched over all hypotheses and their candidate tokens at once, as ESPnet's
``CTCPrefixScoreTH`` does. The state is tensors only: no host synchronisation."""

from __future__ import annotations

import torch

from .base import Scorer, text_ids

NEG_INF = float("-inf")


class CTCPrefixScorer:
    """Scores candidate next tokens of many prefixes by the CTC probability of the prefix.

    The prefix probability of ``h`` is the total probability of every labelling that starts with
    ``h``; for ``</s>`` it is the probability of the labelling ``g`` itself. Extending a prefix never
    raises it, so the gains this scorer returns are log-probabilities (at most 0).

    Args:
        log_probs: ``(batch, frames, vocab)`` CTC log-posteriors of each input.
        lengths: ``(batch,)`` real frames of each input.
        eos: end-of-sentence id.
        blank: the CTC blank id.
        rows_per_input: hypotheses per input (the beam); rows of one input are next to each other.

    Rows start from the empty prefix. Each step: :meth:`score` the candidates of every row, then
    :meth:`advance` with the rows and tokens chosen among them; :meth:`select` drops rows.
    """

    def __init__(self, log_probs: torch.Tensor, lengths: torch.Tensor, eos: int, blank: int = 0,
                 rows_per_input: int = 1):
        _, frames, _ = log_probs.shape
        x = log_probs.float().clone()
        # Past an input's end the blank has probability one and other tokens zero: nothing changes.
        padding = torch.arange(frames, device=x.device)[None] >= lengths.to(x.device)[:, None]
        x.masked_fill_(padding[..., None], NEG_INF)
        x[..., blank] = x[..., blank].masked_fill(padding, 0.0)
        self.x = x.transpose(0, 1).contiguous()  # (frames, batch, vocab): shared by an input's rows
        self.blank, self.eos = blank, eos
        self.row_input = torch.arange(x.shape[0], device=x.device).repeat_interleave(rows_per_input)
        rows = len(self.row_input)
        # r[t, 0 / 1, row]: log-probability that frames 0..t emit the prefix, ending in a label / blank.
        self.r = torch.full((frames, 2, rows), NEG_INF, device=x.device)
        self.r[:, 1] = self.x[:, self.row_input, blank].cumsum(0)
        self.prefix_score = torch.zeros(rows, device=x.device)
        self.last = torch.full((rows,), -1, dtype=torch.long, device=x.device)
        self.forced = 0  # labels of a forced prefix before the tokens that score() is given

    def score(self, tokens: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Gain in CTC prefix log-probability ``(rows, count)`` of appending each of
        ``candidates (rows, count)`` to the prefixes ``tokens (rows, steps)``."""
        frames, steps = self.x.shape[0], self.forced + tokens.shape[1]
        xs = self.x[:, self.row_input[:, None], candidates]  # (frames, rows, count)
        blank = self.x[:, self.row_input, self.blank][..., None]  # (frames, rows, 1)
        r = torch.full((frames, 2) + candidates.shape, NEG_INF, device=xs.device)
        if steps == 0:
            r[0, 0] = xs[0]
        r_sum = torch.logaddexp(self.r[:, 0], self.r[:, 1])  # (frames, rows)
        # A repeated label needs a blank between: only paths of the prefix ending in blank extend it.
        repeated = (candidates == self.last[:, None])[None]
        log_phi = torch.where(repeated, self.r[:, 1, :, None], r_sum[..., None])
        # A prefix of n labels needs at least n frames: earlier frames stay impossible.
        start = min(max(steps, 1), frames)
        for t in range(start, frames):
            r[t, 0] = torch.logaddexp(r[t - 1, 0], log_phi[t - 1]) + xs[t]
            r[t, 1] = torch.logaddexp(r[t - 1, 0], r[t - 1, 1]) + blank[t]
        log_psi = torch.cat([r[start - 1, 0][None], log_phi[start - 1:-1] + xs[start:]]).logsumexp(0)
        log_psi = torch.where(candidates == self.eos, r_sum[-1][:, None], log_psi)
        self._next_r, self._next_score, self.candidates = r, log_psi, candidates
        gain = log_psi - self.prefix_score[:, None]
        # A row whose prefix CTC cannot produce stays impossible (not -inf minus -inf = nan).
        return gain.masked_fill((self.prefix_score == NEG_INF)[:, None], NEG_INF)

    def advance(self, index: torch.Tensor, candidates: torch.Tensor, tokens: torch.Tensor) -> None:
        """Row ``i`` now extends row ``index[i]`` with ``tokens[i]``, one of the ``candidates`` of
        that row that :meth:`score` scored last."""
        position = (candidates[index] == tokens[:, None]).int().argmax(1)
        self.r = self._next_r[:, :, index, position]
        self.prefix_score = self._next_score[index, position]
        self.last = tokens
        self.row_input = self.row_input[index]

    def force(self, labels: list[int]) -> None:
        """Take every row through ``labels`` first (a prompt's text prefix): later scores are
        conditioned on them, and the prefix's own probability is not part of any gain."""
        rows = len(self.row_input)
        empty = torch.zeros(rows, 0, dtype=torch.long, device=self.r.device)
        for label in labels:
            candidates = torch.full((rows, 1), label, dtype=torch.long, device=self.r.device)
            self.score(empty, candidates)
            self.advance(torch.arange(rows, device=self.r.device), candidates, candidates[:, 0])
            self.forced += 1

    def select(self, rows: torch.Tensor) -> None:
        """Keep only some rows (inputs that finished leave the batch)."""
        self.r, self.row_input = self.r[:, :, rows], self.row_input[rows]
        self.prefix_score, self.last = self.prefix_score[rows], self.last[rows]


class CTCScorer(Scorer):
    """CTC prefix scores (:class:`CTCPrefixScorer`) of one batch's CTC head output.

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
