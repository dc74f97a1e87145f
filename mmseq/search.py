"""Greedy, beam and sampling search over any encoder's memory, batched over inputs and beams.

The search is a loop over small parts: the decoder's cached ``step``, logit filters (minimum
length, no-repeat n-grams, bad endings, a length limit per input), an optional CTC prefix scorer,
and the beam bookkeeping. Inside a step everything is tensor operations over ``batch x beam``
rows; the only host synchronisation is one flag per step that says whether some input finished
(then its rows leave the batch) or all did.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .ctc import CTCPrefixScorer


@dataclass
class DecodingOptions:
    beam_size: int = 1
    max_length: int = 200  # most new tokens (prompt not counted)
    max_length_ratio: float | None = None  # most new tokens per memory frame, e.g. 1.0 for speech
    min_length: int = 0  # fewest new tokens before ``</s>`` is allowed
    length_penalty: float = 1.0  # final score = log p / length ** length_penalty (0: none)
    nbest: int = 1
    ctc_weight: float = 0.0  # joint CTC/attention decoding (speech models with a CTC head)
    ctc_candidates: float = 1.5  # attention's best ``ctc_candidates * beam`` tokens get CTC scores
    no_repeat_ngram: int = 0  # forbid repeating any n-gram of this size (0: off)
    bad_endings: list[int] = field(default_factory=list)  # token ids that may not precede ``</s>``
    temperature: float = 1.0  # sampling only
    top_k: int = 0  # sampling only (0: whole vocabulary)
    lm_weight: float = 0.0  # shallow fusion with an external language model


@dataclass
class Hypothesis:
    tokens: list[int]  # generated ids, prompt and ``</s>`` excluded
    score: float  # log-probability divided by length ** length_penalty
    log_prob: float  # total log-probability (prompt not counted)


def _limits(memory_mask: torch.Tensor, options: DecodingOptions) -> torch.Tensor:
    """Most new tokens for each input ``(batch,)``, ``</s>`` included."""
    limit = torch.full(memory_mask.shape[:1], options.max_length, device=memory_mask.device)
    if options.max_length_ratio is not None:
        by_input = (memory_mask.sum(1).float() * options.max_length_ratio).ceil().long() + 1
        limit = torch.minimum(limit, by_input)
    return limit.clamp(min=max(1, options.min_length + 1))


def _filter(log_probs, steps, limits, tokens, options: DecodingOptions, eos: int):
    """Apply the logit filters in place to ``log_probs (rows, vocab)`` before choosing a token.

    ``steps``: tokens generated so far (int); ``limits (rows,)``; ``tokens (rows, steps)`` so far.
    """
    if steps < options.min_length:
        log_probs[:, eos] = float("-inf")
    if options.bad_endings and steps > 0:
        bad = torch.isin(tokens[:, -1], torch.tensor(options.bad_endings, device=tokens.device))
        log_probs[:, eos] = log_probs[:, eos].masked_fill(bad, float("-inf"))
    n = options.no_repeat_ngram
    if n and steps >= n:
        # Every (n-1)-gram seen so far, with the token that followed it: ban that token now.
        windows = tokens.unfold(1, n, 1)  # (rows, count, n)
        same = (windows[:, :, :-1] == tokens[:, None, steps - n + 1:]).all(-1)  # (rows, count)
        banned = torch.zeros_like(log_probs, dtype=torch.bool)
        banned.scatter_(1, windows[:, :, -1].masked_fill(~same, eos), same)
        banned[:, eos] = False
        log_probs.masked_fill_(banned, float("-inf"))
    # At its length limit a row may only end.
    at_limit = (steps + 1 >= limits)[:, None]
    ended = torch.full_like(log_probs, float("-inf"))
    ended[:, eos] = 0.0
    log_probs.copy_(torch.where(at_limit, ended, log_probs))
    return log_probs


def _suppress(log_probs: torch.Tensor, tokenizer) -> torch.Tensor:
    """Special and prompt tokens are never generated; ``</s>`` is the only one allowed."""
    specials = len(tokenizer.special_tokens)
    eos_log_prob = log_probs[:, tokenizer.eos_id].clone()
    log_probs[:, :specials] = float("-inf")
    log_probs[:, tokenizer.eos_id] = eos_log_prob
    return log_probs


def _start(model, memory, memory_mask, prompt: list[int], max_new: int):
    prefix = torch.tensor([model.tokenizer.bos_id] + list(prompt), device=memory.device)
    cache = model.decoder.init_cache(memory, memory_mask, len(prefix) + max_new)
    logits = model.decoder.step(prefix.expand(memory.shape[0], -1), cache)[:, -1]
    return cache, logits


@torch.no_grad()
def greedy_search(model, memory, memory_mask, prompt: list[int] = (), options: DecodingOptions | None = None):
    """Most likely token at each step, for every input at once. Returns one hypothesis per input."""
    options = options or DecodingOptions()
    eos = model.tokenizer.eos_id
    batch = memory.shape[0]
    limits = _limits(memory_mask, options)
    max_new = int(limits.max())
    cache, logits = _start(model, memory, memory_mask, prompt, max_new)
    tokens = torch.zeros(batch, 0, dtype=torch.long, device=memory.device)
    total = torch.zeros(batch, device=memory.device)
    done = torch.zeros(batch, dtype=torch.bool, device=memory.device)
    for step in range(max_new):
        log_probs = _suppress(logits.float().log_softmax(-1), model.tokenizer)
        log_probs = _filter(log_probs, step, limits, tokens, options, eos)
        best, token = log_probs.max(-1)
        token = token.masked_fill(done, eos)
        total += best.masked_fill(done, 0.0)
        tokens = torch.cat([tokens, token[:, None]], 1)
        done |= token == eos
        if bool(done.all()):
            break
        logits = model.decoder.step(token[:, None], cache)[:, -1]
    return [_hypothesis(row, float(score), eos, options.length_penalty) for row, score in zip(tokens.tolist(), total)]


def _hypothesis(row: list[int], log_prob: float, eos: int, length_penalty: float) -> Hypothesis:
    length = row.index(eos) + 1 if eos in row else len(row)
    return Hypothesis(row[: length - (eos in row)], log_prob / length ** length_penalty, log_prob)


@torch.no_grad()
def beam_search(model, memory, memory_mask, prompt: list[int] = (), options: DecodingOptions | None = None,
                ctc_log_probs: torch.Tensor | None = None) -> list[list[Hypothesis]]:
    """Beam search over ``batch x beam`` rows at once; returns ``options.nbest`` hypotheses per input.

    ``ctc_log_probs (batch, frames, vocab)``: the CTC head's output, for joint CTC/attention decoding
    with weight ``options.ctc_weight``.
    """
    options = options or DecodingOptions()
    beam, eos, device = options.beam_size, model.tokenizer.eos_id, memory.device
    batch = memory.shape[0]
    limits = _limits(memory_mask, options)
    max_new = int(limits.max())
    alpha = options.length_penalty
    cache, logits = _start(model, memory, memory_mask, prompt, max_new)
    cache = cache.repeat(beam)
    logits = logits.repeat_interleave(beam, 0)
    use_ctc = options.ctc_weight > 0 and ctc_log_probs is not None
    if use_ctc:
        frames = memory_mask.sum(1)
        ctc = CTCPrefixScorer(ctc_log_probs.repeat_interleave(beam, 0), frames.repeat_interleave(beam), eos)
    # Live beams of the inputs still running; ``alive`` maps their rows back to input numbers.
    alive = torch.arange(batch, device=device)
    scores = torch.zeros(batch, beam, device=device)
    scores[:, 1:] = float("-inf")  # all beams start equal: expand only the first
    tokens = torch.zeros(batch * beam, 0, dtype=torch.long, device=device)
    # Finished hypotheses of every input: normalised scores, raw log-probs, tokens (eos padded).
    finished_scores = torch.full((batch, beam), float("-inf"), device=device)
    finished_log_probs = torch.zeros(batch, beam, device=device)
    finished_tokens = torch.full((batch, beam, max_new), eos, dtype=torch.long, device=device)
    offsets = None
    for step in range(max_new):
        rows = alive.shape[0]
        row_limits = limits[alive].repeat_interleave(beam)
        log_probs = _suppress(logits.float().log_softmax(-1), model.tokenizer)
        if use_ctc:
            candidates = log_probs.topk(min(log_probs.shape[-1], math.ceil(options.ctc_candidates * beam)), -1).indices
            ctc_scores = ctc.score(tokens, candidates)  # (rows*beam, candidates) prefix score gains
            combined = torch.full_like(log_probs, float("-inf"))
            attention = log_probs.gather(1, candidates)
            combined.scatter_(1, candidates, (1 - options.ctc_weight) * attention + options.ctc_weight * ctc_scores)
            log_probs = combined
        log_probs = _filter(log_probs, step, row_limits, tokens, options, eos)
        vocab = log_probs.shape[-1]
        candidate_scores = (scores.view(-1, 1) + log_probs).view(rows, beam * vocab)
        top_scores, top_index = candidate_scores.topk(2 * beam, -1)  # (rows, 2 beam): >= beam not eos
        top_beam, top_token = top_index // vocab, top_index % vocab
        is_eos = top_token == eos
        # Hypotheses that end here join the finished ones if they are among the best ``beam``.
        length = step + 1
        source = (torch.arange(rows, device=device)[:, None] * beam + top_beam)  # (rows, 2 beam)
        ended_tokens = torch.cat([tokens[source.view(-1)].view(rows, 2 * beam, step),
                                  top_token[..., None]], -1)
        ended_tokens = torch.nn.functional.pad(ended_tokens, (0, max_new - length), value=eos)
        normalised = (top_scores / length ** alpha).masked_fill(~is_eos, float("-inf"))
        pool_scores = torch.cat([finished_scores[alive], normalised], 1)
        pool_log_probs = torch.cat([finished_log_probs[alive], top_scores], 1)
        pool_tokens = torch.cat([finished_tokens[alive], ended_tokens], 1)
        keep_scores, keep = pool_scores.topk(beam, -1)
        finished_scores[alive] = keep_scores
        finished_log_probs[alive] = pool_log_probs.gather(1, keep)
        finished_tokens[alive] = pool_tokens.gather(1, keep[..., None].expand(-1, -1, max_new))
        # The best ``beam`` candidates that did not end go on.
        live_scores, live = top_scores.masked_fill(is_eos, float("-inf")).topk(beam, -1)
        scores = live_scores
        index = source.gather(1, live).view(-1)
        new_tokens = top_token.gather(1, live).view(-1)
        tokens = torch.cat([tokens[index], new_tokens[:, None]], 1)
        cache.reorder(index)
        if use_ctc:
            ctc.advance(index, candidates, new_tokens)
        # An input is done when no live beam can beat its worst finished one: scores only fall,
        # so the best a live beam can reach is its score over the longest length allowed.
        bound = live_scores[:, 0] / (limits[alive].float() ** alpha if alpha > 0 else 1.0)
        done = (finished_scores[alive, -1] >= bound) | (live_scores[:, 0] == float("-inf")) | (length >= limits[alive])
        if bool(done.all()):
            break
        if bool(done.any()):
            keep_inputs = (~done).nonzero().squeeze(1)
            rows_kept = (keep_inputs[:, None] * beam + torch.arange(beam, device=device)).view(-1)
            alive, scores, tokens = alive[keep_inputs], scores[keep_inputs], tokens[rows_kept]
            cache = cache.select(rows_kept)
            new_tokens = new_tokens[rows_kept]
            if use_ctc:
                ctc.select(rows_kept)
        logits = model.decoder.step(new_tokens[:, None], cache)[:, -1]
    results = []
    for scores_row, log_probs_row, tokens_row in zip(finished_scores.tolist(), finished_log_probs.tolist(),
                                                     finished_tokens.tolist()):
        hyps = []
        for score, log_prob, row in zip(scores_row, log_probs_row, tokens_row):
            if score > float("-inf"):
                hyps.append(Hypothesis(row[: row.index(eos)] if eos in row else row, score, log_prob))
        # An input whose every continuation was impossible (e.g. CTC cannot align it) ends empty.
        results.append(hyps[: options.nbest] or [Hypothesis([], float("-inf"), float("-inf"))])
    return results


@torch.no_grad()
def sample(model, memory, memory_mask, prompt: list[int] = (), options: DecodingOptions | None = None,
           count: int = 1) -> torch.Tensor:
    """``count`` sampled continuations per input (temperature, top-k), for SCST.

    Returns new token ids ``(batch * count, steps)``, rows of one input next to each other, padded
    with ``</s>`` after the end.
    """
    options = options or DecodingOptions()
    eos = model.tokenizer.eos_id
    limits = _limits(memory_mask, options).repeat_interleave(count)
    max_new = int(limits.max())
    cache, logits = _start(model, memory, memory_mask, prompt, max_new)
    cache, logits = cache.repeat(count), logits.repeat_interleave(count, 0)
    tokens = torch.zeros(logits.shape[0], 0, dtype=torch.long, device=memory.device)
    done = torch.zeros(logits.shape[0], dtype=torch.bool, device=memory.device)
    for step in range(max_new):
        log_probs = _suppress((logits.float() / options.temperature).log_softmax(-1), model.tokenizer)
        log_probs = _filter(log_probs, step, limits, tokens, options, eos)
        if options.top_k:
            kth = log_probs.topk(options.top_k, -1).values[:, -1:]
            log_probs = log_probs.masked_fill(log_probs < kth, float("-inf"))
        token = torch.multinomial(log_probs.softmax(-1), 1).squeeze(1).masked_fill(done, eos)
        tokens = torch.cat([tokens, token[:, None]], 1)
        done |= token == eos
        if bool(done.all()):
            break
        logits = model.decoder.step(token[:, None], cache)[:, -1]
    return tokens
