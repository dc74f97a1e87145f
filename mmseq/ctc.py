"""CTC prefix scores for joint CTC/attention beam search (Watanabe et al. 2017), batched over all
hypotheses and their candidate tokens at once, as ESPnet's ``CTCPrefixScoreTH`` does."""

from __future__ import annotations

import torch


class CTCPrefixScorer:
    """Scores candidate next tokens of many prefixes by the CTC posterior of the prefix.

    Args:
        log_probs: ``(rows, frames, vocab)`` CTC log-posteriors, one row per hypothesis.
        lengths: ``(rows,)`` real frames of each row.
        eos: end-of-sentence id: its score is the probability of the whole prefix.
        blank: the CTC blank id.
    """

    def __init__(self, log_probs: torch.Tensor, lengths: torch.Tensor, eos: int, blank: int = 0):
        rows, frames, _ = log_probs.shape
        x = log_probs.float().clone()
        # Past a row's end, the blank has probability one and other tokens zero: nothing changes.
        padding = torch.arange(frames, device=x.device)[None] >= lengths[:, None]
        x.masked_fill_(padding[..., None], float("-inf"))
        x[..., blank] = x[..., blank].masked_fill(padding, 0.0)
        self.x = x.transpose(0, 1).contiguous()  # (frames, rows, vocab)
        self.blank, self.eos = blank, eos
        self.r = torch.full((frames, 2, rows), float("-inf"), device=x.device)  # (non-blank, blank) endings
        self.r[:, 1] = self.x[:, :, blank].cumsum(0)
        self.prefix_score = torch.zeros(rows, device=x.device)
        self.last = torch.full((rows,), -1, dtype=torch.long, device=x.device)

    def score(self, tokens: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Gain in CTC prefix log-probability ``(rows, count)`` for ``candidates (rows, count)``
        appended to the prefixes ``tokens (rows, steps)``."""
        steps = tokens.shape[1]
        frames, rows = self.x.shape[:2]
        xs = self.x.gather(2, candidates[None].expand(frames, -1, -1))  # (frames, rows, count)
        r = torch.full((frames, 2) + candidates.shape, float("-inf"), device=xs.device)
        if steps == 0:
            r[0, 0] = xs[0]
        r_sum = torch.logaddexp(self.r[:, 0], self.r[:, 1])  # (frames, rows)
        # A repeated token needs a blank between: only prefixes ending in blank may extend it.
        repeated = (candidates == self.last[:, None])[None]
        log_phi = torch.where(repeated, self.r[:, 1, :, None], r_sum[..., None])
        start = max(steps, 1)
        blank = self.x[:, :, self.blank, None]
        for t in range(start, frames):
            r[t, 0] = torch.logaddexp(r[t - 1, 0], log_phi[t - 1]) + xs[t]
            r[t, 1] = torch.logaddexp(r[t - 1, 0], r[t - 1, 1]) + blank[t]
        log_psi = torch.cat([r[start - 1, 0][None], log_phi[start - 1:-1] + xs[start:]]).logsumexp(0)
        log_psi = torch.where(candidates == self.eos, r_sum[-1][:, None], log_psi)
        self._next_r, self._next_score = r, log_psi
        return log_psi - self.prefix_score[:, None]

    def advance(self, index: torch.Tensor, candidates: torch.Tensor, tokens: torch.Tensor) -> None:
        """Row ``i`` now extends row ``index[i]`` with ``tokens[i]`` (one of its scored candidates)."""
        position = (candidates[index] == tokens[:, None]).int().argmax(1)
        self.r = self._next_r[:, :, index, position]
        self.prefix_score = self._next_score[index, position]
        self.last = tokens

    def select(self, rows: torch.Tensor) -> None:
        """Keep only some rows (inputs that finished leave the batch)."""
        self.x, self.r = self.x[:, rows], self.r[:, :, rows]
        self.prefix_score, self.last = self.prefix_score[rows], self.last[rows]
